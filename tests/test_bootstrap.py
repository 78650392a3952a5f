"""Bootstrap intervals (pipeline.metrics.bootstrap)."""

from __future__ import annotations

import numpy as np

from pipeline.metrics.bootstrap import bootstrap_ci


def test_bootstrap_interval_covers_the_mean_and_clusters_widen_it() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=400)
    lo, hi = bootstrap_ci(x, seed=1)
    assert lo < x.mean() < hi and 0.1 < hi - lo < 0.3
    groups = np.repeat(np.arange(8), 50)
    y = np.repeat(rng.normal(0, 1, size=8), 50) + rng.normal(0, 0.1, size=400)  # strongly clustered
    glo, ghi = bootstrap_ci(y, groups=groups, seed=1)
    plo, phi = bootstrap_ci(y, seed=1)
    assert ghi - glo > 3 * (phi - plo)
