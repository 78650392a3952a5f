"""The LSE / AV-offset protocol on constructed embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics.lse import lse, shift_distances


def _reference_calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> list[torch.Tensor]:
    """syncnet_python's loop, written out: one distance vector per video window."""
    win = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    return [torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win, 1), feat2p[i:i + win, :])
            for i in range(len(feat1))]


def test_matches_the_reference_loop() -> None:
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    ref = torch.stack(_reference_calc_pdist(v, a, 7), 1)  # (win, N)
    assert torch.allclose(shift_distances(v, a, 7), ref.T, atol=1e-6)
    mdist = ref.mean(1)
    res = lse(v, a, vshift=7)
    assert res.offset == 7 - int(torch.argmin(mdist))
    assert res.lse_d == pytest.approx(float(mdist.min()), abs=1e-6)
    assert res.lse_c == pytest.approx(float(torch.median(mdist) - mdist.min()), abs=1e-6)


@pytest.mark.parametrize("delay", [-4, 0, 3])
def test_known_offset(delay: int) -> None:
    """Audio embedding of window k equals the video embedding of window k - delay (audio lags by `delay`)."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(80, 8)).astype(np.float32)
    video = base[10:70]
    audio = base[10 - delay:70 - delay]
    res = lse(video, audio, vshift=15)
    # video k matches audio k + delay  =>  syncnet_python reports offset -delay
    assert res.offset == -delay
    assert res.lse_d < 0.5 * float(np.median(res.mean_dist))
    assert res.lse_c > 0


def test_synced_is_more_confident_than_unrelated() -> None:
    rng = np.random.default_rng(2)
    video = rng.normal(size=(60, 8))
    synced = lse(video, video + 0.1 * rng.normal(size=video.shape))
    unrelated = lse(video, rng.normal(size=video.shape))
    assert synced.offset == 0 and synced.lse_d < unrelated.lse_d and synced.lse_c > unrelated.lse_c
    assert synced.mean_dist.shape == (31,)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        lse(np.zeros((5, 4)), np.zeros((6, 4)))
