"""Renderer networks (method.md §4) and MappingNet (§5) at tiny dimensions: shapes of every module, the keypoint
transformation against known rotations, pose bins, dense motion at zero motion, CERL (TAVCE Eq. 5) invariants,
the discriminator's outputs, SadTalker checkpoint key mapping, and the full-size parameter counts of
method.md §4.4."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pipeline.checkpoint import WeightsError
from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.geometry import radians, rotation_matrix
from pipeline.models import count_parameters
from pipeline.models.renderer import (CERL, AppearanceConfig, CERLConfig, DenseMotionConfig, DiscriminatorConfig,
                                      GeneratorConfig, HeadMotion, HeadPoseConfig, KeypointDetectorConfig,
                                      MappingConfig, MappingNet, Renderer, RendererConfig, bins_to_degrees,
                                      build_discriminator, load_sadtalker_renderer, sadtalker_layout,
                                      transform_keypoints)
from pipeline.models.renderer.blocks import make_coordinate_grid

K = 5
TINY = RendererConfig(
    image_size=64, num_kp=K,
    appearance=AppearanceConfig(block_expansion=8, max_features=32, num_down_blocks=2, reshape_channel=4,
                                reshape_depth=4, num_resblocks=1),
    keypoints=KeypointDetectorConfig(block_expansion=8, max_features=32, num_blocks=3, reshape_depth=4),
    head_pose=HeadPoseConfig(block_expansion=8, max_features=64),
    dense_motion=DenseMotionConfig(block_expansion=8, max_features=32, num_blocks=2, compress=2),
    generator=GeneratorConfig(block_expansion=8, num_middle_blocks=1, spade_hidden=16),
    discriminator=DiscriminatorConfig(scales=(1.0, 0.5), block_expansion=8, max_features=32, num_blocks=3),
    cerl=CERLConfig(relation_dim=8),
)
B, H = 2, 64
h, D, C, CF = 16, 4, 4, 16  # feature side, volume depth, volume channels, 2D feature channels


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions are dominated by thread synchronisation; on a busy 2-core machine one thread is ~10x faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    torch.manual_seed(0)
    return Renderer(TINY).eval()


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, H, H, generator=torch.Generator().manual_seed(seed))


def _random_motion(b: int, k: int, seed: int = 0) -> HeadMotion:
    g = torch.Generator().manual_seed(seed)
    return HeadMotion(torch.randn(b, 66, generator=g), torch.randn(b, 66, generator=g), torch.randn(b, 66, generator=g),
                      0.1 * torch.randn(b, 3, generator=g), 0.05 * torch.randn(b, k, 3, generator=g))


# ----------------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------------
def test_every_module_has_the_documented_shapes(renderer):
    src = _images()
    with torch.no_grad():
        f = renderer.encode_source(src)
        assert f.shape == (B, CF, h, h)
        vol = renderer.feature_volume(f, torch.randn(B, 8, 8))
        assert vol.shape == (B, C, D, h, h)
        kp = renderer.canonical_keypoints(src)
        assert kp.shape == (B, K, 3) and kp.abs().max() <= 1
        motion = renderer.estimate_motion(src)
        assert motion.yaw.shape == motion.pitch.shape == motion.roll.shape == (B, 66)
        assert motion.t.shape == (B, 3) and motion.exp.shape == (B, K, 3)
        assert all(a.shape == (B,) for a in motion.degrees())
        kp_d = transform_keypoints(kp, motion)
        out = renderer.generate(vol, kp, kp_d)
    assert out.prediction.shape == (B, 3, H, H)
    assert 0 <= out.prediction.min() and out.prediction.max() <= 1
    assert out.occlusion.shape == (B, 1, h, h)
    assert out.deformation.shape == (B, D, h, h, 3) and torch.isfinite(out.deformation).all()
    assert out.mask.shape == (B, K + 1, D, h, h)
    torch.testing.assert_close(out.mask.sum(1), torch.ones(B, D, h, h))


def test_forward_equals_the_composition_and_checks_inputs(renderer):
    src, rel = _images(1), torch.randn(B, 8, 8)
    kp_s = torch.rand(B, K, 3) * 2 - 1
    kp_d = kp_s + 0.05
    with torch.no_grad():
        direct = renderer(src, kp_s, kp_d, rel).prediction
        composed = renderer.generate(renderer.feature_volume(renderer.encode_source(src), rel), kp_s, kp_d).prediction
    torch.testing.assert_close(direct, composed)
    with pytest.raises(ValueError, match="expected"):
        renderer.encode_source(torch.rand(B, 3, 32, 32))
    with pytest.raises(ValueError, match="relation"):
        renderer.feature_volume(renderer.encode_source(src), torch.randn(B, 7, 7))
    with pytest.raises(ValueError, match="kp_driving"):
        renderer.generate(torch.rand(B, C, D, h, h), kp_s, kp_d[:, :3])


def test_training_mode_backward_reaches_every_generator_parameter():
    torch.manual_seed(0)
    r = Renderer(TINY).train()
    kp = r.canonical_keypoints(_images())
    kp_d = transform_keypoints(kp, r.estimate_motion(_images(2)))
    out = r(_images(), kp, kp_d, torch.randn(B, 8, 8))
    out.prediction.mean().backward()
    for name, p in r.named_parameters():
        # CERL's Conv2 starts with zero gradient because Conv1 is zero (identity start); everything else learns.
        if name.startswith("cerl.conv2"):
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert r.cerl.conv1.weight.grad.abs().sum() > 0


def test_discriminator_returns_features_and_patch_logits_per_scale():
    d = build_discriminator(TINY)
    outs = d(_images())
    assert len(outs) == 2
    assert [len(o.features) for o in outs] == [3, 3]
    assert outs[0].prediction.shape == (B, 1, 10, 10)  # 64 -> 61 -> 30 -> 27 -> 13 -> 10
    assert outs[1].prediction.shape[:2] == (B, 1)
    assert outs[0].features[0].shape == (B, 16, 30, 30)
    with pytest.raises(ValueError, match="too small"):
        dataclasses.replace(TINY, discriminator=DiscriminatorConfig(num_blocks=5)).validate()


def test_mapping_net_shapes_and_window_check():
    cfg = MappingConfig(descriptor_dim=32, num_kp=K)
    m = MappingNet(cfg)
    motion = m(torch.randn(B, 70, 27))
    assert motion.yaw.shape == (B, 66) and motion.t.shape == (B, 3) and motion.exp.shape == (B, K, 3)
    assert not motion.in_degrees
    with pytest.raises(ValueError, match="27"):
        m(torch.randn(B, 70, 20))
    with pytest.raises(ValueError, match="mapping.window"):
        MappingConfig(window=20).validate()


@pytest.mark.parametrize("change, field", [
    (dict(image_size=60), "image_size"),
    (dict(dense_motion=DenseMotionConfig(num_blocks=5)), "dense_motion.num_blocks"),
    (dict(keypoints=KeypointDetectorConfig(num_blocks=5)), "keypoints.num_blocks"),
    (dict(cerl=CERLConfig(mode="full")), "cerl.mode"),
    (dict(head_pose=HeadPoseConfig(max_features=100)), "head_pose.max_features"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        dataclasses.replace(TINY, **change).validate()


def test_config_round_trips_through_a_params_section():
    for cfg in (TINY, RendererConfig()):
        assert from_dict(RendererConfig, to_dict(cfg), "model") == cfg
    section = to_dict(TINY)
    section["cerl"]["mode"] = "full"
    with pytest.raises(ConfigError, match=r"model\.cerl\.mode"):
        from_dict(RendererConfig, section, "model")
    assert from_dict(MappingConfig, to_dict(MappingConfig()), "mapping") == MappingConfig()


# ----------------------------------------------------------------------------------------------------------------
# Keypoints and pose bins
# ----------------------------------------------------------------------------------------------------------------
def test_bins_to_degrees_of_one_hot_bins():
    logits = torch.full((3, 66), -1e4, dtype=torch.float64)
    logits[0, 33] = logits[1, 0] = logits[2, 65] = 0
    torch.testing.assert_close(bins_to_degrees(logits), torch.tensor([0.0, -99.0, 96.0], dtype=torch.float64))
    uniform = torch.zeros(1, 66, dtype=torch.float64)
    torch.testing.assert_close(bins_to_degrees(uniform), torch.tensor([-1.5], dtype=torch.float64))


def test_identity_motion_reproduces_the_canonical_keypoints():
    kp = torch.rand(B, K, 3) * 2 - 1
    torch.testing.assert_close(transform_keypoints(kp, HeadMotion.identity(B, K)), kp)
    peaked = torch.full((B, 66), -1e4)
    peaked[:, 33] = 0  # logits whose expectation is 0 degrees
    motion = HeadMotion(peaked, peaked.clone(), peaked.clone(), torch.zeros(B, 3), torch.zeros(B, K, 3))
    torch.testing.assert_close(transform_keypoints(kp, motion), kp)


def test_transform_keypoints_matches_the_rotation_helper_and_a_hand_case():
    g = torch.Generator().manual_seed(0)
    kp = torch.randn(B, K, 3, generator=g, dtype=torch.float64)
    yaw, pitch, roll = (torch.rand(B, generator=g, dtype=torch.float64) * 120 - 60 for _ in range(3))
    t = torch.randn(B, 3, generator=g, dtype=torch.float64)
    exp = torch.randn(B, K, 3, generator=g, dtype=torch.float64)
    out = transform_keypoints(kp, HeadMotion(yaw, pitch, roll, t, exp, in_degrees=True))
    rot = rotation_matrix(radians(yaw), radians(pitch), radians(roll))
    expected = torch.stack([kp[b] @ rot[b].T for b in range(B)]) + t[:, None] + exp
    torch.testing.assert_close(out, expected)
    # Hand case: yaw +90 deg maps +x to -z and leaves y; pitch +90 deg maps +y to +z; roll +90 deg maps +x to +y.
    pts = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    ninety = torch.full((1,), 90.0, dtype=torch.float64)
    no_t, no_exp = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 2, 3, dtype=torch.float64)
    yawed = transform_keypoints(pts, HeadMotion(ninety, zero, zero, no_t, no_exp, in_degrees=True))
    torch.testing.assert_close(yawed, torch.tensor([[[0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64))
    pitched = transform_keypoints(pts, HeadMotion(zero, ninety, zero, no_t, no_exp, in_degrees=True))
    torch.testing.assert_close(pitched[0, 1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    rolled = transform_keypoints(pts, HeadMotion(zero, zero, ninety, no_t, no_exp, in_degrees=True))
    torch.testing.assert_close(rolled[0, 0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    t = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    shifted = transform_keypoints(pts, HeadMotion(zero, zero, zero, t, no_exp, in_degrees=True))
    torch.testing.assert_close(shifted, pts + torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


def test_coordinate_grid_is_xyz_over_voxel_centres():
    grid = make_coordinate_grid((3, 4, 5))
    assert grid.shape == (3, 4, 5, 3)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.linspace(-1, 1, 5))  # x along W
    torch.testing.assert_close(grid[0, :, 0, 1], torch.linspace(-1, 1, 4))  # y along H
    torch.testing.assert_close(grid[:, 0, 0, 2], torch.linspace(-1, 1, 3))  # z along D


# ----------------------------------------------------------------------------------------------------------------
# Dense motion and warping
# ----------------------------------------------------------------------------------------------------------------
def test_zero_motion_gives_an_identity_deformation_and_warp(renderer):
    vol = torch.randn(B, C, D, h, h)
    kp = torch.rand(B, K, 3) * 2 - 1
    with torch.no_grad():
        motion = renderer.generator.dense_motion_network(vol, kp, kp)
        grid = make_coordinate_grid((D, h, h)).expand(B, D, h, h, 3)
        # every candidate is the identity; only mask weights < 1e-3 (zeroed) can shrink the sum
        torch.testing.assert_close(motion.deformation, grid, atol=(K + 1) * 1e-3, rtol=0)
        torch.testing.assert_close(renderer.generator.warp(vol, grid), vol, atol=1e-5, rtol=0)  # align_corners=True


def test_sparse_motion_moves_each_keypoint_back_to_the_source():
    dm = Renderer(TINY).generator.dense_motion_network
    kp_s, kp_d = torch.rand(B, K, 3) - 0.5, torch.rand(B, K, 3) - 0.5
    motions = dm.sparse_motions((D, h, h), kp_s, kp_d)  # (B, K+1, D, h, h, 3)
    grid = make_coordinate_grid((D, h, h))
    torch.testing.assert_close(motions[:, 0], grid.expand(B, D, h, h, 3))
    torch.testing.assert_close(motions[:, 1:] - grid, (kp_s - kp_d)[:, :, None, None, None].expand(B, K, D, h, h, 3))


# ----------------------------------------------------------------------------------------------------------------
# CERL (TAVCE Eq. 5)
# ----------------------------------------------------------------------------------------------------------------
def _cerl_with_weights(mode: str, cf: int = 6, d: int = 4) -> CERL:
    torch.manual_seed(1)
    cerl = CERL(CERLConfig(mode=mode, relation_dim=d), cf)
    with torch.no_grad():
        for p in cerl.parameters():
            p.copy_(torch.randn_like(p))  # non-zero everywhere, so the branch is active
    return cerl


@pytest.mark.parametrize("mode", ["matmul", "diag"])
def test_cerl_starts_as_identity_and_zero_relation_keeps_f_exactly(mode):
    f = torch.randn(B, 6, 3, 3)
    fresh = CERL(CERLConfig(mode=mode, relation_dim=4), 6)
    assert torch.equal(fresh(f, torch.randn(B, 4, 4)), f)  # zero-initialised last conv
    trained = _cerl_with_weights(mode)
    assert torch.equal(trained(f, torch.zeros(B, 4, 4)), f)
    assert torch.equal(trained(f, None), f)
    assert not torch.allclose(trained(f, torch.randn(B, 4, 4)), f)


def test_cerl_matmul_equals_the_equation():
    cerl = _cerl_with_weights("matmul")
    f, rel = torch.randn(B, 6, 3, 3, dtype=torch.float64), torch.randn(B, 4, 4, dtype=torch.float64)
    cerl = cerl.double()
    w2, b2, w1 = cerl.conv2.weight[:, :, 0, 0], cerl.conv2.bias, cerl.conv1.weight[:, :, 0, 0]
    expected = []
    for i in range(B):
        fi = f[i].reshape(6, 9)  # (Cf, hw)
        c_hat = rel[i] / torch.linalg.matrix_norm(rel[i])  # Frobenius
        z = w2 @ fi + b2[:, None]  # (D, hw)
        expected.append((w1 @ (c_hat @ z) + fi).reshape(6, 3, 3))
    torch.testing.assert_close(cerl(f, rel), torch.stack(expected))
    torch.testing.assert_close(cerl(f, 7.0 * rel), cerl(f, rel))  # scale-invariant: only Ĉ^a matters


def test_cerl_diag_is_a_per_channel_gate():
    cerl = _cerl_with_weights("diag").double()
    f, rel = torch.randn(B, 6, 3, 3, dtype=torch.float64), torch.randn(B, 4, 4, dtype=torch.float64)
    w2, b2 = cerl.conv2.weight[:, :, 0, 0], cerl.conv2.bias
    w1, wo = cerl.conv1.weight[:, :, 0, 0], cerl.out.weight[:, :, 0, 0]
    expected = []
    for i in range(B):
        fi = f[i].reshape(6, 9)
        gate = torch.diagonal(rel[i]) / torch.linalg.matrix_norm(rel[i])  # (D,)
        z = (w2 @ fi + b2[:, None]) * gate[:, None]  # per-channel gate
        expected.append((wo @ (w1 @ z) + fi).reshape(6, 3, 3))
    torch.testing.assert_close(cerl(f, rel), torch.stack(expected))
    # off-diagonal entries of the relation play no role in diag mode
    off = rel + torch.triu(torch.ones(4, 4, dtype=torch.float64), 1)
    scale = torch.linalg.matrix_norm(off) / torch.linalg.matrix_norm(rel)
    torch.testing.assert_close(cerl(f, off) - f, (cerl(f, rel) - f) / scale[:, None, None, None])


def test_disabled_cerl_has_no_module_and_ignores_the_relation():
    torch.manual_seed(0)
    r = Renderer(dataclasses.replace(TINY, cerl=CERLConfig(enabled=False))).eval()
    assert r.cerl is None
    assert not any(k.startswith("cerl.") for k in r.state_dict())
    f = r.encode_source(_images())
    with torch.no_grad():
        torch.testing.assert_close(r.feature_volume(f, torch.randn(B, 8, 8)), r.feature_volume(f, None))
    assert count_parameters(Renderer(TINY)) - count_parameters(r) == count_parameters(Renderer(TINY).cerl)


# ----------------------------------------------------------------------------------------------------------------
# SadTalker checkpoints
# ----------------------------------------------------------------------------------------------------------------
def _trained_like(seed: int) -> tuple[Renderer, MappingNet]:
    torch.manual_seed(seed)
    r, m = Renderer(TINY), MappingNet(MappingConfig(descriptor_dim=16, num_kp=K))
    with torch.no_grad():
        for t in list(r.state_dict().values()) + list(m.state_dict().values()):
            if t.is_floating_point():
                t.add_(torch.rand_like(t))  # also perturbs buffers (running stats, spectral-norm vectors)
    return r, m


def test_sadtalker_layout_round_trip(tmp_path):
    src, src_map = _trained_like(0)
    layout = sadtalker_layout(src, src_map)
    assert set(layout) == {"generator", "kp_detector", "he_estimator", "mapping"}
    gen_keys = set(layout["generator"])
    for key in ("first.conv.weight", "down_blocks.1.norm.running_mean", "second.weight",
                "resblocks_3d.3dr0.conv1.weight", "dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight",
                "dense_motion_network.occlusion.weight", "third.conv.weight", "fourth.weight",
                "decoder.fc.weight", "decoder.G_middle_0.conv_0.weight_orig", "decoder.G_middle_0.conv_0.weight_u",
                "decoder.up_1.conv_s.weight_orig", "decoder.up_0.norm_0.mlp_shared.0.weight", "decoder.conv_img.bias"):
        assert key in gen_keys, key
    for key in ("down.weight", "predictor.down_blocks.down0.conv.weight", "predictor.conv.weight",
                "predictor.up_blocks.up2.norm.weight", "kp.weight"):
        assert key in layout["kp_detector"], key
    assert "block7.b7_1.norm4.weight" not in layout["he_estimator"]  # stride-1 bottlenecks have no skip
    assert "block6.skip.weight" in layout["he_estimator"]
    # SadTalker's HEEstimator computes yaw with fc_roll: our fc_yaw is stored under fc_roll
    assert torch.equal(layout["he_estimator"]["fc_roll.weight"], src.he_estimator.fc_yaw.weight)

    path = tmp_path / "facevid2vid.pth.tar"
    torch.save({**{k: v for k, v in layout.items() if k != "mapping"}, "discriminator": {"x": torch.zeros(1)},
                "epoch": 189}, path)
    mpath = tmp_path / "mapping.pth.tar"
    torch.save({"mapping": layout["mapping"], "epoch": 229}, mpath)

    dst, dst_map = _trained_like(1)
    cerl_before = {k: v.clone() for k, v in dst.cerl.state_dict().items()}
    assert load_sadtalker_renderer(dst, path, dst_map, mpath) == ["generator", "kp_detector", "he_estimator",
                                                                  "mapping"]
    for k, v in src.state_dict().items():
        if not k.startswith("cerl."):
            assert torch.equal(dst.state_dict()[k], v), k
    for k, v in dst.cerl.state_dict().items():
        assert torch.equal(v, cerl_before[k]), k  # CERL is not in SadTalker: untouched
    for k, v in src_map.state_dict().items():
        assert torch.equal(dst_map.state_dict()[k], v), k

    # flat layout with the safetensors release's `kp_extractor` prefix
    flat = {f"{'kp_extractor' if part == 'kp_detector' else part}.{k}": v
            for part, sd in layout.items() if part != "mapping" for k, v in sd.items()}
    torch.save(flat, tmp_path / "flat.pt")
    other, _ = _trained_like(2)
    load_sadtalker_renderer(other, tmp_path / "flat.pt")
    assert torch.equal(other.kp_detector.kp.weight, src.kp_detector.kp.weight)


def test_sadtalker_loading_names_the_bad_key(tmp_path):
    src, _ = _trained_like(0)
    layout = sadtalker_layout(src)
    bad = {k: dict(v) for k, v in layout.items()}
    bad["generator"]["third.conv.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"shape\.pt.*generator\.third\.conv\.weight"):
        load_sadtalker_renderer(Renderer(TINY), tmp_path / "shape.pt")
    missing = {k: dict(v) for k, v in layout.items()}
    del missing["kp_detector"]["kp.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing.*kp_detector\.kp\.bias"):
        load_sadtalker_renderer(Renderer(TINY), tmp_path / "missing.pt")
    extra = {k: dict(v) for k, v in layout.items()}
    extra["generator"]["final.weight"] = torch.zeros(3)  # OcclusionAwareGenerator (non-SPADE) key
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match="generator.final.weight"):
        load_sadtalker_renderer(Renderer(TINY), tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_sadtalker_renderer(Renderer(TINY), tmp_path / "nope.pt")


# ----------------------------------------------------------------------------------------------------------------
# Full size (built once, never run): method.md §4.4's measurement of SadTalker's public renderer
# ----------------------------------------------------------------------------------------------------------------
def test_full_size_parameter_counts_match_sadtalker():
    r = Renderer(RendererConfig())
    gen = r.generator
    assert count_parameters(r.appearance) + count_parameters(gen) == 100_988_176  # SadTalker generator 100.99 M
    assert count_parameters(gen.decoder) == 55_360_195  # SPADE decoder 55.36 M
    assert count_parameters(gen.dense_motion_network) == 43_545_549  # dense motion 43.55 M
    assert (count_parameters(r.appearance) + count_parameters(gen.third) + count_parameters(gen.fourth)
            == 2_082_432)  # source encoder + rest 2.08 M
    assert count_parameters(r.kp_detector) == 41_940_047  # 41.94 M
    assert count_parameters(r.he_estimator) == 30_254_838  # 30.25 M
    assert count_parameters(r.cerl) == 131_200  # Conv2 512x128 + bias, Conv1 128x512 (no bias)
    assert count_parameters(MappingNet(MappingConfig())) == 10_195_190  # 10.20 M
    assert count_parameters(build_discriminator(RendererConfig())) == 2_758_849
    assert math.isclose(count_parameters(CERL(CERLConfig(mode="diag"), 512)), 131_200 + 512 * 512)
    # SadTalker's key names at full size: the 16384-channel keypoint reshape and the hard-wired decoder widths
    layout = sadtalker_layout(r)
    assert tuple(layout["kp_detector"]["predictor.conv.weight"].shape) == (16384, 1024, 1, 1)
    assert tuple(layout["generator"]["decoder.up_1.conv_1.weight_orig"].shape) == (64, 64, 3, 3)
    # occlusion conv input: hourglass output (be + (K+1)(compress+1)) channels x depth D
    assert tuple(layout["generator"]["dense_motion_network.occlusion.weight"].shape) == (1, (32 + 16 * 5) * 16, 7, 7)


@torch.no_grad()
def test_dense_motion_scale_factor_keeps_the_identity_and_shapes():
    """Motion estimated at a quarter of the volume's resolution, upsampled back: still exact for zero motion."""
    cfg = dataclasses.replace(TINY, dense_motion=dataclasses.replace(TINY.dense_motion, scale_factor=0.5))
    torch.manual_seed(0)
    r = Renderer(cfg).eval()
    src = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    kp = r.canonical_keypoints(src)
    out = r(src, kp, kp)
    h = cfg.feature_size
    grid = make_coordinate_grid((cfg.appearance.reshape_depth, h, h))  # (D, h, w, 3)
    assert out.deformation.shape == (2, cfg.appearance.reshape_depth, h, h, 3)
    assert torch.allclose(out.deformation, grid.expand_as(out.deformation), atol=1e-5)
    assert out.mask.shape[2:] == (cfg.appearance.reshape_depth, h, h) and out.occlusion.shape[2:] == (h, h)


def test_zero_init_motion_starts_translation_and_expression_at_zero():
    from pipeline.models.renderer.head_pose import HeadPoseConfig, HeadPoseExpressionEstimator

    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    zero = HeadPoseExpressionEstimator(HeadPoseConfig(block_expansion=8, max_features=64, zero_init_motion=True), 5)
    motion = zero(images)
    assert motion.t.abs().max() == 0 and motion.exp.abs().max() == 0
    assert motion.yaw.abs().max() > 0  # the pose heads keep their init
    default = HeadPoseExpressionEstimator(HeadPoseConfig(block_expansion=8, max_features=64), 5)(images)
    assert default.t.abs().max() > 0 and default.exp.abs().max() > 0  # face-vid2vid's init


def test_coefficient_windows_are_centred_and_edge_clamped():
    import numpy as np

    from pipeline.faces.coeffs import coefficient_windows

    coeffs = np.arange(10 * 73, dtype=np.float64).reshape(10, 73)  # row t holds 73 t .. 73 t + 72
    w = coefficient_windows(coeffs, [0, 5, 9], 7)
    assert w.shape == (3, 70, 7) and w.dtype == np.float32
    rows = w[:, 0, :] / 73  # frame index of every window position (first coefficient = 73 t)
    np.testing.assert_array_equal(rows, [[0, 0, 0, 0, 1, 2, 3], [2, 3, 4, 5, 6, 7, 8], [6, 7, 8, 9, 9, 9, 9]])
    np.testing.assert_array_equal(w[1, :, 3], coeffs[5, :70])  # the centre column is the frame's 70 coefficients


def test_coefficient_motion_source_builds_a_mapping_net_that_drives_the_keypoints():
    cfg = dataclasses.replace(TINY, motion_source="coefficients",
                              mapping=MappingConfig(descriptor_dim=16, num_kp=K, zero_init_motion=True))
    r = Renderer(cfg)
    assert isinstance(r.mapping, MappingNet)
    coeffs = torch.randn(3, 70, 27)
    motion = r.map_motion(coeffs)
    assert motion.yaw.shape == (3, 66) and motion.exp.shape == (3, K, 3)
    assert torch.count_nonzero(motion.t) == 0 and torch.count_nonzero(motion.exp) == 0  # zero_init_motion
    assert Renderer(TINY).mapping is None
    with pytest.raises(ValueError, match="motion_source: coefficients"):
        Renderer(TINY).map_motion(coeffs)
    with pytest.raises(ValueError, match="mapping.num_kp"):
        Renderer(dataclasses.replace(cfg, mapping=MappingConfig(descriptor_dim=16, num_kp=K + 1)))
    with pytest.raises(ValueError, match="motion_source"):
        Renderer(dataclasses.replace(TINY, motion_source="audio"))


def test_sadtalker_loader_fills_the_renderers_own_mapping_net(tmp_path):
    src, src_map = _trained_like(0)
    layout = sadtalker_layout(src, src_map)
    path = tmp_path / "both.pth.tar"
    torch.save(layout, path)  # facevid2vid parts and mapping in one file
    cfg = dataclasses.replace(TINY, motion_source="coefficients", mapping=MappingConfig(descriptor_dim=16, num_kp=K))
    torch.manual_seed(5)
    dst = Renderer(cfg)
    assert load_sadtalker_renderer(dst, path)[-1] == "mapping"
    for k, v in src_map.state_dict().items():
        assert torch.equal(dst.mapping.state_dict()[k], v), k
    assert set(sadtalker_layout(dst)["mapping"]) == set(src_map.state_dict())
    # a facevid2vid file without mapping weights leaves the MappingNet as it is (a warning, not an error)
    torch.save({k: v for k, v in layout.items() if k != "mapping"}, tmp_path / "fv2v.pth.tar")
    before = {k: v.clone() for k, v in dst.mapping.state_dict().items()}
    assert "mapping" not in load_sadtalker_renderer(dst, tmp_path / "fv2v.pth.tar")
    for k, v in dst.mapping.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mapping_translation_zero_keeps_the_layout_and_outputs_no_translation():
    learned = MappingNet(MappingConfig(descriptor_dim=16, num_kp=K))
    zero = MappingNet(MappingConfig(descriptor_dim=16, num_kp=K, translation="zero"))
    assert set(zero.state_dict()) == set(learned.state_dict())  # fc_t stays: one checkpoint layout
    zero.load_state_dict(learned.state_dict())
    x = torch.randn(2, 70, 27)
    a, b = learned(x), zero(x)
    assert torch.count_nonzero(b.t) == 0 and torch.count_nonzero(a.t) > 0
    torch.testing.assert_close(a.exp, b.exp)
    with pytest.raises(ValueError, match="translation"):
        MappingConfig(translation="none").validate()


@pytest.mark.parametrize("mode", ["hard", "straight_through"])
def test_mask_floor_zeroes_tiny_candidates_and_only_straight_through_tells_them_apart(mode):
    """The 1e-3 floor of face-vid2vid zeroes a keypoint candidate in the forward pass either way. With ``hard`` a floored
    candidate's logit only gets the identity candidate's share of the gradient (the same for every floored
    candidate: nothing says which one would lower the loss, the collapse trap); with ``straight_through`` each gets
    its own, from its own displacement."""
    from pipeline.models.renderer.dense_motion import DenseMotionNetwork

    cfg = dataclasses.replace(TINY.dense_motion, mask_floor_gradient=mode)
    torch.manual_seed(0)
    net = DenseMotionNetwork(cfg, TINY.num_kp, TINY.appearance.reshape_channel, TINY.appearance.reshape_depth)
    with torch.no_grad():  # the identity candidate holds > 99.9 % everywhere: every keypoint candidate is floored
        net.mask.weight.zero_()
        net.mask.bias.copy_(torch.tensor([12.0] + [0.0] * TINY.num_kp))
    h = TINY.feature_size
    volume = torch.rand(2, TINY.appearance.reshape_channel, TINY.appearance.reshape_depth, h, h)
    kp_s = torch.rand(2, TINY.num_kp, 3) - 0.5
    kp_d = kp_s + 0.2 * torch.randn(2, TINY.num_kp, 3)  # every keypoint moves its own way
    out = net(volume, kp_s, kp_d)
    assert (out.mask[:, 1:] < 1e-3).all()
    grid = make_coordinate_grid((TINY.appearance.reshape_depth, h, h))
    torch.testing.assert_close(out.deformation, grid.expand_as(out.deformation), atol=1e-4, rtol=0)  # identity
    (out.deformation * torch.randn_like(out.deformation)).sum().backward()
    grads = net.mask.bias.grad[1:]  # (K,) one per keypoint candidate
    spread = (grads.max() - grads.min()).item() / grads.abs().max().item()
    if mode == "hard":
        assert spread < 1e-4  # the same gradient for every floored candidate
    else:
        assert spread > 0.1


def test_mask_logit_bound_keeps_every_candidate_above_the_floor():
    from pipeline.models.renderer.dense_motion import DenseMotionNetwork

    c, k = 3.0, TINY.num_kp
    cfg = dataclasses.replace(TINY.dense_motion, mask_logit_bound=c)
    torch.manual_seed(0)
    net = DenseMotionNetwork(cfg, k, TINY.appearance.reshape_channel, TINY.appearance.reshape_depth)
    with torch.no_grad():  # unbounded, these logits would give the identity candidate 1 - 1e-10 of every voxel
        net.mask.weight.zero_()
        net.mask.bias.copy_(torch.tensor([25.0] + [0.0] * k))
    h = TINY.feature_size
    volume = torch.rand(1, TINY.appearance.reshape_channel, TINY.appearance.reshape_depth, h, h)
    kp = torch.rand(1, k, 3) - 0.5
    mask = net(volume, kp, kp + 0.1).mask
    top = math.exp(c * math.tanh(25.0 / c)) / (math.exp(c * math.tanh(25.0 / c)) + k)
    torch.testing.assert_close(mask[:, 0], torch.full_like(mask[:, 0], top))
    assert top < math.exp(c) / (math.exp(c) + k * math.exp(-c)) + 1e-9 and mask[:, 1:].min() > 1e-3
    with pytest.raises(ValueError, match="mask_logit_bound"):
        dataclasses.replace(TINY.dense_motion, mask_logit_bound=-1.0).validate()
