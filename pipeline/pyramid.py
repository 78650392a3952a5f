"""MS-Sync input pyramid (MS-Sync §3.1, MS-Sync Eq. 5; method.md §6.2): 7-tap moving average followed by x2 decimation.

One pyramid step maps a sequence ``x^{i-1}`` of length T to ``x^i`` of length ``ceil(T / 2)``::

    x^i_t = 1/(2k+1) * sum_{tau=-k..k} x^{i-1}_{2t+tau},   k = 3 (7 taps)

Edge handling (the paper is silent): indices outside ``[0, T-1]`` are clamped to the first/last sample
(replicate padding). Hence a constant stays exactly constant at every level, and the sample ``x^i_t`` stays centred
on time ``2t`` of the finer level, so level-i step t sits at level-1 step ``2^(i-1) t`` for both streams.

The operator is the same for the landmark motion (25 fps) and for the log filterbank (100 Hz, 4 rows per video
frame): after i-1 steps both are decimated by ``2^(i-1)`` and still pair 4 audio rows per motion step, so one
syncer window is always 5 motion steps vs 20 audio rows (200/400/800/1600 ms at levels 1-4).

Works on NumPy arrays and on torch tensors (differentiable, so the multi-scale sync loss can backpropagate through
it into generated motion); the time axis is an argument: ``dim=0`` for (T, C), ``dim=1`` for (B, T, C),
``dim=-1`` for (B, C, T).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

HALF_WIDTH = 3  # k of MS-Sync Eq. 5: the average spans 2k+1 = 7 samples
DECIMATION = 2  # each level halves the sampling rate

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _pool_indices(length: int) -> np.ndarray:
    """(ceil(T/2), 2k+1) source indices of every output sample, clamped to [0, T-1]."""
    centres = DECIMATION * np.arange((length + DECIMATION - 1) // DECIMATION)  # (T_out,)
    taps = np.arange(-HALF_WIDTH, HALF_WIDTH + 1)  # (7,)
    return np.clip(centres[:, None] + taps[None, :], 0, length - 1)  # (T_out, 7)


def pool(x: ArrayT, dim: int = 0) -> ArrayT:
    """One pyramid step (MS-Sync Eq. 5) along axis `dim`: 7-tap mean around every second sample, replicate edges.

    Args:
        x: NumPy array or torch tensor with time along `dim` (length T >= 1).
        dim: the time axis (negative values count from the end).

    Returns:
        Same type and dtype, with ceil(T / 2) samples along `dim`.
    """
    ndim = x.ndim
    dim = dim % ndim if ndim else 0
    length = x.shape[dim]
    if length < 1:
        raise ValueError(f"pyramid pool: empty time axis (shape {tuple(x.shape)}, dim {dim})")
    idx = _pool_indices(length)
    n_out, taps = idx.shape
    if isinstance(x, torch.Tensor):
        flat = torch.as_tensor(idx.reshape(-1), device=x.device)
        gathered = x.index_select(dim, flat)  # (..., T_out * 7, ...)
        shape = (*x.shape[:dim], n_out, taps, *x.shape[dim + 1:])
        return gathered.reshape(shape).mean(dim=dim + 1)  # (..., T_out, ...)
    gathered = np.take(np.asarray(x), idx, axis=dim)  # (..., T_out, 7, ...)
    return gathered.mean(axis=dim + 1).astype(x.dtype, copy=False)


def build_pyramid(x: ArrayT, levels: int, dim: int = 0) -> list[ArrayT]:
    """``[x^1, ..., x^levels]`` with ``x^1 = x`` and ``x^i = pool(x^{i-1})`` (MS-Sync Fig. 2).

    Args:
        x: (T, C) array, (B, T, C) or (B, C, T) tensor, ... with time along `dim`.
        levels: number of levels (MS-Sync: 4), >= 1.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    out = [x]
    for _ in range(levels - 1):
        out.append(pool(out[-1], dim))
    return out


def level_length(length: int, level: int) -> int:
    """Samples left at `level` (1-based) of a pyramid over `length` samples: ceil(length / 2^(level-1))."""
    for _ in range(level - 1):
        length = (length + DECIMATION - 1) // DECIMATION
    return length


def level_windows(audio: ArrayT, motion: ArrayT, window: int, stride: int = 1,
                  rows_per_step: int = 4) -> tuple[ArrayT, ArrayT]:
    """All syncer windows of one pyramid level: motion steps ``[t, t+window)`` with audio rows
    ``[4t, 4t + 4 window)`` for t = 0, stride, ..., T - window (audio rows past the end repeat the last row,
    like `pipeline.audio.mfcc_window`).

    Args:
        audio: (Ta, 26) array or (B, Ta, 26) tensor, time-major, ``rows_per_step`` rows per motion step.
        motion: (T, C) array or (B, T, C) tensor of the same level.

    Returns:
        audio windows (N, 26, 4 window) / (B, N, 26, 4 window) and motion windows (N, C, window) /
        (B, N, C, window), channels first as the encoders take them.
    """
    t_dim = motion.ndim - 2
    n_steps, n_rows = motion.shape[t_dim], audio.shape[t_dim]
    if n_steps < window:
        raise ValueError(f"a sequence of {n_steps} steps is shorter than one window ({window} steps)")
    starts = np.arange(0, n_steps - window + 1, stride)  # (N,)
    m_idx = starts[:, None] + np.arange(window)[None, :]  # (N, W)
    a_idx = np.clip(rows_per_step * starts[:, None] + np.arange(rows_per_step * window)[None, :], 0, n_rows - 1)
    n = len(starts)
    if isinstance(motion, torch.Tensor):
        def take(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            flat = torch.as_tensor(idx.reshape(-1), device=x.device)
            g = x.index_select(t_dim, flat)  # (..., N * W, C)
            return g.reshape(*x.shape[:t_dim], n, idx.shape[1], x.shape[-1]).transpose(-1, -2)  # (..., N, C, W)
        return take(audio, a_idx), take(motion, m_idx)
    a = np.take(audio, a_idx, axis=t_dim)  # (..., N, 4W, 26)
    m = np.take(motion, m_idx, axis=t_dim)  # (..., N, W, C)
    return (np.ascontiguousarray(np.swapaxes(a, -1, -2)),  # (..., N, 26, 4W)
            np.ascontiguousarray(np.swapaxes(m, -1, -2)))  # (..., N, C, W)
