"""Inference copies of the renderer (pipeline/models/renderer/inference.py, issue 16): every switch against the fp32
reference — folding and fusion exact to float rounding, bf16 / fp16 within a PSNR bound — and the trained model
left untouched. Tiny dimensions; the full-size speed is benchmarks/render_fps.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer import (HeadMotion, Renderer,
                                      transform_keypoints)
from pipeline.models.renderer.blocks import SPADEResnetBlock
from pipeline.models.renderer.inference import (AvgPoolHW, FusedSPADEResnetBlock, InferenceOptions,
                                                PointwiseShiftConv2d, UpsampledConv2d, apply_spectral_norm,
                                                fold_batchnorm, frame_psnr, prepare_renderer)
from pipeline.render import render, source_tensor

from tests.test_render import D, K, S, TINY  # the tiny renderer of the render() tests
# Random SPADE decoders amplify rounding (decisions.md, issue 16): this tiny random model measures 34 dB in bf16; the
# trained renderer 57-59 dB (benchmarks/render_fps.py --checkpoint). The bound catches a wrong cast or layout (<20 dB).
BF16_MIN_PSNR_DB = 30.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters as after training (defaults would make folding trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    torch.manual_seed(0)
    model = Renderer(TINY)
    _randomise_batchnorm(model, 1)
    with torch.no_grad():
        model.cerl.conv1.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(S, S, 3), dtype=np.uint8)


def _motion(frames: int, seed: int = 1) -> HeadMotion:
    g = torch.Generator().manual_seed(seed)
    return HeadMotion(yaw=torch.randn(frames, 66, generator=g), pitch=torch.randn(frames, 66, generator=g),
                      roll=torch.randn(frames, 66, generator=g), t=0.05 * torch.randn(frames, 3, generator=g),
                      exp=0.05 * torch.randn(frames, K, 3, generator=g))


def _generate_inputs(model, source: np.ndarray, frames: int = 3):
    src = source_tensor(source, S)
    with torch.inference_mode():
        volume = model.feature_volume(model.encode_source(src), None)  # (1, C, D, h, w)
        kp_c = model.canonical_keypoints(src)  # (1, K, 3)
        kp_s = transform_keypoints(kp_c, model.estimate_motion(src))  # (1, K, 3)
        kp_d = transform_keypoints(kp_c.expand(frames, -1, -1), _motion(frames))  # (T, K, 3)
    return volume.expand(frames, -1, -1, -1, -1), kp_s.expand(frames, -1, -1), kp_d


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    for conv, bn, x in ((nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), torch.randn(2, 3, 8, 8)),
                        (nn.Conv3d(3, 5, 3, padding=1, bias=False), nn.BatchNorm3d(5), torch.randn(2, 3, 4, 6, 6))):
        _randomise_batchnorm(bn, 2)
        bn.eval()
        expected = bn(conv(x))
        fold_batchnorm(conv, bn)
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upsampled_conv_equals_conv_of_nearest_upsampling(scale):
    torch.manual_seed(scale)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 5)  # non-square: rows and columns are handled separately
    expected = conv(F.interpolate(x, scale_factor=scale, mode="nearest"))  # (2, 7, 6s, 5s)
    torch.testing.assert_close(UpsampledConv2d(conv, scale)(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cin, cout, scale", [(8, 8, 1), (8, 4, 2), (8, 4, 4)])
def test_fused_spade_block_matches_the_block(cin, cout, scale):
    torch.manual_seed(0)
    block = SPADEResnetBlock(cin, cout, label_channels=6, hidden=5).eval()  # spectral norm on
    x, seg = torch.randn(2, cin, 4 * scale, 4 * scale), torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        expected = block(x, seg)
        fused = FusedSPADEResnetBlock(apply_spectral_norm(block), scale)
        torch.testing.assert_close(fused(x, seg), expected, atol=1e-5, rtol=1e-4)
        cl = torch.channels_last
        torch.testing.assert_close(fused(x.contiguous(memory_format=cl), seg.contiguous(memory_format=cl)), expected,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", [InferenceOptions(fold=True), InferenceOptions(fuse_spade=True),
                                     InferenceOptions(pointwise_occlusion=True), InferenceOptions(channels_last=True),
                                     InferenceOptions(fold=True, fuse_spade=True, pointwise_occlusion=True,
                                                      channels_last=True)],
                         ids=["fold", "fuse_spade", "pointwise_occlusion", "channels_last", "all_fp32"])
def test_fp32_switches_match_the_reference(renderer, source, options):
    fast = prepare_renderer(renderer, options)
    volume, kp_s, kp_d = _generate_inputs(renderer, source)
    with torch.inference_mode():
        expected = renderer.generate(volume, kp_s, kp_d)
        got = fast.generate(volume, kp_s, kp_d)
        # the source side (encoder, keypoints, head pose) too, where folding changes the weights
        torch.testing.assert_close(fast.feature_volume(fast.encode_source(source_tensor(source, S))),
                                   volume[:1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.prediction, expected.prediction, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.deformation, expected.deformation, atol=1e-5, rtol=1e-4)
    ref = render(renderer, source, _motion(3), batch_size=2)
    assert np.abs(render(renderer, source, _motion(3), batch_size=2, options=options).astype(int) - ref).max() <= 1


def test_bf16_is_within_the_psnr_bound_and_returns_fp32(renderer, source):
    options = InferenceOptions(fold=True, fuse_spade=True, channels_last=True, precision="bf16")
    fast = prepare_renderer(renderer, options)
    volume, kp_s, kp_d = _generate_inputs(renderer, source)
    with torch.inference_mode():
        out = fast.generate(volume, kp_s, kp_d)
    assert out.prediction.dtype == torch.float32 and out.deformation.dtype == torch.float32
    assert out.prediction.is_contiguous()
    ref = render(renderer, source, _motion(4), batch_size=2)
    frames = render(fast, source, _motion(4), batch_size=2)
    assert frame_psnr(frames, ref) >= BF16_MIN_PSNR_DB


def test_the_trained_renderer_is_untouched(renderer, source):
    before = {k: v.clone() for k, v in renderer.state_dict().items()}
    prepare_renderer(renderer, InferenceOptions(fold=True, fuse_spade=True, channels_last=True, precision="bf16"))
    after = renderer.state_dict()
    assert after.keys() == before.keys()  # spectral-norm keys (weight_orig, weight_u, weight_v) and BatchNorms stay
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert all(p.is_contiguous() for p in renderer.parameters())  # no channels-last leaked into the trained model


def test_render_accepts_a_prepared_copy_and_rejects_options_twice(renderer, source):
    fast = prepare_renderer(renderer, InferenceOptions(fold=True))
    a = render(fast, source, _motion(2))
    b = render(renderer, source, _motion(2), options=InferenceOptions(fold=True))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="options"):
        render(fast, source, _motion(2), options=InferenceOptions())


def test_cerl_relation_works_with_the_fast_path(renderer, source):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(3, D, generator=g)
    relation = 0.5 * f[:, :, None] * f[:, None, :]  # (T, D, D)
    ref = render(renderer, source, _motion(3), relation=relation, batch_size=2)
    got = render(renderer, source, _motion(3), relation=relation, batch_size=2,
                 options=InferenceOptions(fold=True, fuse_spade=True))
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_device_only_options_are_refused_on_cpu(renderer):
    with pytest.raises(ValueError, match="fp16"):
        prepare_renderer(renderer, InferenceOptions(precision="fp16"))
    with pytest.raises(ValueError, match="cuda_graphs"):
        prepare_renderer(renderer, InferenceOptions(cuda_graphs=True))
    with pytest.raises(ValueError, match="precision"):
        prepare_renderer(renderer, InferenceOptions(precision="int8"))


def test_frame_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    assert frame_psnr(a, b) == float("inf")
    b[0, 0, 0, 0] = 255  # MSE = 255² / 96
    assert frame_psnr(a, b) == pytest.approx(10 * np.log10(96))


@pytest.mark.requires_cuda
def test_cuda_fp16_graphs_match_the_fp32_reference(renderer, source):
    ref = render(renderer, source, _motion(5), batch_size=2, device="cuda")
    options = InferenceOptions(fold=True, fuse_spade=True, channels_last=True, precision="fp16", cuda_graphs=True)
    fast = prepare_renderer(renderer, options, "cuda")
    first = render(fast, source, _motion(5), batch_size=2)  # captures graphs for batch 2 and 1
    again = render(fast, source, _motion(5), batch_size=2)  # replays them
    np.testing.assert_array_equal(first, again)
    assert frame_psnr(first, ref) >= BF16_MIN_PSNR_DB
    bf16 = render(renderer, source, _motion(5), batch_size=2, device="cuda",
                  options=InferenceOptions(fold=True, fuse_spade=True, precision="bf16"))
    assert frame_psnr(bf16, ref) >= BF16_MIN_PSNR_DB


@pytest.mark.slow
def test_compiled_generate_matches_eager(renderer, source):
    """torch.compile of the per-frame generation (inductor; tens of seconds to compile on this CPU, cached after)."""
    options = InferenceOptions(fold=True, fuse_spade=True, compile=True)
    fast = prepare_renderer(renderer, options)
    eager = prepare_renderer(renderer, InferenceOptions(fold=True, fuse_spade=True))
    volume, kp_s, kp_d = _generate_inputs(renderer, source, frames=2)
    with torch.inference_mode():
        expected = eager.generate(volume, kp_s, kp_d).prediction
        got = fast.generate(volume, kp_s, kp_d).prediction
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_shift_conv_equals_the_single_output_conv(dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 1, 7, padding=3)
    x = torch.randn(2, 6, 9, 11)  # smaller than the kernel's reach on one side: borders everywhere
    expected = conv(x)
    fast = PointwiseShiftConv2d(conv).to(dtype)
    got = fast(x.to(dtype))
    assert got.dtype == torch.float32 and got.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("scale", [4, 5])
def test_upsampled_conv_computes_each_phase_type_once(scale):
    conv = nn.Conv2d(3, 2, 3, padding=1)
    up = UpsampledConv2d(conv, scale)
    # 3 types per axis (first, middle phases, last): 9 kernels of 2x2, 2x1, 1x2, 1x1 taps, 25 taps in all
    kernels = [getattr(up, f"kernel_{i}") for i in range(up.kernels)]
    assert len(kernels) == 9 and sum(k.shape[2] * k.shape[3] for k in kernels) == 25


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "strided"])
def test_avgpool_hw_matches_avg_pool3d_in_every_layout(layout):
    x = torch.randn(2, 3, 4, 6, 8)
    expected = F.avg_pool3d(x, (1, 2, 2))
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "strided":
        x = x.transpose(3, 4).contiguous().transpose(3, 4)
    got = AvgPoolHW()(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    if layout == "channels_last_3d":  # stays NDHWC: no copy back for the next convolution
        assert got.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("scale", [2, 4])
def test_upsampled_conv_keeps_channels_last(scale):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 5)
    expected = conv(F.interpolate(x, scale_factor=scale, mode="nearest"))
    got = UpsampledConv2d(conv, scale)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if scale > 2:  # the phase types are written straight into an NHWC map
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_keep_freed_memory_is_opt_out_and_idempotent():
    code = ("import os, sys; from pipeline.allocator import keep_freed_memory, malloc_tuned; "
            "a = keep_freed_memory(); b = keep_freed_memory(); "
            "import torch; x = torch.ones(64 * 2**20 // 4); del x; print(a, b, malloc_tuned())")
    root = Path(__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items() if k != "TAVCE_MALLOC"}  # conftest sets it for this process
    for env, expected in (({}, "True True True"), ({"TAVCE_MALLOC": "default"}, "False False False")):
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**base, **env}, capture_output=True,
                             text=True, check=True).stdout.split()
        assert " ".join(out) == (expected if sys.platform.startswith("linux") else "False False False")
