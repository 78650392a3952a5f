"""Bootstrap confidence intervals for the held-out reports (plain and clip-cluster)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
