"""FID / KID (pipeline/metrics/fid.py) against closed forms and an independent computation; the pytorch-fid
Inception layout and its loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import WeightsError
from pipeline.metrics import fid as F


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form(rng: np.random.Generator) -> None:
    """Commuting (diagonal) covariances: ||mu1 - mu2||² + Σ (s1 + s2 - 2 sqrt(s1 s2))."""
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_full_covariances_matches_the_eigenvalue_form(rng: np.random.Generator) -> None:
    """Tr((S1 S2)^½) = Σ sqrt(eigenvalues of S1 S2) (real, >= 0 for SPD S1, S2): independent of scipy's sqrtm."""
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert F.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(rng: np.random.Generator) -> None:
    x = rng.normal(size=(300, 8))
    same = F.fid_from_features(x, x, "test", kid_subsets=10, kid_subset_size=100)
    assert abs(same.fid) < 1e-6 and abs(same.kid) < 0.1  # KID: unbiased, so only near 0 (either sign)
    # samples of N(0, I) vs N(m, I): FID -> ||m||² = 8 (sampling adds a little), KID well above the null's
    shifted = F.fid_from_features(x, rng.normal(size=(300, 8)) + 1.0, "test", kid_subsets=10, kid_subset_size=100)
    null = F.fid_from_features(x, rng.normal(size=(300, 8)), "test", kid_subsets=10, kid_subset_size=100)
    assert 7.0 < shifted.fid < 9.5 and null.fid < 1.0
    assert shifted.kid > 10 * abs(null.kid) and shifted.kid > 0.1


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel(rng: np.random.Generator) -> None:
    """One subset holding every vector: the estimator equals the MMD² written out by hand."""
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 0.5

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 4 + 1) ** 3

    m = 20
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kid, std = F.kernel_inception_distance(x, y, subsets=3, subset_size=100)
    assert kid == pytest.approx(xx + yy - 2 * xy, rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)


def test_result_label_names_a_substitute_extractor() -> None:
    r = F.FrechetResult(1.0, 0.0, 0.0, F.EXTRACTOR_DLIB, 2, 2, 128)
    assert r.label == "FID[dlib_resnet_v1]"
    assert F.FrechetResult(1.0, 0.0, 0.0, F.EXTRACTOR_INCEPTION, 2, 2, 2048).label == "FID"


@pytest.fixture(scope="module")
def inception() -> F.FIDInceptionV3:
    torch.manual_seed(0)
    net = F.FIDInceptionV3()
    for m in net.modules():  # random, non-trivial batch-norm statistics so the round trip below means something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_inception_has_pytorch_fids_layout(inception: F.FIDInceptionV3) -> None:
    """The state dict keys/shapes of pytorch-fid's fid_inception_v3 (torchvision names, 1008 classes, FID blocks)."""
    state = inception.net.state_dict()
    assert state["fc.weight"].shape == (F.INCEPTION_CLASSES, 2048)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7_1.conv.weight"].shape == (192, 768, 1, 1)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert not any(k.startswith("AuxLogits") for k in state)
    assert inception.net.Mixed_7c.pool == "max" and inception.net.Mixed_7b.pool == "avg"


def test_inception_features_and_strict_loader(inception: F.FIDInceptionV3, tmp_path: Path,
                                              rng: np.random.Generator) -> None:
    frames = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    feats = F.inception_features(inception, frames)
    assert feats.shape == (2, F.INCEPTION_DIMS) and np.isfinite(feats).all()
    path = tmp_path / "pt_inception.pth"
    torch.save(inception.net.state_dict(), path)
    loaded = F.FIDInceptionV3().load_pt_inception(path)
    np.testing.assert_allclose(F.inception_features(loaded, frames), feats, rtol=1e-5, atol=1e-5)
    name, fn = F.make_fid_extractor(path)
    assert name == F.EXTRACTOR_INCEPTION and fn(frames).shape == (2, 2048)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsError, match="bad.pth"):
        F.FIDInceptionV3().load_pt_inception(bad)
    with pytest.raises(WeightsError, match="no such"):
        F.FIDInceptionV3().load_pt_inception(tmp_path / "missing.pth")
