"""FID and KID: distances between the feature distributions of real and generated frames (Heusel et al. 2017;
Bińkowski et al. 2018), with pytorch-fid's conventions.

- **FID** = ``||mu_r - mu_g||² + Tr(S_r + S_g - 2 (S_r S_g)^½)`` between Gaussian fits (mean, covariance) of the two
  feature sets; the matrix square root is ``scipy.linalg.sqrtm``; as in pytorch-fid, ``eps·I`` is added to both
  covariances only when the product's square root is not finite, and a negligible imaginary part is dropped.
- **KID** = the unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over random
  subsets (torch-fidelity's estimator); reported with its standard deviation over subsets.

Feature extractors (every result carries the one it used, :attr:`FrechetResult.extractor`):

- ``inception_v3_fid``: pytorch-fid's InceptionV3 (the TensorFlow FID graph ported to PyTorch), pool3 2048-d, input
  resized to 299×299 bilinearly and scaled to [-1, 1]. Built here from torchvision's ``Inception3`` with pytorch-fid's
  four block variants (average pools that do not count padding; a max pool in the last block) and loaded strictly
  from the ``pt_inception-2015-12-05-*.pth`` state dict when a user has that file (``weights:``). Only this extractor
  gives numbers comparable with papers' "FID".
- ``dlib_resnet_v1``: the substitute when no Inception weights are available (they cannot be downloaded here):
  dlib's pretrained ResNet face-recognition descriptor (128-d) of each frame's aligned face
  (:mod:`pipeline.metrics.dlib_face`). A real pretrained network, but a face-identity feature space: the number is
  reported as ``FID[dlib_resnet_v1]``, never as plain FID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import WeightsError

INCEPTION_SIZE = 299  # px, pytorch-fid resizes every input to 299x299
INCEPTION_DIMS = 2048  # pool3 features
INCEPTION_CLASSES = 1008  # the TF graph's classifier (1000 + 8 unused), needed for a strict load of the state dict
FID_EPS = 1e-6  # pytorch-fid's offset added to the covariances when sqrtm is not finite
KID_SUBSETS = 100  # torch-fidelity's defaults
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3

EXTRACTOR_INCEPTION = "inception_v3_fid"
EXTRACTOR_DLIB = "dlib_resnet_v1"


@dataclass(frozen=True)
class FrechetResult:
    """FID and KID of one generated set against one real set, in the feature space of `extractor`.

    Attributes:
        fid: Fréchet distance of the Gaussian fits.
        kid: unbiased MMD² (polynomial kernel), mean over subsets; kid_std: its std over subsets.
        extractor: feature extractor name (``inception_v3_fid`` is the papers' FID; anything else is a substitute).
        n_real / n_generated: feature vectors on each side; dims: their dimension.
    """

    fid: float
    kid: float
    kid_std: float
    extractor: str
    n_real: int
    n_generated: int
    dims: int

    @property
    def label(self) -> str:
        """``FID`` for pytorch-fid's Inception, ``FID[<extractor>]`` for any substitute."""
        return "FID" if self.extractor == EXTRACTOR_INCEPTION else f"FID[{self.extractor}]"


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D) (``np.cov(rowvar=False)``, as pytorch-fid)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FID_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's ``calculate_frechet_distance``)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances {sigma1.shape} "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: pytorch-fid regularises both covariances
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_inception_distance(real: np.ndarray, generated: np.ndarray, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with ``k(x, y) = (xᵀy / d + 1)³`` over `subsets` random subsets -> (mean, std).

    The subset size is ``min(subset_size, n_real, n_generated)`` (small evaluation sets use all their vectors)."""
    x, y = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (N, D) feature sets of the same D, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 vectors per side, got {len(x)} and {len(y)}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]  # (m, D)
        b = y[rng.choice(len(y), m, replace=False)]  # (m, D)
        k_aa = (a @ a.T / d + 1) ** KID_DEGREE  # (m, m)
        k_bb = (b @ b.T / d + 1) ** KID_DEGREE
        k_ab = (a @ b.T / d + 1) ** KID_DEGREE
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values.append(within - 2 * k_ab.mean())
    v = np.asarray(values)
    return float(v.mean()), float(v.std())


def fid_from_features(real: np.ndarray, generated: np.ndarray, extractor: str, *, kid_subsets: int = KID_SUBSETS,
                      kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> FrechetResult:
    """FID and KID of two (N, D) feature sets produced by `extractor`."""
    mu_r, s_r = gaussian_stats(real)
    mu_g, s_g = gaussian_stats(generated)
    kid, kid_std = kernel_inception_distance(real, generated, kid_subsets, kid_subset_size, seed)
    return FrechetResult(fid=frechet_distance(mu_r, s_r, mu_g, s_g), kid=kid, kid_std=kid_std, extractor=extractor,
                         n_real=len(real), n_generated=len(generated), dims=int(np.asarray(real).shape[1]))


# ----------------------------------------------------------------------------------------------------------------
# pytorch-fid's InceptionV3 (pool3), on torchvision's Inception3 skeleton
# ----------------------------------------------------------------------------------------------------------------
def _tv_blocks() -> tuple[type, type, type]:
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    return InceptionA, InceptionC, InceptionE


def _avg_no_pad(x: torch.Tensor) -> torch.Tensor:
    """The TF graph's 3x3 average pool: padding excluded from the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_block_classes() -> dict[str, type]:
    InceptionA, InceptionC, InceptionE = _tv_blocks()

    class FIDInceptionA(InceptionA):
        """torchvision's InceptionA with the TF pooling (padding not counted)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(_avg_no_pad(x))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(InceptionC):
        """torchvision's InceptionC with the TF pooling (padding not counted)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                         self.branch7x7dbl_5):
                bd = conv(bd)
            bp = self.branch_pool(_avg_no_pad(x))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(InceptionE):
        """torchvision's InceptionE; `pool` = ``avg`` (Mixed_7b, padding not counted) or ``max`` (Mixed_7c: the TF
        graph uses a max pool there)."""

        def __init__(self, in_channels: int, pool: str) -> None:
            super().__init__(in_channels)
            self.pool = pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = (_avg_no_pad(x) if self.pool == "avg"
                      else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
            return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)

    return {"A": FIDInceptionA, "C": FIDInceptionC, "E": FIDInceptionE}


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3`` for the 2048-d pool3 block only: uint8/[0,1] images -> (B, 2048).

    The module names equal pytorch-fid's ``fid_inception_v3()`` (torchvision's ``Inception3`` attribute names), so
    the published ``pt_inception-2015-12-05`` state dict loads strictly without key changes.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.inception import Inception3

        blocks = _fid_block_classes()
        net = Inception3(num_classes=INCEPTION_CLASSES, aux_logits=False, init_weights=False)
        net.Mixed_5b = blocks["A"](192, pool_features=32)
        net.Mixed_5c = blocks["A"](256, pool_features=64)
        net.Mixed_5d = blocks["A"](288, pool_features=64)
        net.Mixed_6b = blocks["C"](768, channels_7x7=128)
        net.Mixed_6c = blocks["C"](768, channels_7x7=160)
        net.Mixed_6d = blocks["C"](768, channels_7x7=160)
        net.Mixed_6e = blocks["C"](768, channels_7x7=192)
        net.Mixed_7b = blocks["E"](1280, pool="avg")
        net.Mixed_7c = blocks["E"](2048, pool="max")
        self.net = net
        self.eval()

    def load_pt_inception(self, path: str | os.PathLike[str]) -> "FIDInceptionV3":
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict of ``fid_inception_v3``)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such Inception weights file (pytorch-fid's pt_inception-2015-12-05-*.pth)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, KeyError) as err:
            raise WeightsError(f"{path}: not pytorch-fid's FID Inception state dict ({err})") from err
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 2048) pool3 features."""
        n = self.net
        x = F.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # (B, 3, 299, 299) in [-1, 1]
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048)


def inception_features(model: FIDInceptionV3, frames: np.ndarray, batch_size: int = 16,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 2048) float64 pool3 features."""
    model = model.to(device)
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float() / 255.0  # (b, 3, H, W)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, INCEPTION_DIMS))


FeatureFn = Callable[[np.ndarray], np.ndarray]


def make_fid_extractor(weights: str | os.PathLike[str] | None, device: str | torch.device = "cpu"
                       ) -> tuple[str, FeatureFn]:
    """(extractor name, frames (N, H, W, 3) uint8 -> (N, D) features) of the configured FID.

    With `weights` (pytorch-fid's pt_inception file): ``inception_v3_fid``. Without: ``dlib_resnet_v1`` face
    descriptors of the aligned face in every frame (frames without a detectable face are left out; see
    :func:`pipeline.metrics.dlib_face.DlibFace.descriptors`)."""
    if weights is not None:
        model = FIDInceptionV3().load_pt_inception(weights)
        return EXTRACTOR_INCEPTION, lambda frames: inception_features(model, frames, device=device)
    from pipeline.metrics.dlib_face import DlibFace

    face = DlibFace.shared()
    return EXTRACTOR_DLIB, lambda frames: face.descriptors(frames, skip_missing=True)
