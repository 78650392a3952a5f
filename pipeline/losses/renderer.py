"""Training losses of the face renderer: face-vid2vid's video-driven pretraining objective (method.md §4.3).

Every term is a small callable on tensors (never on models), so the training loop decides what it feeds them:

| term                | callable                                       | face-vid2vid weight |
|---------------------|------------------------------------------------|---------------------|
| perceptual          | :class:`PerceptualPyramidLoss` (VGG19 pyramid) | 10 per layer        |
| GAN (generator)     | :func:`generator_hinge_loss`                   | 1                   |
| GAN (discriminator) | :func:`discriminator_hinge_loss`               | 1                   |
| feature matching    | :func:`feature_matching_loss`                  | 10                  |
| equivariance        | :class:`RandomTransform` + :func:`equivariance_loss` | 10            |
| keypoint prior      | :func:`keypoint_prior_loss`                    | 10                  |
| head pose           | :func:`head_pose_loss`                         | 20                  |
| deformation prior   | :func:`deformation_prior_loss`                 | 5                   |
| reconstruction L1   | :func:`reconstruction_l1`                      | 0 (not in face-vid2vid) |

:class:`RendererLossWeights` holds the weights and :func:`weighted_total` combines the terms. Where the reference
implementation (zhanglonghao1992's face-vid2vid, the one SadTalker's renderer comes from) differs from a clean
formula, the docstring of the term says which form is used here and why.

Images are (B, 3, H, W) in [0, 1]; keypoints are (B, K, 3) in normalised [-1, 1] (x, y, z) coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import load_state_strict, map_keys, read_weight_file
from pipeline.losses.car import mouth_roi_torch
from pipeline.models.renderer.blocks import AntiAliasInterpolation2d, make_coordinate_grid
from pipeline.models.renderer.keypoints import BIN_WIDTH_DEG

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Ends (exclusive) of torchvision's vgg19.features slices that stop at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
VGG19_WIDTHS = (64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0)  # 0 = pool
VGG19_LENGTH = sum(2 if w else 1 for w in VGG19_WIDTHS)  # 37 modules: conv + ReLU per width, one per pool
VGG19_POOLS_BEFORE = (0, 1, 2, 3, 4)  # 2x2 max-pools a slice's output has gone through (its size is H / 2**pools)
KP_PRIOR_DISTANCE = 0.1  # D_t of face-vid2vid: squared distance below which two keypoints repel
KP_PRIOR_DEPTH = 0.33  # z_t of face-vid2vid: target mean keypoint depth


# ----------------------------------------------------------------------------------------------------------------
# Perceptual loss on an image pyramid
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerceptualConfig:
    """Perceptual pyramid loss (face-vid2vid: VGG19, 4 scales x 5 layers).

    Attributes:
        weights: path of torchvision's ImageNet vgg19 state dict (e.g. ``vgg19-dcbb9e9d.pth``); None = no weights,
            use `fallback`.
        fallback: what to compute without weights: ``random_vgg19`` (a VGG19 initialised from the fixed `seed`,
            frozen) or ``pyramid_l1`` (L1 between the pixel pyramids; no network).
        scales: pyramid scales (1 = full resolution); each must be 1/n for an integer n.
        layer_weights: RELATIVE weight of each VGG slice output (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1). Fewer
            entries truncate the network after that many slices (cheaper). The loss is multiplied by
            ``RendererLossWeights.perceptual`` afterwards, so (1, 1, 1, 1, 1) with perceptual 10 is face-vid2vid's
            per-layer weight 10. Unused by ``pyramid_l1``.
        seed: initialisation seed of the ``random_vgg19`` fallback.
    """

    weights: str | None = None
    fallback: Literal["random_vgg19", "pyramid_l1"] = "random_vgg19"
    scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    seed: int = 0

    def validate(self) -> None:
        if self.fallback not in ("random_vgg19", "pyramid_l1"):
            raise ValueError(f"perceptual.fallback: {self.fallback!r} is not one of ['random_vgg19', 'pyramid_l1']")
        if not self.scales:
            raise ValueError("perceptual.scales: needs at least one scale")
        for s in self.scales:
            if not 0 < s <= 1 or abs(1 / s - round(1 / s)) > 1e-6:
                raise ValueError(f"perceptual.scales: {s} is not 1/n for an integer n >= 1")
        if not 1 <= len(self.layer_weights) <= len(VGG19_SLICE_ENDS):
            raise ValueError(f"perceptual.layer_weights: needs 1..{len(VGG19_SLICE_ENDS)} entries, "
                             f"got {len(self.layer_weights)}")
        if any(w < 0 for w in self.layer_weights):
            raise ValueError(f"perceptual.layer_weights: negative weight in {self.layer_weights}")


class PerceptualPyramidLoss(nn.Module):
    """face-vid2vid's pyramid perceptual loss: ``Σ_scales Σ_layers w_l · mean|φ_l(P_s(pred)) − φ_l(P_s(target))|``.

    P_s is the anti-aliased pyramid level at scale s, φ_l the l-th VGG19 slice output on ImageNet-normalised input
    (or the pixels themselves for the ``pyramid_l1`` fallback, where the sum runs over scales only). The target gets
    no gradient; the VGG weights are frozen and stay in eval mode. `extractor_name` records which extractor was
    used: ``vgg19_imagenet``, ``vgg19_random_seed<k>`` or ``pixel_pyramid_l1``.

    Args:
        cfg: the loss configuration (validated here).
    """

    def __init__(self, cfg: PerceptualConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.pyramid = nn.ModuleList(AntiAliasInterpolation2d(3, s) for s in cfg.scales)  # face-vid2vid's ImagePyramide
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.slices: nn.ModuleList | None = None
        if cfg.weights is None and cfg.fallback == "pyramid_l1":
            self.extractor_name = "pixel_pyramid_l1"
            return
        self.slices = _vgg19_slices(cfg.weights, cfg.seed, len(cfg.layer_weights))
        self.extractor_name = "vgg19_imagenet" if cfg.weights is not None else f"vgg19_random_seed{cfg.seed}"

    def train(self, mode: bool = True) -> "PerceptualPyramidLoss":
        super().train(mode)
        if self.slices is not None:
            self.slices.eval()  # frozen feature extractor: never in training mode
        return self

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """VGG19 slice outputs of a (B, 3, H, W) image in [0, 1], one per layer weight."""
        assert self.slices is not None
        h = (image - self.mean) / self.std  # (B, 3, H, W) ImageNet-normalised
        out = []
        for block in self.slices:
            h = block(h)  # (B, C_l, H / 2**l, W / 2**l)
            out.append(h)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of a (B, 3, H, W) prediction against a (B, 3, H, W) target, both in [0, 1]."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"perceptual loss: expected two (B, 3, H, W) images of one shape, "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        self._check_size(pred.shape[-2:])
        target = target.detach()
        total = pred.new_zeros(())
        for down in self.pyramid:
            p, t = down(pred), down(target)  # (B, 3, H_s, W_s)
            if self.slices is None:
                total = total + (p - t).abs().mean()
                continue
            with torch.no_grad():
                t_feats = self.features(t)
            for w, pf, tf in zip(self.cfg.layer_weights, self.features(p), t_feats):
                if w:
                    total = total + w * (pf - tf).abs().mean()
        return total

    def _check_size(self, size: Sequence[int]) -> None:
        if self.slices is None:
            return
        smallest = min(size) // max(d.step for d in self.pyramid)
        need = 2 ** VGG19_POOLS_BEFORE[len(self.cfg.layer_weights) - 1]
        if smallest < need:
            raise ValueError(f"perceptual loss: the smallest pyramid level is {smallest} px, but "
                             f"{len(self.cfg.layer_weights)} VGG layers need >= {need} px (use fewer "
                             f"perceptual.layer_weights or drop the smallest perceptual.scales)")


def _vgg19_features(end: int) -> nn.Sequential:
    """Layers [0, end) of torchvision's ``vgg19().features`` (same order, so the same state-dict indices), with
    torchvision's initialisation (Kaiming normal, fan_out, zero bias). Built here rather than through
    ``torchvision.models.vgg19()``, whose 120 M-parameter classifier takes seconds to initialise and is never used."""
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG19_WIDTHS:
        if width == 0:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(channels, width, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        channels = width
        if len(layers) >= end:
            break
    return nn.Sequential(*layers[:end])


def _vgg19_slices(weights: str | None, seed: int, n_slices: int) -> nn.ModuleList:
    """The first `n_slices` slices of VGG19's features, frozen: ImageNet weights read from `weights` (torchvision's
    vgg19 state dict; its classifier is dropped, every other key must fit), or a random init from `seed`.
    Nothing is ever downloaded."""
    end = VGG19_SLICE_ENDS[n_slices - 1]
    if weights is not None:
        features = _vgg19_features(VGG19_LENGTH)  # all of it, so that every key of the file is checked
        state = map_keys(read_weight_file(weights), [("features.", "")], weights, drop=("classifier.",))
        load_state_strict(features, state, weights)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            features = _vgg19_features(end)
    starts = (0, *VGG19_SLICE_ENDS[:-1])
    slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts[:n_slices], VGG19_SLICE_ENDS))
    slices.requires_grad_(False)
    return slices.eval()


# ----------------------------------------------------------------------------------------------------------------
# Adversarial terms (hinge GAN) and feature matching; inputs are per-scale lists, so no discriminator is needed
# ----------------------------------------------------------------------------------------------------------------
def _check_scales(name: str, *lists: Sequence[object]) -> None:
    if not lists[0] or any(len(x) != len(lists[0]) for x in lists):
        raise ValueError(f"{name}: expected non-empty per-scale lists of one length, got {[len(x) for x in lists]}")


def discriminator_hinge_loss(real_preds: Sequence[torch.Tensor], fake_preds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the discriminator: mean over scales of ``mean relu(1 − D(real)) + mean relu(1 + D(fake))``.

    Args:
        real_preds: patch logits on real images, one tensor per discriminator scale.
        fake_preds: patch logits on generated images (detached by the caller), same layout.

    face-vid2vid sums over scales; with its single scale (scales [1]) sum and mean agree, and the mean keeps the
    weight meaningful when scales are added.
    """
    _check_scales("discriminator_hinge_loss", real_preds, fake_preds)
    terms = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real_preds, fake_preds)]
    return torch.stack(terms).mean()


def generator_hinge_loss(fake_preds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the generator: mean over scales of ``−mean D(fake)`` (can be negative)."""
    _check_scales("generator_hinge_loss", fake_preds)
    return torch.stack([-f.mean() for f in fake_preds]).mean()


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminator's intermediate maps on real and generated images: summed over layers, mean over
    scales (face-vid2vid: weight 10 per layer, one scale). Real maps are detached.

    Args:
        real_features: per scale, the list of intermediate maps on the real image.
        fake_features: per scale, the maps on the generated image (same shapes).
    """
    _check_scales("feature_matching_loss", real_features, fake_features)
    per_scale = []
    for s, (reals, fakes) in enumerate(zip(real_features, fake_features)):
        if len(reals) != len(fakes) or not reals:
            raise ValueError(f"feature_matching_loss: scale {s} has {len(reals)} real and {len(fakes)} fake maps")
        per_scale.append(sum((r.detach() - f).abs().mean() for r, f in zip(reals, fakes)))
    return torch.stack(per_scale).mean()


# ----------------------------------------------------------------------------------------------------------------
# Equivariance: a random affine + thin-plate-spline warp of the driving frame (FOMM / face-vid2vid)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformConfig:
    """Random warp of the equivariance loss (face-vid2vid's transform_params).

    Attributes:
        sigma_affine: std of the noise added to the identity 2x3 affine matrix.
        sigma_tps: std of the thin-plate-spline weights (0 = affine only).
        points_tps: the TPS control points form a points_tps x points_tps grid over [-1, 1]².
    """

    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5

    def validate(self) -> None:
        if self.sigma_affine < 0:
            raise ValueError(f"transform.sigma_affine: must be >= 0, got {self.sigma_affine}")
        if self.sigma_tps < 0:
            raise ValueError(f"transform.sigma_tps: must be >= 0, got {self.sigma_tps}")
        if self.points_tps < 2:
            raise ValueError(f"transform.points_tps: must be >= 2, got {self.points_tps}")


def coordinate_grid_2d(height: int, width: int, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) grid of normalised (x, y) pixel-centre coordinates, -1 and 1 at the first and last pixel centres
    (the ``align_corners=True`` convention of the frame warp below): the 2D slice of the renderer's
    ``make_coordinate_grid``."""
    return make_coordinate_grid((1, height, width), dtype, device)[0, :, :, :2]  # (1, H, W, 3) -> (H, W, 2)


class RandomTransform:
    """One random warp per batch row: ``T(c) = A·c + b + Σ_i w_i φ(|c − p_i|₁)``, φ(r) = r² log r (FOMM's TPS, with
    its L1 distance to the control points p_i).

    ``transform_frame(frame)[q] = frame[T(q)]``: the transformed frame shows at q what the frame shows at T(q). So a
    point p of the driving frame appears at the q with ``warp_coordinates(q) = p``, and keypoints detected on the
    transformed frame map back to the driving frame through :meth:`warp_coordinates`.

    Args:
        batch_size: B, one warp per row.
        generator: torch generator that draws the warp (seeded by the caller: reproducible).
        cfg: noise levels and control grid.
        rows: keep only rows [first, stop) of the B drawn warps (a torchrun rank's share of the global batch).
    """

    def __init__(self, batch_size: int, generator: torch.Generator, cfg: TransformConfig = TransformConfig(),
                 rows: tuple[int, int] | None = None) -> None:
        cfg.validate()
        noise = torch.randn(batch_size, 2, 3, generator=generator) * cfg.sigma_affine  # (B, 2, 3)
        self.theta = noise + torch.eye(2, 3)  # (B, 2, 3) [A | b]
        self.control_points = coordinate_grid_2d(cfg.points_tps, cfg.points_tps).reshape(-1, 2)  # (P, 2)
        if cfg.sigma_tps > 0:
            self.control_params = torch.randn(batch_size, cfg.points_tps**2, generator=generator) * cfg.sigma_tps
        else:
            self.control_params = None  # (B, P) TPS weights, or affine only
        if rows is not None:  # one rank's rows of the global batch's warps (the draws do not depend on the split)
            first, stop = rows
            self.theta = self.theta[first:stop]
            if self.control_params is not None:
                self.control_params = self.control_params[first:stop]
            batch_size = stop - first
        self.batch_size = batch_size

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """T applied to (B, N, 2) normalised (x, y) coordinates -> (B, N, 2) (differentiable in `coords`)."""
        if coords.ndim != 3 or coords.shape[0] != self.batch_size or coords.shape[-1] != 2:
            raise ValueError(f"warp_coordinates: expected ({self.batch_size}, N, 2) coordinates, "
                             f"got {tuple(coords.shape)}")
        theta = self.theta.to(coords)
        out = torch.einsum("bij,bnj->bni", theta[:, :, :2], coords) + theta[:, None, :, 2]  # (B, N, 2)
        if self.control_params is not None:
            points = self.control_points.to(coords)
            r = (coords[:, :, None, :] - points[None, None]).abs().sum(-1)  # (B, N, P) L1 distances
            phi = r**2 * torch.log(r + 1e-6)  # (B, N, P)
            out = out + (phi * self.control_params.to(coords)[:, None, :]).sum(-1, keepdim=True)  # (B, N, 2)
        return out

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """Warp (B, C, H, W) frames (bilinear, reflection padding, align_corners=True) -> (B, C, H, W)."""
        b, _, h, w = frame.shape
        if b != self.batch_size:
            raise ValueError(f"transform_frame: batch of {b} frames for a transform of {self.batch_size}")
        grid = coordinate_grid_2d(h, w, frame.dtype, frame.device).reshape(1, h * w, 2).expand(b, -1, -1)  # (B, HW, 2)
        grid = self.warp_coordinates(grid).reshape(b, h, w, 2)  # (B, H, W, 2)
        return F.grid_sample(frame, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def equivariance_loss(kp_driving: torch.Tensor, kp_transformed: torch.Tensor, transform: RandomTransform
                      ) -> torch.Tensor:
    """face-vid2vid's equivariance (value) loss: ``mean |kp_driving_xy − T(kp_transformed_xy)|``.

    Args:
        kp_driving: (B, K, 3) keypoints of the driving frame.
        kp_transformed: (B, K, 3) keypoints of ``transform.transform_frame(driving)`` (same canonical keypoints,
            motion estimated on the transformed frame).
        transform: the warp that made the transformed frame.

    Only x, y are compared (the 2D warp says nothing about depth), as in face-vid2vid.
    """
    if kp_driving.shape != kp_transformed.shape or kp_driving.ndim != 3 or kp_driving.shape[-1] != 3:
        raise ValueError(f"equivariance_loss: expected two (B, K, 3) keypoint sets, got {tuple(kp_driving.shape)} "
                         f"and {tuple(kp_transformed.shape)}")
    return (kp_driving[..., :2] - transform.warp_coordinates(kp_transformed[..., :2])).abs().mean()


# ----------------------------------------------------------------------------------------------------------------
# Priors and supervision of the keypoint transformation
# ----------------------------------------------------------------------------------------------------------------
def keypoint_prior_loss(kp: torch.Tensor, distance: float = KP_PRIOR_DISTANCE, depth: float = KP_PRIOR_DEPTH
                        ) -> torch.Tensor:
    """face-vid2vid's keypoint prior: ``Σ_{i≠j} max(0, D_t − ‖x_i − x_j‖²) + |mean_k z_k − z_t|``, mean over batch.

    The pair sum runs over ordered pairs (each unordered pair counts twice), as in the reference. The reference also
    sums the i = j terms, a constant K·D_t with no gradient; it is left out here so that well-spread keypoints at
    the target depth score exactly 0 (reference value = this value + K·D_t).

    Args:
        kp: (B, K, 3) keypoints (face-vid2vid applies it to the driving keypoints).
        distance: D_t, squared distance below which two keypoints repel.
        depth: z_t, target mean depth.
    """
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoint_prior_loss: expected (B, K, 3) keypoints, got {tuple(kp.shape)}")
    d2 = (kp[:, :, None, :] - kp[:, None, :, :]).square().sum(-1)  # (B, K, K) squared distances
    off_diagonal = ~torch.eye(kp.shape[1], dtype=torch.bool, device=kp.device)  # (K, K)
    spread = (F.relu(distance - d2) * off_diagonal).sum(dim=(1, 2))  # (B,)
    mean_depth = (kp[..., 2].mean(dim=1) - depth).abs()  # (B,)
    return (spread + mean_depth).mean()


def deformation_prior_loss(exp: torch.Tensor) -> torch.Tensor:
    """face-vid2vid's expression (deformation) prior: the L1 norm of each keypoint's δ, mean over batch and
    keypoints (``‖δ_k‖₁`` summed over x, y, z, i.e. 3 x mean |δ|).

    Args:
        exp: (B, K, 3) expression deltas δ.
    """
    if exp.ndim != 3 or exp.shape[-1] != 3:
        raise ValueError(f"deformation_prior_loss: expected (B, K, 3) deltas, got {tuple(exp.shape)}")
    return exp.abs().sum(-1).mean()


def pixels_to_grid(points: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Pixel coordinates (pixel centres at integers, 0 … size−1) -> ``grid_sample``'s normalised [−1, 1] coordinates
    under the given `align_corners` convention."""
    if align_corners:
        return points * (2.0 / max(size - 1, 1)) - 1.0
    return (2.0 * points + 1.0) / size - 1.0


def landmark_flow_loss(deformation: torch.Tensor, source_points: torch.Tensor, driving_points: torch.Tensor,
                       align_corners: bool) -> torch.Tensor:
    """Landmark-flow supervision of the dense motion (this project's addition, method.md §4.3; not in face-vid2vid).

    The deformation is a backward warp: at a driving-frame location it holds where to sample the source. At each
    facial landmark of the driving frame it must therefore point at the same landmark in the source frame:
    ``mean |deformation_xy(p_driving) − p_source|`` over landmarks and every depth slice of the volume (the slices
    hold different feature channels of one 2D image, so all must move the same in 2D). Preprocessing's 68 landmarks
    exist for every clip, real or synthetic, so this teaches the motion path what a face's motion looks like before
    the decoder learns to redraw the source without it (docs/decisions.md, "mask collapse").

    Args:
        deformation: (B, D, h, w, 3) source sampling coordinates (x, y, z) in grid_sample's normalised units.
        source_points, driving_points: (B, N, 2) landmark (x, y) in the same normalised units.
        align_corners: the convention of the coordinates (the renderer's).
    Returns:
        scalar, in normalised units (2 = the image side).
    """
    if deformation.ndim != 5 or deformation.shape[-1] != 3:
        raise ValueError(f"landmark_flow_loss: expected a (B, D, h, w, 3) deformation, got {tuple(deformation.shape)}")
    b, d, h, w, _ = deformation.shape
    if source_points.shape != driving_points.shape or source_points.shape[0] != b or source_points.shape[-1] != 2:
        raise ValueError(f"landmark_flow_loss: expected two ({b}, N, 2) point sets, got "
                         f"{tuple(source_points.shape)} and {tuple(driving_points.shape)}")
    field = deformation[..., :2].permute(0, 1, 4, 2, 3).reshape(b, d * 2, h, w)  # (B, 2D, h, w)
    sampled = F.grid_sample(field, driving_points[:, :, None, :].to(field.dtype), mode="bilinear",
                            padding_mode="border", align_corners=align_corners)  # (B, 2D, N, 1)
    sampled = sampled[..., 0].view(b, d, 2, -1).permute(0, 1, 3, 2)  # (B, D, N, 2)
    return (sampled - source_points[:, None].to(sampled.dtype)).abs().mean()


def keypoint_anchor_loss(kp_source: torch.Tensor, kp_driving: torch.Tensor, source_points: torch.Tensor,
                         driving_points: torch.Tensor) -> torch.Tensor:
    """Keypoints anchored to facial landmarks (this project's addition, method.md §4.3; not in face-vid2vid).

    Keypoint k of both frames is tied to one chosen landmark of preprocessing's 68 (``keypoint_landmarks``): its
    image-plane position (x, y) must match that landmark in its own frame, and its source→driving displacement must
    match the landmark's. Depth stays free. Each keypoint warp of the dense-motion network then moves the source by the
    face's true motion near its landmark from the first steps on, instead of by an unanchored guess that loses to the
    identity warp (docs/decisions.md, "Keypoints anchored to landmarks"):
    ``mean|x_s − p_s| + mean|x_d − p_d| + mean|(x_d − x_s) − (p_d − p_s)|``.

    Args:
        kp_source, kp_driving: (B, K, 3) transformed keypoints (x, y, z) in grid_sample's normalised units.
        source_points, driving_points: (B, K, 2) the chosen landmarks (x, y) in the same units.
    Returns:
        scalar, in normalised units (2 = the image side).
    """
    if kp_source.shape != kp_driving.shape or kp_source.ndim != 3 or kp_source.shape[-1] != 3:
        raise ValueError(f"keypoint_anchor_loss: expected two (B, K, 3) keypoint sets, got {tuple(kp_source.shape)} "
                         f"and {tuple(kp_driving.shape)}")
    want = (*kp_source.shape[:2], 2)
    if tuple(source_points.shape) != want or tuple(driving_points.shape) != want:
        raise ValueError(f"keypoint_anchor_loss: expected two {want} landmark sets, got "
                         f"{tuple(source_points.shape)} and {tuple(driving_points.shape)}")
    xs, xd = kp_source[..., :2], kp_driving[..., :2]
    ps, pd = source_points.to(xs.dtype), driving_points.to(xd.dtype)
    return (xs - ps).abs().mean() + (xd - pd).abs().mean() + ((xd - xs) - (pd - ps)).abs().mean()


def head_pose_loss(pred_deg: Sequence[torch.Tensor], ref_deg: Sequence[torch.Tensor]) -> torch.Tensor:
    """face-vid2vid's head-pose loss: ``Σ_{yaw,pitch,roll} mean_B |pred − ref|`` in degrees.

    The reference network's angles (Hopenet) are the targets and get no gradient. As in face-vid2vid the three
    angles are summed, not averaged: its weight 20 applies to that sum.

    Args:
        pred_deg: (yaw, pitch, roll), each (B,) degrees, from the head-pose estimator.
        ref_deg: (yaw, pitch, roll), each (B,) degrees, from the pretrained pose network.
    """
    if len(pred_deg) != 3 or len(ref_deg) != 3:
        raise ValueError(f"head_pose_loss: expected (yaw, pitch, roll) triples, got {len(pred_deg)} and "
                         f"{len(ref_deg)} tensors")
    terms = []
    for name, p, r in zip(("yaw", "pitch", "roll"), pred_deg, ref_deg):
        if p.shape != r.shape or p.ndim != 1:
            raise ValueError(f"head_pose_loss: {name} expected two (B,) tensors, got {tuple(p.shape)} and "
                             f"{tuple(r.shape)}")
        terms.append((p - r.detach()).abs().mean())
    return torch.stack(terms).sum()


def pose_bin_cross_entropy(logits: Sequence[torch.Tensor], ref_deg: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hopenet's classification term: ``Σ_{yaw,pitch,roll} mean_B CE(logits, bin(ref))``, bins of 3° centred on
    ``3 i − 3 ⌊n/2⌋`` (the bins of `bins_to_degrees`). Added to :func:`head_pose_loss` when the teacher is
    preprocessing's pose: the expectation-only L1 lets the softmax collapse onto the median bin before the
    features have learnt the pose, after which its gradient vanishes (docs/decisions.md)."""
    terms = []
    for lg, r in zip(logits, ref_deg):
        n = lg.shape[1]
        target = torch.round(r.detach() / BIN_WIDTH_DEG).long().add(n // 2).clamp(0, n - 1)  # (B,)
        terms.append(F.cross_entropy(lg, target))
    return torch.stack(terms).sum()


def mouth_reconstruction_l1(pred: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor,
                            size: int = 32) -> torch.Tensor:
    """Mean absolute error inside the driving frame's mouth region (this project's `mouth` term).

    Both (B, 3, S, S) images in [0, 1] are cut at the same square around the median mouth landmark of `landmarks`
    ((B, 68, 2), pixels of the images), as the TAVC metric and CAR cut it (`pipeline.losses.car.mouth_roi_torch`,
    72/256 of the crop), resampled to `size` px; the error is in [0, 1] units (ROIs are in [-1, 1], hence the 1/2).
    The mouth covers ~8 % of a face crop, so in the whole-frame L1 and perceptual terms its error is diluted
    twelvefold; this term weights it apart. The target gets no gradient.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mouth_reconstruction_l1: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    a = mouth_roi_torch(pred, landmarks, size=size)
    b = mouth_roi_torch(target.detach(), landmarks.detach(), size=size)
    return 0.5 * (a - b).abs().mean()


def reconstruction_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel error of (B, 3, H, W) images in [0, 1]; the target gets no gradient."""
    if pred.shape != target.shape:
        raise ValueError(f"reconstruction_l1: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred - target.detach()).abs().mean()


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RendererLossWeights:
    """Weights of the generator-side terms (defaults: face-vid2vid, method.md §4.3).

    The perceptual weight multiplies :class:`PerceptualPyramidLoss`, whose per-layer `layer_weights` are relative:
    the effective weight of VGG layer l is ``perceptual · layer_weights[l]`` (face-vid2vid: 10 · 1 for each of the
    5 layers). `head_pose` must be 0 when no pretrained pose network is available (method.md §4.3). `l1` is not part of
    face-vid2vid (0 at full size); small CPU configs may use it to converge faster. `landmark_flow`
    (:func:`landmark_flow_loss`, preprocessing's landmarks as a teacher of the dense motion) is this project's
    addition too: 0 = face-vid2vid; so is `keypoint_anchor` (:func:`keypoint_anchor_loss`, each keypoint tied to one
    landmark), and so is `mouth` (:func:`mouth_reconstruction_l1`, L1 on the driving frame's mouth region).
    `car` is TAVCE's audio-visual regularisation (:class:`pipeline.losses.car.CARLoss`,
    Eq. 6) of the audio-driven stage: 0 in video-driven pretraining.
    """

    perceptual: float = 10.0
    gan: float = 1.0
    feature_matching: float = 10.0
    equivariance: float = 10.0
    keypoint_prior: float = 10.0
    head_pose: float = 20.0
    deformation_prior: float = 5.0
    l1: float = 0.0
    landmark_flow: float = 0.0
    keypoint_anchor: float = 0.0
    mouth: float = 0.0
    car: float = 0.0

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss_weights.{f.name}: must be a finite number >= 0, got {value}")

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def weighted_total(terms: Mapping[str, torch.Tensor], weights: RendererLossWeights) -> torch.Tensor:
    """``Σ weight[name] · terms[name]`` over the given terms (names = :class:`RendererLossWeights` fields).

    A term whose weight is 0 is skipped (it may then be missing altogether, or be left out of the computation by
    the caller); an unknown name is an error.
    """
    w = weights.as_dict()
    unknown = sorted(set(terms) - set(w))
    if unknown:
        raise KeyError(f"weighted_total: unknown loss term(s) {unknown} (known: {sorted(w)})")
    parts = [w[name] * value for name, value in terms.items() if w[name] != 0]
    if not parts:
        raise ValueError(f"weighted_total: every given term has weight 0 ({sorted(terms)})")
    return torch.stack([p.reshape(()) for p in parts]).sum()


__all__ = ["PerceptualConfig", "PerceptualPyramidLoss", "discriminator_hinge_loss",
           "generator_hinge_loss", "feature_matching_loss", "TransformConfig", "RandomTransform",
           "coordinate_grid_2d", "equivariance_loss", "keypoint_prior_loss", "deformation_prior_loss",
           "head_pose_loss", "landmark_flow_loss", "pixels_to_grid", "reconstruction_l1", "mouth_reconstruction_l1", "RendererLossWeights", "weighted_total", "KP_PRIOR_DISTANCE",
           "KP_PRIOR_DEPTH"]
