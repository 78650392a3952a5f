"""Invariants of the renderer losses (pipeline/losses/renderer.py); tiny images, CPU, a few seconds."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import numpy as np
import torch

from pipeline.checkpoint import WeightsError
from pipeline.losses.renderer import (PerceptualConfig, PerceptualPyramidLoss,
                                      RandomTransform, RendererLossWeights, TransformConfig, coordinate_grid_2d,
                                      deformation_prior_loss, discriminator_hinge_loss, equivariance_loss,
                                      feature_matching_loss, generator_hinge_loss, head_pose_loss,
                                      keypoint_prior_loss, reconstruction_l1, weighted_total)
from pipeline.losses.renderer import VGG19_LENGTH, _vgg19_features

SMALL = dict(scales=(1.0, 0.5), layer_weights=(1.0, 1.0))  # 2 VGG slices, 2 scales: cheap on 32 px images


def images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# Perceptual
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_vgg() -> PerceptualPyramidLoss:
    return PerceptualPyramidLoss(PerceptualConfig(fallback="random_vgg19", seed=3, **SMALL))


def test_perceptual_zero_on_equal_and_positive_otherwise(random_vgg: PerceptualPyramidLoss) -> None:
    x, y = images(seed=0), images(seed=1)
    assert random_vgg.extractor_name == "vgg19_random_seed3"
    assert random_vgg(x, x.clone()).item() == 0.0
    assert random_vgg(x, y).item() > 0.0


def test_perceptual_gradient_only_to_prediction(random_vgg: PerceptualPyramidLoss) -> None:
    pred = images(seed=0).requires_grad_(True)
    target = images(seed=1).requires_grad_(True)
    random_vgg(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(not p.requires_grad and p.grad is None for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.slices.training  # the extractor stays in eval mode


def test_perceptual_random_init_is_seeded() -> None:
    a = PerceptualPyramidLoss(PerceptualConfig(seed=7, layer_weights=(1.0,), scales=(1.0,)))
    b = PerceptualPyramidLoss(PerceptualConfig(seed=7, layer_weights=(1.0,), scales=(1.0,)))
    c = PerceptualPyramidLoss(PerceptualConfig(seed=8, layer_weights=(1.0,), scales=(1.0,)))
    wa, wb, wc = (m.slices[0][0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert len(a.slices) == 1  # truncated after relu1_1


def test_perceptual_layer_weights_scale_the_loss() -> None:
    x, y = images(seed=0), images(seed=1)
    one = PerceptualPyramidLoss(PerceptualConfig(seed=0, **SMALL))(x, y)
    two = PerceptualPyramidLoss(PerceptualConfig(seed=0, scales=(1.0, 0.5), layer_weights=(2.0, 2.0)))(x, y)
    assert torch.allclose(two, 2 * one)


def test_pixel_pyramid_fallback() -> None:
    loss = PerceptualPyramidLoss(PerceptualConfig(fallback="pyramid_l1", scales=(1.0,)))
    assert loss.extractor_name == "pixel_pyramid_l1" and loss.slices is None
    x, y = images(seed=0), images(seed=1)
    assert torch.allclose(loss(x, y), (x - y).abs().mean())
    assert loss(x, x).item() == 0.0


def test_perceptual_loads_imagenet_file_strictly(tmp_path) -> None:
    """A torchvision-layout vgg19 state dict (features.* + classifier.*) loads; a missing feature key fails."""
    features = _vgg19_features(VGG19_LENGTH)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state.update({"classifier.0.weight": torch.zeros(2, 2), "classifier.0.bias": torch.zeros(2)})  # dropped
    path = tmp_path / "vgg19-test.pth"
    torch.save(state, path)
    loss = PerceptualPyramidLoss(PerceptualConfig(weights=str(path), layer_weights=(1.0,), scales=(1.0,)))
    assert loss.extractor_name == "vgg19_imagenet"
    assert torch.equal(loss.slices[0][0].weight, features[0].weight)
    state.pop("features.34.bias")
    torch.save(state, path)
    with pytest.raises(WeightsError, match="34.bias"):
        PerceptualPyramidLoss(PerceptualConfig(weights=str(path), layer_weights=(1.0,), scales=(1.0,)))


def test_vgg19_layout_matches_torchvision() -> None:
    import torchvision

    with torch.device("meta"):  # no initialisation cost
        reference = torchvision.models.vgg19(weights=None).features
    ours = _vgg19_features(VGG19_LENGTH)
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_perceptual_rejects_too_small_images() -> None:
    loss = PerceptualPyramidLoss(PerceptualConfig(scales=(1.0, 0.125), layer_weights=(1.0,) * 5))
    with pytest.raises(ValueError, match="layer_weights"):
        loss(images(size=32), images(size=32))


def test_perceptual_config_validation() -> None:
    with pytest.raises(ValueError, match="perceptual.scales"):
        PerceptualConfig(scales=(0.3,)).validate()
    with pytest.raises(ValueError, match="perceptual.layer_weights"):
        PerceptualConfig(layer_weights=(1.0,) * 6).validate()
    with pytest.raises(ValueError, match="perceptual.fallback"):
        PerceptualConfig(fallback="lpips").validate()  # type: ignore[arg-type]


def test_pyramid_levels() -> None:
    loss = PerceptualPyramidLoss(PerceptualConfig(fallback="pyramid_l1"))
    x = torch.full((1, 3, 32, 32), 0.7)
    levels = [down(x) for down in loss.pyramid]
    assert [tuple(y.shape[-2:]) for y in levels] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert torch.allclose(levels[1][..., 4:-4, 4:-4], torch.full((1, 3, 8, 8), 0.7), atol=1e-6)  # blur keeps a constant


# ----------------------------------------------------------------------------------------------------------------
# GAN and feature matching
# ----------------------------------------------------------------------------------------------------------------
def test_hinge_losses_known_values() -> None:
    real = [torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 2, 2), 0.5)]
    fake = [torch.full((2, 1, 4, 4), -2.0), torch.full((2, 1, 2, 2), 0.0)]
    # scale 0: confident and right -> 0; scale 1: relu(1 - .5) + relu(1 + 0) = 1.5; mean over scales 0.75
    assert math.isclose(discriminator_hinge_loss(real, fake).item(), 0.75)
    assert math.isclose(generator_hinge_loss(fake).item(), 1.0)  # -mean(-2, 0)
    assert discriminator_hinge_loss(real, fake).item() >= 0
    with pytest.raises(ValueError):
        discriminator_hinge_loss(real, fake[:1])


def test_feature_matching_zero_on_equal_and_gradient_only_to_fake() -> None:
    g = torch.Generator().manual_seed(0)
    real = [[torch.randn(2, 4, 8, 8, generator=g, requires_grad=True), torch.randn(2, 8, 4, 4, generator=g)]]
    fake = [[t.detach().clone().requires_grad_(True) for t in real[0]]]
    assert feature_matching_loss(real, fake).item() == 0.0
    fake2 = [[(t + 1.0).detach().requires_grad_(True) for t in real[0]]]
    loss = feature_matching_loss(real, fake2)
    assert math.isclose(loss.item(), 2.0, rel_tol=1e-6)  # 1 per layer, summed over 2 layers
    loss.backward()
    assert real[0][0].grad is None and fake2[0][0].grad is not None


# ----------------------------------------------------------------------------------------------------------------
# Equivariance
# ----------------------------------------------------------------------------------------------------------------
def test_random_transform_is_reproducible() -> None:
    a = RandomTransform(3, torch.Generator().manual_seed(5))
    b = RandomTransform(3, torch.Generator().manual_seed(5))
    c = RandomTransform(3, torch.Generator().manual_seed(6))
    pts = torch.rand(3, 7, 2) * 2 - 1
    assert torch.equal(a.warp_coordinates(pts), b.warp_coordinates(pts))
    assert not torch.equal(a.warp_coordinates(pts), c.warp_coordinates(pts))


def test_equivariance_zero_for_exactly_transformed_keypoints() -> None:
    transform = RandomTransform(2, torch.Generator().manual_seed(0), TransformConfig(sigma_affine=0.1, sigma_tps=0))
    kp_driving = torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    a, b = transform.theta[:, :, :2], transform.theta[:, :, 2]  # (B, 2, 2), (B, 2)
    xy = torch.einsum("bij,bkj->bki", torch.linalg.inv(a), kp_driving[..., :2] - b[:, None])  # T^-1 (kp)
    kp_transformed = torch.cat([xy, kp_driving[..., 2:] + 0.3], dim=-1)  # depth is ignored
    assert equivariance_loss(kp_driving, kp_transformed, transform).item() < 1e-6
    assert equivariance_loss(kp_driving, kp_driving + 0.05, transform).item() > 1e-3


def test_transform_frame_and_warp_coordinates_agree() -> None:
    """A bright blob at q in the transformed frame is where warp_coordinates(q) = p, p = blob of the original."""
    size = 64
    grid = coordinate_grid_2d(size, size)  # (H, W, 2)
    p = torch.tensor([0.25, -0.3])
    blob = torch.exp(-((grid - p) ** 2).sum(-1) / (2 * 0.04**2))  # (H, W)
    frame = blob.expand(1, 3, size, size).contiguous()
    transform = RandomTransform(1, torch.Generator().manual_seed(2),
                                TransformConfig(sigma_affine=0.1, sigma_tps=0.01, points_tps=5))
    warped = transform.transform_frame(frame)[0, 0]  # (H, W)
    w = warped.clamp(min=0) ** 4
    q = (w[..., None] * grid).sum((0, 1)) / w.sum()  # centroid of the warped blob, normalised (x, y)
    moved = (q - p).norm().item()
    back = transform.warp_coordinates(q.view(1, 1, 2))[0, 0]
    pixel = 2 / (size - 1)
    assert moved > 2 * pixel  # the warp moves the blob noticeably...
    assert (back - p).norm().item() < 1.5 * pixel  # ...and warp_coordinates maps it back within ~a pixel


def test_identity_transform_leaves_frame_unchanged() -> None:
    transform = RandomTransform(2, torch.Generator().manual_seed(0), TransformConfig(sigma_affine=0, sigma_tps=0))
    x = images(b=2, size=16)
    assert torch.allclose(transform.transform_frame(x), x, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Priors and pose
# ----------------------------------------------------------------------------------------------------------------
def test_keypoint_prior_zero_for_spread_keypoints_at_target_depth() -> None:
    xy = torch.tensor([[-0.6, -0.6], [0.6, -0.6], [-0.6, 0.6], [0.6, 0.6], [0.0, 0.0]])  # squared gaps >= 0.72
    z = torch.tensor([0.2, 0.46, 0.33, 0.33, 0.33])  # mean 0.33
    kp = torch.cat([xy, z[:, None]], dim=1)[None].repeat(2, 1, 1)
    assert keypoint_prior_loss(kp).item() < 1e-6


def test_keypoint_prior_positive_when_keypoints_coincide() -> None:
    kp = torch.tensor([[[0.1, 0.1, 0.33], [0.1, 0.1, 0.33], [0.8, -0.8, 0.33]]])
    assert math.isclose(keypoint_prior_loss(kp).item(), 2 * 0.1, rel_tol=1e-5)  # one pair, counted both ways
    deep = kp.clone()
    deep[..., 2] += 0.1
    assert math.isclose(keypoint_prior_loss(deep).item(), 0.2 + 0.1, rel_tol=1e-5)


def test_deformation_prior() -> None:
    assert deformation_prior_loss(torch.zeros(2, 4, 3)).item() == 0.0
    exp = torch.full((2, 4, 3), -0.5, requires_grad=True)
    loss = deformation_prior_loss(exp)
    assert math.isclose(loss.item(), 1.5)  # L1 norm over (x, y, z) of each keypoint
    loss.backward()
    assert exp.grad is not None


def test_head_pose_loss() -> None:
    pred = tuple(torch.tensor([10.0, -20.0], requires_grad=True) for _ in range(3))
    assert head_pose_loss(pred, tuple(p.detach() for p in pred)).item() == 0.0
    ref = (torch.tensor([12.0, -20.0]), torch.tensor([10.0, -24.0]), torch.tensor([10.0, -20.0]))
    ref = tuple(r.requires_grad_(True) for r in ref)
    loss = head_pose_loss(pred, ref)
    assert math.isclose(loss.item(), 1.0 + 2.0)  # sum over angles of the batch-mean error
    loss.backward()
    assert pred[0].grad is not None and ref[0].grad is None


def test_reconstruction_l1() -> None:
    x = images()
    assert reconstruction_l1(x, x).item() == 0.0
    assert math.isclose(reconstruction_l1(x, x + 0.25).item(), 0.25, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------
def test_weighted_total_and_validation() -> None:
    w = RendererLossWeights()
    w.validate()
    terms = {"perceptual": torch.tensor(1.0), "gan": torch.tensor(2.0), "head_pose": torch.tensor(5.0)}
    assert math.isclose(weighted_total(terms, w).item(), 10 + 2 + 100)
    assert math.isclose(weighted_total(terms, replace(w, head_pose=0.0)).item(), 12)
    with pytest.raises(KeyError, match="lpips"):
        weighted_total({"lpips": torch.tensor(1.0)}, w)
    with pytest.raises(ValueError, match="loss_weights.gan"):
        replace(w, gan=-1.0).validate()


def test_pose_bin_cross_entropy_targets_the_bin_of_the_reference_angle() -> None:
    from pipeline.losses.renderer import pose_bin_cross_entropy

    n = 66
    ref = torch.tensor([0.0, 3.0, -98.0, 200.0])  # bins n//2, n//2 + 1, 0 (rounded), clamped to the last
    target = torch.tensor([n // 2, n // 2 + 1, 0, n - 1])
    right = torch.full((4, n), -20.0)
    right[torch.arange(4), target] = 20.0
    assert pose_bin_cross_entropy([right] * 3, [ref] * 3).item() < 1e-6
    uniform = torch.zeros(4, n)
    assert pose_bin_cross_entropy([uniform] * 3, [ref] * 3).item() == pytest.approx(3 * math.log(n), rel=1e-5)
    wrong = right.roll(5, dims=1)
    assert pose_bin_cross_entropy([wrong] * 3, [ref] * 3).item() > 30


@pytest.mark.parametrize("align_corners", [True, False])
def test_landmark_flow_loss_is_zero_for_the_true_backward_warp_and_the_displacement_for_identity(align_corners):
    from pipeline.losses.renderer import landmark_flow_loss, pixels_to_grid
    from pipeline.models.renderer.blocks import make_coordinate_grid

    size = 16
    torch.manual_seed(0)
    driving_px = torch.rand(2, 68, 2) * (size - 1)  # (B, N, 2) pixels
    shift_px = torch.tensor([[1.5, -2.0], [0.0, 3.0]])  # the head moved by this from source to driving
    source_px = driving_px - shift_px[:, None]
    drv = pixels_to_grid(driving_px, size, align_corners)
    src = pixels_to_grid(source_px, size, align_corners)
    grid = make_coordinate_grid((3, size, size), torch.float32)  # (D, h, w, 3) identity, align_corners=True units
    if not align_corners:  # pixel centres of the align_corners=False convention
        grid = grid * (size - 1) / size
    identity = grid[None].repeat(2, 1, 1, 1, 1)  # (B, D, h, w, 3)
    shift_norm = src[:, :1] - drv[:, :1]  # (B, 1, 2) the same for every point
    warp = identity.clone()
    warp[..., :2] += shift_norm[:, :, None, None, :]
    assert landmark_flow_loss(warp, src, drv, align_corners).item() == pytest.approx(0.0, abs=1e-5)
    expected = (src - drv).abs().mean().item()  # the identity warp is wrong by the true displacement
    assert landmark_flow_loss(identity, src, drv, align_corners).item() == pytest.approx(expected, rel=1e-4)
    wrong = identity.clone().requires_grad_(True)
    landmark_flow_loss(wrong, src, drv, align_corners).backward()
    assert wrong.grad[..., :2].abs().sum() > 0 and wrong.grad[..., 2].abs().sum() == 0  # depth is not supervised
    with pytest.raises(ValueError, match="point sets"):
        landmark_flow_loss(identity, src[:, :3], drv, align_corners)


def test_pixels_to_grid_conventions():
    from pipeline.losses.renderer import pixels_to_grid

    pts = torch.tensor([0.0, 7.0, 3.5])
    assert pixels_to_grid(pts, 8, True).tolist() == pytest.approx([-1.0, 1.0, 0.0])
    assert pixels_to_grid(pts, 8, False).tolist() == pytest.approx([-7 / 8, 7 / 8, 0.0])


def test_keypoint_anchor_loss_is_zero_on_the_landmarks_and_counts_position_and_displacement_errors():
    from pipeline.losses.renderer import keypoint_anchor_loss

    torch.manual_seed(0)
    ps, pd = torch.rand(2, 5, 2) * 2 - 1, torch.rand(2, 5, 2) * 2 - 1  # (B, K, 2) landmarks, normalised
    depth = torch.rand(2, 5, 1)
    kp_s, kp_d = torch.cat([ps, depth], -1), torch.cat([pd, depth + 0.3], -1)  # depth is free
    assert keypoint_anchor_loss(kp_s, kp_d, ps, pd).item() == pytest.approx(0.0, abs=1e-7)
    # both frames off by the same shift: two position errors, the displacement is still right
    shift = torch.tensor([0.1, -0.05, 0.0])
    assert keypoint_anchor_loss(kp_s + shift, kp_d + shift, ps, pd).item() == pytest.approx(2 * 0.075, rel=1e-5)
    # the driving keypoints frozen at the source's: position error and displacement error, both = the true motion
    frozen = keypoint_anchor_loss(kp_s, kp_s.clone(), ps, pd).item()
    assert frozen == pytest.approx(2 * (pd - ps).abs().mean().item(), rel=1e-5)
    moving = kp_d.clone().requires_grad_(True)
    keypoint_anchor_loss(kp_s, moving + 0.01, ps, pd).backward()
    assert moving.grad[..., :2].abs().sum() > 0 and moving.grad[..., 2].abs().sum() == 0
    with pytest.raises(ValueError, match="landmark sets"):
        keypoint_anchor_loss(kp_s, kp_d, ps[:, :3], pd)


def test_mouth_reconstruction_l1_sees_only_the_mouth_region() -> None:
    """The `mouth` term: 0 for a perfect frame; changes inside the mouth box count, changes far from it do not;
    the gradient reaches the prediction only."""
    from pipeline.faces.mediapipe68 import TEMPLATE_68
    from pipeline.losses.renderer import mouth_reconstruction_l1

    S = 64
    torch.manual_seed(0)
    target = torch.rand(2, 3, S, S)
    lm = torch.tensor(np.asarray(TEMPLATE_68)[:, :2], dtype=torch.float32)  # unit square template
    lm = (lm - lm.min(0).values) / (lm.max(0).values - lm.min(0).values) * (S * 0.6) + S * 0.2  # face in the crop
    lm = lm[None].repeat(2, 1, 1)  # (2, 68, 2)
    assert float(mouth_reconstruction_l1(target.clone(), target, lm)) == 0.0
    cx, cy = (int(v) for v in lm[0, 48:68].median(0).values)
    far = target.clone()
    far[:, :, :4, :4] = 1 - far[:, :, :4, :4]  # the top-left corner, far from the mouth
    assert float(mouth_reconstruction_l1(far, target, lm)) == 0.0
    near = target.clone().requires_grad_(True)
    moved = near + 0.0
    moved = torch.where(torch.zeros_like(near, dtype=torch.bool).index_fill_(3, torch.tensor([cx]), True), 1 - near,
                        near)  # one pixel column through the mouth centre inverted
    tgt = target.clone().requires_grad_(True)
    loss = mouth_reconstruction_l1(moved, tgt, lm)
    assert float(loss) > 0.0
    loss.backward()
    assert near.grad is not None and near.grad.abs().sum() > 0 and tgt.grad is None
