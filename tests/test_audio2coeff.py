"""Audio2Coeff networks, losses, SadTalker weight loading and generation (tiny dimensions, no corpus)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.checkpoint import WeightsError
from pipeline.data.audio2coeff import coefficient_landmarks
from pipeline.faces.coeffs import ExpressionBasis
from pipeline.faces.mediapipe68 import TEMPLATE_68
from pipeline.losses.audio2coeff import (CoeffLandmarks, hinge_discriminator_loss, hinge_generator_loss, kl_divergence,
                                         landmark_loss, lsgan_discriminator_loss)
from pipeline.losses.syncers import MultiScaleSyncLoss
from pipeline.models import count_parameters
from pipeline.models.audio2coeff import (Audio2Coeff, Audio2CoeffConfig, generate_motion, load_sadtalker_weights,
                                         stitch_windows)
from pipeline.models.audio2coeff.expnet import ExpNet, ExpNetConfig
from pipeline.models.audio2coeff.ms_sync import MSSync, MSSyncConfig, merge_branches
from pipeline.models.audio2coeff.posevae import PoseVAE, PoseVAEConfig, reparameterize
from pipeline.models.syncer import Syncer, SyncerConfig

TINY = Audio2CoeffConfig(
    expnet=ExpNetConfig(audio_width=0.0625),
    posevae=PoseVAEConfig(audio_width=0.0625, seq_len=8, latent=4, num_classes=3, encoder_hidden=8, decoder_hidden=8,
                          unet_filters=(2, 2, 4, 4), disc_channels=(4, 4, 4)),
    ms_sync=MSSyncConfig(audio_width=0.0625, d_model=8, layers=1, heads=2, levels=4, branch_hidden=8,
                         frame_disc_hidden=8, window_disc_hidden=4))


def tiny(pose_generator: str = "posevae", seed: int = 0) -> Audio2Coeff:
    torch.manual_seed(seed)
    cfg = Audio2CoeffConfig(pose_generator, TINY.expnet, TINY.posevae, TINY.ms_sync)
    return Audio2Coeff(cfg).eval()


def random_basis(seed: int = 0, components: int = 64) -> ExpressionBasis:
    rng = np.random.default_rng(seed)
    return ExpressionBasis.fit(rng.normal(size=(300, 204)) * 0.01, components, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------------
def test_shapes_at_tiny_dims() -> None:
    b, t = 2, 8
    mel = torch.randn(b, t, 1, 80, 16)
    exp = ExpNet(TINY.expnet)(mel, torch.randn(b, 64), torch.zeros(b, t))
    assert exp.shape == (b, t, 64)
    vae = PoseVAE(TINY.posevae)
    out = vae(mel, torch.randn(b, t, 6), torch.randn(b, 6), torch.tensor([0, 2]), torch.randn(b, 4))
    assert out.motion.shape == (b, t, 6) and out.mu.shape == out.logvar.shape == (b, 4)
    assert vae.sample(mel, torch.randn(b, 6), torch.tensor([1, 1]), torch.randn(b, 4)).shape == (b, t, 6)
    assert vae.netD_motion(out.motion).shape == (b, t // 4)
    ms = MSSync(TINY.ms_sync)
    xs = ms.generator(torch.randn(b, 6), mel)
    assert xs.shape == (b, t, 6)
    assert ms.frame_disc(xs).shape == (b, t) and ms.window_disc(xs).shape == (b,)
    with pytest.raises(ValueError, match="ExpNet expects"):
        ExpNet(TINY.expnet)(mel[:, :, :, :40], torch.randn(b, 64), torch.zeros(b, t))
    with pytest.raises(ValueError, match="multiple of 8"):
        PoseVAE(PoseVAEConfig(seq_len=12))


def test_full_size_parameter_counts_match_sadtalker() -> None:
    """SPEC §4 measured SadTalker's modules: ExpNet 2.85 M, PoseVAE 11.25 M with the training-only encoder and
    discriminator, 3.16 M in the decoder."""
    exp, vae = ExpNet(), PoseVAE()
    assert count_parameters(exp) == 2_849_664
    assert count_parameters(vae) == 11_251_897
    assert count_parameters(vae.netG.decoder) == 3_156_497
    assert count_parameters(vae.audio_encoder) == 2_812_672  # Wav2Lip's audio encoder


def test_merge_is_a_softmax_weighted_sum_per_group() -> None:
    """MS-Sync Eq. 10 at known values: equal logits average the branches; a dominant logit selects its branch."""
    v = torch.tensor([[[1.0] * 6, [3.0] * 6]])  # (1, 2 branches, 6)
    assert torch.allclose(merge_branches(v, torch.zeros(1, 2, 2)), torch.full((1, 6), 2.0))
    picked = merge_branches(v, torch.tensor([[[50.0, -50.0], [-50.0, 50.0]]]))
    assert torch.allclose(picked, torch.tensor([[1.0, 1, 1, 3, 3, 3]]))  # rotation from branch 1, translation 2


def test_ms_sync_generator_is_residual_autoregressive() -> None:
    """MS-Sync Eq. 8-9 at known values: zero velocities keep x_0; a constant velocity c gives x_t = x_0 + t c."""
    ms = MSSync(TINY.ms_sync).eval()
    mel = torch.randn(2, 5, 1, 80, 16)
    x0 = torch.randn(2, 6)
    c = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.05, -0.05])
    for branch in ms.generator.branches:
        torch.nn.init.zeros_(branch[-1].weight)
        torch.nn.init.zeros_(branch[-1].bias)
    assert torch.allclose(ms.generator(x0, mel), x0[:, None].expand(2, 5, 6))
    for branch in ms.generator.branches:  # every branch says c (mask logits 0: equal weights)
        with torch.no_grad():
            branch[-1].bias[:6] = c
    steps = torch.arange(1, 6, dtype=torch.float32)[None, :, None]
    assert torch.allclose(ms.generator(x0, mel), x0[:, None] + steps * c, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------
def test_landmark_model_matches_numpy_loss_is_zero_for_equal_coeffs_and_differentiable() -> None:
    basis = random_basis()
    lm3dmm = CoeffLandmarks(basis).double()
    rng = np.random.default_rng(1)
    coeffs = np.concatenate([rng.normal(size=(5, 64)) * 0.5, rng.normal(size=(5, 3)) * 0.2,
                             rng.normal(size=(5, 3)) * 0.05, np.full((5, 1), 0.3)], 1)  # (5, 71)
    identity = TEMPLATE_68.astype(np.float64)
    ref = coefficient_landmarks(coeffs, identity, basis)  # (5, 68, 3)
    c = torch.tensor(coeffs[None, :, :70], requires_grad=True)
    ident = torch.tensor(identity[None])
    lm = lm3dmm(c, ident, torch.tensor(coeffs[None, :, 70]))
    assert torch.allclose(lm[0], torch.tensor(ref), atol=1e-10)
    al = lm3dmm.aligned(c[..., :64], ident[:, None])
    assert float(landmark_loss(al, al.detach()).detach()) == 0.0
    shifted = lm3dmm.aligned(c[..., :64] + 0.1, ident[:, None])
    loss = landmark_loss(shifted, al.detach()) + lm.pow(2).sum()
    loss.backward()
    assert c.grad is not None and torch.isfinite(c.grad).all() and c.grad[..., :64].abs().sum() > 0
    assert c.grad[..., 64:70].abs().sum() > 0  # the pose too
    # torch gradcheck on a small slice: the 3DMM is smooth in every coefficient
    small = torch.tensor(coeffs[None, :2, :70], requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: lm3dmm(x, ident, torch.tensor(coeffs[None, :2, 70])), (small,))


def test_kl_and_reparameterisation_known_values() -> None:
    zero = torch.zeros(2, 4)
    assert float(kl_divergence(zero, zero)) == 0.0
    assert math.isclose(float(kl_divergence(torch.ones(2, 4), zero)), 0.5, rel_tol=1e-6)
    log2 = torch.full((2, 4), math.log(2.0))
    assert math.isclose(float(kl_divergence(zero, log2)), 0.5 * (1.0 - math.log(2.0)), rel_tol=1e-6)
    mu, logvar, noise = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 2 * math.log(3.0)]), torch.tensor([0.5, 1.0])
    assert torch.allclose(reparameterize(mu, logvar, noise), torch.tensor([1.5, 1.0]))


def test_gan_terms_known_values() -> None:
    """MS-Sync Eq. 11-13 (hinge) and SadTalker's least-squares GAN at known scores."""
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx((0 + 1) / 2 + (0 + 0.5) / 2)
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.0)
    assert float(lsgan_discriminator_loss(torch.ones(3), torch.zeros(3))) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# SadTalker weights
# ----------------------------------------------------------------------------------------------------------------
# Keys and shapes read from SadTalker's src/audio2exp_models/networks.py, src/audio2pose_models/{cvae, res_unet,
# audio_encoder, discriminator}.py with src/config/auido2pose.yaml (layer sizes [192, 128] / [128, 192], latent 64,
# 46 classes, audio 512 -> 6).
SADTALKER_KEYS = {
    "audio2exp.audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio2exp.audio_encoder.12.conv_block.1.running_var": (512,),
    "audio2exp.mapping1.weight": (64, 577),
    "audio2pose.audio_encoder.audio_encoder.9.conv_block.0.weight": (256, 128, 3, 3),
    "audio2pose.netG.encoder.MLP.L0.weight": (128, 454),
    "audio2pose.netG.encoder.linear_logvar.weight": (64, 128),
    "audio2pose.netG.encoder.classbias": (46, 64),
    "audio2pose.netG.encoder.resunet.bridge.conv_skip.0.weight": (256, 128, 3, 3),
    "audio2pose.netG.decoder.MLP.L0.weight": (128, 262),
    "audio2pose.netG.decoder.MLP.L1.weight": (192, 128),
    "audio2pose.netG.decoder.pose_linear.weight": (6, 6),
    "audio2pose.netG.decoder.resunet.upsample_3.upsample.weight": (64, 64, 2, 1),
    "audio2pose.netG.decoder.resunet.output_layer.0.weight": (1, 32, 1, 1),
    "audio2pose.netD_motion.seq.0.conv.weight": (256, 6, 4),
    "audio2pose.netD_motion.seq.2.conv.weight": (1024, 512, 3),
    "audio2pose.netD_motion.seq.3.weight": (1, 1024, 3),
}


def sadtalker_state(model: Audio2Coeff) -> dict[str, torch.Tensor]:
    """A state dict in SadTalker's combined layout built from random tensors (plus a renderer part)."""
    gen = torch.Generator().manual_seed(5)
    state = {f"audio2exp.{k}": torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
             for k, v in model.expnet.state_dict().items()}
    for k, v in model.pose.state_dict().items():
        key = "audio_encoder.audio_encoder." + k[len("audio_encoder."):] if k.startswith("audio_encoder.") else k
        state[f"audio2pose.{key}"] = torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
    state["kp_extractor.kp.weight"] = torch.zeros(3)  # another part of the combined file: ignored
    return state


def test_sadtalker_layout_loads_strictly(tmp_path) -> None:
    model = Audio2Coeff()
    state = sadtalker_state(model)
    for key, shape in SADTALKER_KEYS.items():
        assert key in state and tuple(state[key].shape) == shape, key
    torch.save(state, tmp_path / "sadtalker.pth")
    load_sadtalker_weights(model, tmp_path / "sadtalker.pth")
    assert torch.equal(model.expnet.mapping1.weight, state["audio2exp.mapping1.weight"])
    assert torch.equal(model.pose.audio_encoder[9].conv_block[0].weight,
                       state["audio2pose.audio_encoder.audio_encoder.9.conv_block.0.weight"])
    assert torch.equal(model.pose.netD_motion.seq[3].weight, state["audio2pose.netD_motion.seq.3.weight"])
    # the older per-part .pth files (weights under "model", no prefix)
    folder = tmp_path / "parts"
    folder.mkdir()
    torch.save({"model": {k[len("audio2exp."):]: v for k, v in state.items() if k.startswith("audio2exp.")}},
               folder / "auido2exp_00300-model.pth")
    torch.save({"model": {k[len("audio2pose."):]: v for k, v in state.items() if k.startswith("audio2pose.")}},
               folder / "auido2pose_00140-model.pth")
    other = Audio2Coeff()
    load_sadtalker_weights(other, folder)
    assert torch.equal(other.pose.netG.decoder.pose_linear.weight, state["audio2pose.netG.decoder.pose_linear.weight"])
    # a wrong key or a small model fails with the keys named
    bad = dict(state)
    bad["audio2pose.netG.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"1 unexpected \[netG.extra.weight\]"):
        load_sadtalker_weights(Audio2Coeff(), tmp_path / "bad.pth")
    bad["audio2pose.lstm.weight"] = bad.pop("audio2pose.netG.extra.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="match no mapping rule"):
        load_sadtalker_weights(Audio2Coeff(), tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="other shapes"):
        load_sadtalker_weights(tiny(), tmp_path / "sadtalker.pth")
    with pytest.raises(WeightsError, match="posevae"):
        load_sadtalker_weights(tiny("ms_sync"), tmp_path / "sadtalker.pth")


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------
def test_stitch_windows_is_continuous_and_keeps_windows_away_from_overlaps() -> None:
    a, b = np.zeros((6, 1)), np.full((6, 1), 7.0)
    out = stitch_windows([(0, a), (4, b)], 10)[:, 0]
    assert np.allclose(out[:4], 0) and np.allclose(out[6:], 7)
    assert np.allclose(out[4:6], [7 / 3, 14 / 3])  # linear cross-fade: equal steps of 7/3 across the seam
    with pytest.raises(ValueError, match="gap"):
        stitch_windows([(0, a), (7, b)], 13)


@pytest.mark.parametrize("generator", ["posevae", "ms_sync"])
def test_generation_is_deterministic_for_a_seed_and_continuous_across_windows(generator: str) -> None:
    model = tiny(generator)
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(30, 1, 80, 16)).astype(np.float32)  # 29 frames after the reference: 4+ windows of 8
    ref = np.concatenate([rng.normal(size=64) * 0.1, [0.1, -0.05, 0.02, 0.01, -0.02, 0.0, 0.3, 0.5, 0.5]])
    a = generate_motion(model, mel, ref, pose_style=1, seed=3)
    assert a.shape == (30, 70) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, generate_motion(model, mel, ref, pose_style=1, seed=3))
    assert np.allclose(a[0, 64:70], ref[64:70])  # frame 0 is the reference pose
    other = generate_motion(model, mel, ref, pose_style=1, seed=4)
    assert np.array_equal(a[:, :64], other[:, :64])  # the seed only chooses the pose
    if generator == "posevae":
        assert not np.allclose(a[:, 64:], other[:, 64:])
        hard = generate_motion(model, mel, ref, pose_style=1, seed=3, overlap=0)  # SadTalker-style concatenation
        seams = [1 + 8, 1 + 16, 1 + 24]
        def jump(m: np.ndarray) -> float:
            return float(np.abs(np.diff(m[:, 64:], axis=0))[[s - 1 for s in seams]].max())
        assert jump(a) < jump(hard)  # cross-fading removes the jump between independently sampled windows
        assert np.allclose(a[1:7, 64:], hard[1:7, 64:])  # away from overlaps both are the first window itself
    else:
        assert np.array_equal(a[:, 64:], other[:, 64:])  # deterministic generator
        steps = np.abs(np.diff(a[1:, 64:], axis=0)).max(axis=1)
        seam = steps[[7, 15, 23]]  # x_9 - x_8 etc.: the next window starts from the last pose (MS-Sync Eq. 9)
        assert seam.max() <= 3 * np.median(steps) + 1e-6
    short = generate_motion(model, mel[:5], ref, seed=3)  # less audio than one window
    assert short.shape == (5, 70)

    with pytest.raises(ValueError, match="pose_style"):
        generate_motion(model, mel, ref, pose_style=7)
    with pytest.raises(ValueError, match="reference_coeffs"):
        generate_motion(model, mel, ref[:10])


@pytest.mark.parametrize("generator", ["posevae", "ms_sync"])
def test_generation_from_lazy_mel_windows_equals_the_array(generator: str) -> None:
    """`tavce animate` passes `MelWindows` (windows made on demand, long audio): same motion as the stacked array."""
    from pipeline.audio import MelWindows, wav2lip_mel
    model = tiny(generator)
    rng = np.random.default_rng(1)
    wav = (rng.normal(size=16000 * 2) * 0.1).astype(np.float32)
    mel = wav2lip_mel(wav)
    lazy = MelWindows(mel, 50)
    ref = np.concatenate([rng.normal(size=64) * 0.1, [0.1, -0.05, 0.02, 0.01, -0.02, 0.0, 0.3, 0.5, 0.5]])
    a = generate_motion(model, lazy, ref, pose_style=1, seed=3, chunk=16)
    assert np.array_equal(a, generate_motion(model, np.asarray(lazy), ref, pose_style=1, seed=3, chunk=16))


def test_multiscale_sync_loss_reaches_generated_coefficients() -> None:
    """The MS-Sync loss on landmarks made from generated coefficients gives gradients to every network."""
    model = tiny("ms_sync").train()
    basis = random_basis()
    lm3dmm = CoeffLandmarks(basis)
    loss_fn = MultiScaleSyncLoss([Syncer(SyncerConfig(motion_channels=136, hidden=4, embed_dim=4)) for _ in range(4)])
    b, t = 1, 33
    mel = torch.randn(b, t, 1, 80, 16)
    exp = model.expnet(mel, torch.zeros(b, 64), torch.zeros(b, t))
    pose = model.pose.generator(torch.zeros(b, 6), mel[:, 1:]) * 0.05
    coeffs = torch.cat([exp, torch.cat([torch.zeros(b, 1, 6), pose], 1)], -1)
    lm = lm3dmm(coeffs, torch.tensor(np.array(TEMPLATE_68), dtype=torch.float32)[None], torch.full((b, t), 0.3))
    loss_fn(torch.randn(b, 4 * t, 26), lm[..., :2].flatten(2)).backward()
    assert model.expnet.mapping1.weight.grad.abs().sum() > 0
    assert model.pose.generator.branches[0][-1].weight.grad.abs().sum() > 0
