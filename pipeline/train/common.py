"""What every training loop shares, and nothing else: the resume fingerprint, resuming from a checkpoint, the
curves saved with it, the learning-rate schedule and the thread setting of a run.

Checkpoint files and weight loading are in :mod:`pipeline.checkpoint`, keyed sampling in
:mod:`pipeline.data.sampling`, bootstrap intervals in :mod:`pipeline.metrics.bootstrap`, plots in
:mod:`pipeline.viz`. The loops themselves live with each model family (``pipeline/train/<family>.py``) and are
written out in full; each has one entry point of the same shape::

    run = train_<family>(cfg, seed, processed=..., out=..., reports=..., tracker=..., progress=True)

which trains (or resumes, or only re-evaluates a finished checkpoint), evaluates on held-out speakers, writes
``<reports>/metrics.json`` and the family's plots, and returns a result with ``.metrics`` and ``.seconds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipeline.checkpoint import WeightsError, load_checkpoint, load_state_strict
from pipeline.config import to_dict
from pipeline.io import write_json

log = logging.getLogger(__name__)

LRSchedule = Literal["constant", "cosine"]


# ----------------------------------------------------------------------------------------------------------------
# Resuming: fingerprint, checkpoint reuse, curves
# ----------------------------------------------------------------------------------------------------------------
def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (configs as dicts, data versions) and of the library's source
    (:func:`source_digest`): decides whether a checkpoint may be resumed."""
    text = json.dumps([to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts] + [source_digest()],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digest() -> str:
    """Hash of the `pipeline` package's source: part of every training fingerprint, so that a rerun after a code
    change (DVC reruns a stage when the code it depends on changes) trains anew instead of reusing old weights,
    while a rerun after a kill (same code) resumes."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def resumable(path: Path, fp: str, kind: str) -> dict[str, Any] | None:
    """The checkpoint at `path` when it was written by a run with the same fingerprint, else None (logged)."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, kind)
    except WeightsError as err:
        log.warning("ignoring unusable checkpoint: %s", err)
        return None
    if state.get("fingerprint") != fp:
        log.info("%s belongs to other params or data (fingerprint %s != %s): training from scratch",
                 path, state.get("fingerprint"), fp)
        return None
    return state


def restore(state: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None,
            source: str) -> tuple[int, "History"]:
    """Load a resumable checkpoint's weights (strictly) and optimizer state; returns (step, its History truncated
    to that step, since a resumed run rewrites later rows)."""
    load_state_strict(model, state["model"], source)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    start = int(state["step"])
    history = History(state.get("extra", {}).get("history", []))
    history.truncate(start)
    return start, history


class History:
    """Scalar curves over steps: ``history.add(step, loss=..., pos=...)``; saved with the checkpoint for resume."""

    def __init__(self, rows: Sequence[Mapping[str, float]] = ()) -> None:
        self.rows: list[dict[str, float]] = [dict(r) for r in rows]

    def add(self, step: int, **values: float) -> None:
        self.rows.append({"step": float(step), **{k: float(v) for k, v in values.items()}})

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r["step"], r[name]) for r in self.rows if name in r]
        if not pts:
            return np.zeros(0), np.zeros(0)
        s, v = zip(*pts)
        return np.asarray(s), np.asarray(v)

    def last(self, name: str) -> float | None:
        """The latest value of series `name` (None when it was never logged)."""
        for row in reversed(self.rows):
            if name in row:
                return row[name]
        return None

    def truncate(self, step: int) -> None:
        """Drop rows after `step` (a resumed run rewrites them)."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.rows)

    def dense_rows(self) -> list[dict[str, float | None]]:
        """One row per step with every series as a key (None where a series has no value at that step): the shape
        `dvc plots` needs (its linear template fails on rows with differing keys)."""
        keys = sorted({k for r in self.rows for k in r} - {"step"})
        merged: dict[float, dict[str, float]] = {}
        for r in self.rows:
            merged.setdefault(r["step"], {}).update(r)
        return [{"step": int(step), **{k: row.get(k) for k in keys}} for step, row in sorted(merged.items())]

    def save_dense(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.dense_rows())


# ----------------------------------------------------------------------------------------------------------------
# Schedules and run settings
# ----------------------------------------------------------------------------------------------------------------
def scheduled_lr(lr: float, step: int, steps: int, schedule: LRSchedule) -> float:
    """Learning rate of optimiser step `step` (0-based): `lr` (constant), or a half-cosine from `lr` to 0 over
    `steps` (cosine). A pure function of the step, so a resumed run needs no scheduler state."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, steps)))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with `threads` torch intra-op threads (0 = leave torch's setting), restored afterwards.
    Results depend on the thread count (float summation order), so training configs carry it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
