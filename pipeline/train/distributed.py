"""Data-parallel training under ``torchrun``: the machinery every training loop shares (issue 15 item 1).

A loop adopts it in a few lines and stays bit-identical when run as one plain process::

    dist = Distributed.from_env(device="auto")      # reads RANK/WORLD_SIZE/LOCAL_RANK only when torchrun set them
    model = dist.wrap(model.to(dist.device))        # DDP when world_size > 1, the model itself otherwise
    for step in ...:
        keys = sample_global_batch(rng, ...)        # the same seeded global batch on every rank
        mine = dist.shard(keys)                     # this rank's contiguous slice
        loss = loss_fn(mine) * dist.share(len(mine), len(keys))   # per-rank mean -> share of the global mean
        ...
        if dist.is_main: save_checkpoint(...)
        dist.barrier()

Batch splitting: every rank draws the *same* global batch from the same seed and takes a contiguous slice of it;
DDP averages gradients over ranks, so scaling each rank's mean loss by ``n_rank * world / n_global`` makes the
averaged gradient exactly the gradient of the global-batch mean, whatever N is (up to float summation order).

The library never reads environment variables (STYLE rule 1): :meth:`Distributed.from_env` takes the mapping it
reads as an argument, and stages pass ``os.environ``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, TypeVar

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``common.device`` → a torch device; ``cuda`` without a GPU fails naming the key."""
    if choice not in DEVICES:
        raise ValueError(f"common.device: {choice!r} is not one of {', '.join(DEVICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("common.device: 'cuda' asked for, but torch sees no CUDA device")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclasses.dataclass
class Distributed:
    """This process's place in a (possibly one-process) data-parallel run.

    Attributes:
        rank: global rank, 0 in a plain run.
        world_size: number of processes, 1 in a plain run.
        local_rank: rank on this machine (selects the GPU).
        device: where the model and batches live.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, env: Mapping[str, str], device: str = "auto") -> Distributed:
        """Join the process group torchrun describes in ``env`` (gloo on CPU, NCCL on CUDA); a plain run
        (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) starts no process group."""
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        if world > 1 and not torch.distributed.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                                 rank=rank, world_size=world)
        return cls(rank=rank, world_size=world, local_rank=local, device=dev)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, reports and the MLflow run."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (already on :attr:`device`) when there are several ranks, ``model`` otherwise."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous ``[start, stop)`` slice of a global batch of ``n`` items (the first ``n % world``
        ranks take one more; a rank may get none when ``n < world``)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's slice of the global batch ``items`` (keys, indices or a tensor's first axis)."""
        start, stop = self.span(len(items))
        return items[start:stop]

    def share(self, n_rank: int, n_global: int) -> float:
        """Factor turning this rank's *mean* loss into its share of the global mean, given DDP's gradient
        average over ranks: ``n_rank * world / n_global`` (1.0 in a plain run)."""
        return n_rank * self.world_size / n_global

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_mean(self, value: float) -> float:
        """Mean of a scalar over ranks (for logged losses); the value itself in a plain run."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP, so checkpoints hold the same keys at any N (no ``module.`` prefixes to strip)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``common.precision`` → an autocast context (a no-op for fp32, so fp32 runs are bit-identical to today)."""
    if precision not in PRECISIONS:
        raise ValueError(f"common.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("common.precision: 'fp16' needs a CUDA device (use bf16 on CPU)")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that scales only for fp16 (bf16 and fp32 have fp32's exponent range: disabled, a pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@contextlib.contextmanager
def session(env: Mapping[str, str], device: str = "auto") -> Iterator[Distributed]:
    """:meth:`Distributed.from_env` for the duration of a stage; the process group is closed on the way out."""
    dist = Distributed.from_env(env, device)
    try:
        yield dist
    finally:
        dist.close()
