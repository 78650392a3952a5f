"""Keyed sampling: every random choice of a training sample is a function of ``(seed, step, slot)``.

A batch is a list of keys ``(step, slot)`` (:class:`StepBatchSampler`); datasets derive each sample's randomness
from ``sample_rng(seed, step, slot)`` (NumPy) or ``sample_generator(seed, step, ...)`` (torch, for randomness drawn
on the training side, such as the renderer's equivariance warp). The batches of step s are therefore the same
whatever the number of DataLoader workers and whether the run started at step 0 or resumed at step s, so a
resumed run follows the uninterrupted one exactly (CPU, fixed thread count).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
# Mixing of `sample_generator`: keys are folded in as ``h = h * _FOLD + key`` modulo 2**31. This is the scheme the
# renderer's warp stream has used since its first run; changing it changes every trained renderer.
_FOLD = 1_000_003
_MASK31 = 0x7FFFFFFF


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (model initialisation); returns a torch generator seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent, reproducible NumPy stream for one sample: ``sample_rng(seed, step, slot)``."""
    return np.random.default_rng([int(seed) & _MASK32, *(int(k) & _MASK32 for k in keys)])


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """The torch twin of :func:`sample_rng`: a CPU generator that depends only on ``(seed, *keys)``."""
    h = int(seed)
    for k in keys:
        h = h * _FOLD + int(k)
    return torch.Generator().manual_seed(h & _MASK31)


class StepBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields, for each step in [start, stop), the batch of keys [(step, 0), ..., (step, batch_size - 1)], or only
    the slots in ``span = (first, stop)`` of it: one rank's share of the global batch in a data-parallel run."""

    def __init__(self, batch_size: int, start: int, stop: int, span: tuple[int, int] | None = None) -> None:
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.slots = range(*span) if span is not None else range(batch_size)
        if self.slots and not (0 <= self.slots.start and self.slots.stop <= batch_size):
            raise ValueError(f"span {span} is not inside a batch of {batch_size}")

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [(step, slot) for slot in self.slots]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and crop; the main process owns the cores for the model


def step_loader(dataset: torch.utils.data.Dataset, batch_size: int, start: int, stop: int, workers: int,
                collate_fn: Callable[[list[Any]], Any] | None = None, span: tuple[int, int] | None = None
                ) -> torch.utils.data.DataLoader:
    """DataLoader over keyed samples for steps [start, stop) (see module docstring); `workers` processes decode;
    `span`: only these slots of every batch (a rank's share, ``Distributed.span(batch_size)``)."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(batch_size, start, stop, span), num_workers=workers,
        collate_fn=collate_fn, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)
