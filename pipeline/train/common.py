"""Training plumbing shared by every training stage: seeding, step-indexed batches, checkpoints, pretrained
weights, curves and intervals. The loops themselves live with each model family and are written out in full.

Determinism and resumption: a batch is a list of keys ``(step, slot)``; datasets derive every random choice of
a sample from ``sample_rng(seed, step, slot)``. The batches of step s are therefore the same whatever the number
of DataLoader workers and whether the run started at step 0 or resumed at step s, so a resumed run follows the
uninterrupted one exactly (CPU, fixed thread count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import to_dict
from pipeline.io import atomic_path, write_json

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class WeightsError(ValueError):
    """A checkpoint or pretrained weight file does not fit the model; the message names the file and the keys."""


# ----------------------------------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (model initialisation); returns a torch generator seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent, reproducible stream for one sample: ``sample_rng(seed, step, slot)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in keys)])


class StepBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields, for each step in [start, stop), the batch of keys [(step, 0), ..., (step, batch_size - 1)]."""

    def __init__(self, batch_size: int, start: int, stop: int) -> None:
        self.batch_size, self.start, self.stop = batch_size, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [(step, slot) for slot in range(self.batch_size)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and crop; the main process owns the cores for the model


def step_loader(dataset: torch.utils.data.Dataset, batch_size: int, start: int, stop: int, workers: int,
                collate_fn: Callable[[list[Any]], Any] | None = None) -> torch.utils.data.DataLoader:
    """DataLoader over keyed samples for steps [start, stop) (see module docstring); `workers` processes decode."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(batch_size, start, stop), num_workers=workers,
        collate_fn=collate_fn, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: {format, kind, config, model, optimizer, step, fingerprint, extra}
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


def save_checkpoint(path: str | os.PathLike[str], *, kind: str, config: Any, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, step: int, fingerprint: str = "",
                    extra: Mapping[str, Any] | None = None) -> None:
    """Atomically write a checkpoint; `config` is the model/training config dataclass (stored as a dict)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": to_dict(config) if dataclasses.is_dataclass(config) else dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "fingerprint": fingerprint,
        "extra": dict(extra or {}),
    }
    # Serialised through a buffer: torch.save names the zip's top folder after the file, and the temporary file
    # has a random name, so saving to it directly would make identical checkpoints differ byte for byte (DVC hashes).
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``), checking its kind."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise WeightsError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a tavce checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if kind is not None and state.get("kind") != kind:
        raise WeightsError(f"{path}: a `{state.get('kind')}` checkpoint, expected `{kind}`")
    return state


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)` with one error that lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")
        parts = [f"{len(missing)} missing [{head(missing)}]" if missing else "",
                 f"{len(unexpected)} unexpected [{head(unexpected)}]" if unexpected else "",
                 f"{len(shapes)} with other shapes [{head(shapes)}]" if shapes else ""]
        raise WeightsError(f"{source}: weights do not fit {type(module).__name__}: "
                           + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


def read_weight_file(path: str | os.PathLike[str], nested_keys: Sequence[str] = ("state_dict", "model")
                     ) -> dict[str, torch.Tensor]:
    """Tensors of a public weight file (a state dict, possibly nested under 'state_dict'/'model'), CPU, weights only."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    for key in nested_keys:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def map_keys(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]], source: str,
             drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Rename keys by the first matching prefix rule ``(old_prefix, new_prefix)``; keys starting with a `drop`
    prefix are discarded; a key no rule matches is an error (so a wrong file cannot load half-way)."""
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    for key, value in state.items():
        if any(key.startswith(d) for d in drop):
            continue
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise WeightsError(f"{source}: {len(unmatched)} key(s) match no mapping rule, e.g. {unmatched[:5]} "
                           f"(rules: {[r[0] for r in rules]})")
    return out


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


# ----------------------------------------------------------------------------------------------------------------
# Curves and statistics
# ----------------------------------------------------------------------------------------------------------------
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

    def truncate(self, step: int) -> None:
        """Drop rows after `step` (a resumed run rewrites them)."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.rows)


def plot_curves(history: History, path: str | os.PathLike[str], panels: Mapping[str, Sequence[str]],
                title: str = "", smooth: int = 1) -> None:
    """One panel per entry ``{panel title: [series names]}``; `smooth` > 1 overlays a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        for key in keys:
            s, v = history.series(key)
            if not len(s):
                continue
            if smooth > 1 and len(v) > smooth:
                ax.plot(s, v, alpha=0.25)
                k = np.ones(smooth) / smooth
                ax.plot(s[smooth - 1:], np.convolve(v, k, mode="valid"), label=key, color=ax.lines[-1].get_color())
            else:
                ax.plot(s, v, marker="." if len(v) < 40 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
                 alpha: float = 0.05, seed: int = 0, groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the rows of `values`.

    With `groups` (one label per row, e.g. the clip), whole groups are resampled (cluster bootstrap), which is the
    honest interval when rows of one clip are correlated.
    """
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, len(values), size=(n_boot, len(values)))
        stats = np.array([statistic(values[i]) for i in idx])
    else:
        labels, inverse = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
        stats = np.empty(n_boot)
        for b in range(n_boot):
            pick = rng.integers(0, len(labels), size=len(labels))
            stats[b] = statistic(values[np.concatenate([members[g] for g in pick])])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
