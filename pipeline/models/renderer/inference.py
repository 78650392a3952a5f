"""Fast inference copies of the face renderer (issue 16): each optimisation is a switch of :class:`InferenceOptions`.

    fast = prepare_renderer(renderer, InferenceOptions(fold=True, fuse_spade=True, channels_last=True,
                                                       precision="bf16"))
    frames = render(fast, source_rgb, motion)            # pipeline.render; or render(renderer, ..., options=...)

:func:`prepare_renderer` never touches the trained model: it deep-copies it (after loading, so SadTalker's and our
checkpoints keep loading strictly into :class:`~pipeline.models.renderer.renderer.Renderer`) and rewrites the copy:

- ``fold``: spectral norm applied once (``W / σ`` with the stored power-iteration vectors, exactly what eval mode
  computes on every call) and every BatchNorm that follows a convolution folded into that convolution's weight and
  bias (eval-mode BatchNorm is a per-channel affine map). Exact up to float rounding (~1e-6).
- ``fuse_spade``: per SPADE residual block, the shared 3x3 convolutions of its two or three SPADEs (same input, the
  resized condition map) become one convolution, and each SPADE's γ and β convolutions one; where the condition is a
  nearest-upsampled map (the decoder's upsampling blocks), the 3x3 convolution runs on the small map as s² phase
  convolutions of 2x2 taps followed by a pixel shuffle (2.25x fewer multiply-accumulates, the same result: a 3x3
  window over an s-times nearest-upsampled map touches at most 2x2 distinct source pixels). Exact up to rounding.
- ``channels_last``: NHWC / NDHWC memory formats for the convolution weights and the activations of the generator.
- ``precision``: ``bf16`` (CPU with AVX-512 BF16, or CUDA) or ``fp16`` (CUDA only) for the heavy per-frame networks —
  the dense-motion hourglass with its mask and occlusion convolutions, ``third``/``fourth`` and the SPADE decoder —
  with weights cast once and inputs cast at their entry. Keypoints, sparse motions, the first ``grid_sample``, the
  softmax over candidates, the deformation, the warp of the volume and the final sigmoid stay in fp32 (a bf16
  sampling coordinate would be off by up to 1/8 voxel). The source encoding (once per video) stays in fp32.
- ``compile``: ``torch.compile`` of the per-frame ``generate`` (compiled on the first call; the compile time is part
  of that call, which ``benchmarks/render_fps.py`` reports separately).
- ``cuda_graphs`` (CUDA only): ``generate`` captured once per batch size as a CUDA graph and replayed.

The source (2D feature, canonical and source keypoints) is encoded once per video by ``render()`` in every mode, and
frames are batched there (``batch_size``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer.blocks import (
    SPADE,
    Decoder3d,
    DownBlock2d,
    DownBlock3d,
    ResBlock3d,
    ResBottleneck,
    SameBlock2d,
    SPADEResnetBlock,
    UpBlock3d,
)
from pipeline.models.renderer.dense_motion import DenseMotionNetwork
from pipeline.models.renderer.generator import SPADEDecoder
from pipeline.models.renderer.head_pose import HeadPoseExpressionEstimator
from pipeline.models.renderer.keypoints import HeadMotion
from pipeline.models.renderer.renderer import Renderer, RendererOutput

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceOptions:
    """Switches of the inference copy (all off = the trained model's own arithmetic, in a copy).

    Attributes:
        fold: spectral norm and BatchNorm folded into the convolution weights.
        fuse_spade: SPADE convolutions fused per residual block, sub-pixel convolution of upsampled conditions.
        channels_last: NHWC / NDHWC memory formats.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (fp16 on CUDA only) for the heavy per-frame networks.
        compile: ``torch.compile`` the per-frame generation.
        cuda_graphs: replay ``generate`` as a CUDA graph per batch size (CUDA only).
    """

    fold: bool = False
    fuse_spade: bool = False
    channels_last: bool = False
    precision: Precision = "fp32"
    compile: bool = False
    cuda_graphs: bool = False

    def validate(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {self.precision!r}")
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (CPU convolutions have no fast fp16 path); "
                             "use 'bf16' on CPU")
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {device}")

    @classmethod
    def fastest(cls, device: torch.device | str = "cpu") -> InferenceOptions:
        """The measured-best combination without compilation for `device` (benchmarks/render_fps.py; decisions.md,
        issue 16). CPU: fold, fuse_spade, and bf16 where the CPU has AVX-512 BF16 (channels-last is slower there:
        the convolutions gain less than InstanceNorm, concatenation and casts lose); CUDA: the same in fp16 with
        channels-last and CUDA graphs."""
        device = torch.device(device)
        if device.type == "cuda":
            return cls(fold=True, fuse_spade=True, channels_last=True, precision="fp16", cuda_graphs=True)
        bf16 = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()
        return cls(fold=True, fuse_spade=True, precision="bf16" if bf16 else "fp32")


# ----------------------------------------------------------------------------------------------------------------
# Folding: spectral norm and BatchNorm into convolutions
# ----------------------------------------------------------------------------------------------------------------
# (conv, following BatchNorm) attribute pairs per block type: the BatchNorm acts on the conv's output (possibly with
# nothing in between), so W' = W·s, b' = (b − μ)·s + β with s = γ / sqrt(σ² + ε). ResBlock3d is pre-activation:
# only norm2 follows a convolution (conv1); norm1 acts on the residual stream and stays.
_FOLD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    SameBlock2d: (("conv", "norm"),),
    DownBlock2d: (("conv", "norm"),),
    DownBlock3d: (("conv", "norm"),),
    UpBlock3d: (("conv", "norm"),),
    Decoder3d: (("conv", "norm"),),
    ResBlock3d: (("conv1", "norm2"),),
    ResBottleneck: (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"), ("skip", "norm4")),
    DenseMotionNetwork: (("compress", "norm"),),
    HeadPoseExpressionEstimator: (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"), ("conv4", "norm4"),
                                  ("conv5", "norm5")),
}


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold eval-mode `bn` (applied to `conv`'s output) into `conv`'s weight and bias, in place."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("fold_batchnorm: the BatchNorm has no running statistics (eval mode needs them)")
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (Cout,)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))  # (Cout, Cin, k...)
    new_bias = bias * scale + shift  # (Cout,)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def apply_spectral_norm(model: nn.Module) -> nn.Module:
    """Every hook-based spectral norm of `model` (the SPADE blocks) applied once, in place: ``weight = weight_orig /
    σ(u, v)`` with the stored vectors, which is what eval mode computes on every call. Returns `model`."""
    for module in list(model.modules()):
        for child in list(module.children()):
            if hasattr(child, "weight_orig"):
                nn.utils.remove_spectral_norm(child)
    return model


def fold_renderer(model: nn.Module) -> nn.Module:
    """Spectral norm applied once and BatchNorm folded, in place on `model` (pass a copy): returns `model`."""
    apply_spectral_norm(model)
    for module in list(model.modules()):
        for conv_name, bn_name in _FOLD_PAIRS.get(type(module), ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if conv is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                continue  # e.g. ResBottleneck without a strided skip, or already folded
            fold_batchnorm(conv, bn)
            setattr(module, bn_name, nn.Identity())
    return model


# ----------------------------------------------------------------------------------------------------------------
# SPADE fusion
# ----------------------------------------------------------------------------------------------------------------
def _concat_convs(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """One convolution whose output channels are the given convolutions' outputs, concatenated in order."""
    first = convs[0]
    weight = torch.cat([c.weight for c in convs], dim=0)  # (ΣCout, Cin, k, k)
    fused = nn.Conv2d(first.in_channels, weight.shape[0], first.kernel_size, padding=first.padding,
                      bias=first.bias is not None).to(weight)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if first.bias is not None:
            fused.bias.copy_(torch.cat([c.bias for c in convs]))
    return fused


def _phase_taps(scale: int) -> torch.Tensor:
    """(s, 2, 3) 0/1 matrices A_p: along one axis, output phase p of a 3x3 conv (taps o = -1, 0, 1) over an s-times
    nearest-upsampled map reads source pixel i + ⌊(p + o) / s⌋; tap t of the phase's 2-tap window sits at offset
    start_p + t, start_p = -1 for p = 0 and 0 otherwise."""
    a = torch.zeros(scale, 2, 3)
    for p in range(scale):
        start = -1 if p == 0 else 0
        for o in (-1, 0, 1):
            a[p, (p + o) // scale - start, o + 1] = 1.0
    return a


class UpsampledConv2d(nn.Module):
    """``conv(F.interpolate(x, scale_factor=s, mode='nearest'))`` for a 3x3, padding-1 conv, computed on the small map:
    s² phase convolutions of 2x2 taps (one conv with s²·Cout outputs), cropped per phase and pixel-shuffled."""

    def __init__(self, conv: nn.Conv2d, scale: int) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or scale < 2:
            raise ValueError("UpsampledConv2d needs a 3x3 conv with padding 1, stride 1 and a scale >= 2")
        self.scale = scale
        self.cout = conv.out_channels
        a = _phase_taps(scale).to(conv.weight)  # (s, 2, 3)
        # Phase (py, px) kernel: A_py · W · A_pxᵀ per (out, in) channel pair.
        w = torch.einsum("ptv,oivw,quw->opqitu", a, conv.weight.detach(), a)  # (Cout, s, s, Cin, 2, 2)
        self.register_buffer("weight", w.reshape(self.cout * scale * scale, conv.in_channels, 2, 2).contiguous())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(self.cout).to(conv.weight)
        self.register_buffer("bias", bias.repeat_interleave(scale * scale))  # (Cout·s²,)
        self.starts = [0 if p == 0 else 1 for p in range(scale)]  # window start + 1 = crop offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.scale
        full = F.conv2d(x, self.weight, self.bias, padding=1)  # (B, Cout·s², h+1, w+1)
        full = full.view(b, self.cout, s, s, h + 1, w + 1)
        phases = [full[:, :, py, px, self.starts[py]:self.starts[py] + h, self.starts[px]:self.starts[px] + w]
                  for py in range(s) for px in range(s)]  # s² × (B, Cout, h, w)
        out = torch.stack(phases, dim=2).reshape(b, self.cout * s * s, h, w)  # (B, Cout·s², h, w)
        return F.pixel_shuffle(out, s)  # (B, Cout, s·h, s·w)


class FusedSPADEResnetBlock(nn.Module):
    """Inference form of :class:`~pipeline.models.renderer.blocks.SPADEResnetBlock` (spectral norm already applied):
    the shared convs of its SPADEs as one conv (on the small condition map when it is upsampled), γ‖β as one conv
    per SPADE. Same outputs as the block it is built from, up to float rounding."""

    def __init__(self, block: SPADEResnetBlock, scale: int = 1) -> None:
        """Args:
            block: the block, spectral norm applied.
            scale: s, the condition map's upsampling factor at this block (its input side / the map's side); the
                sub-pixel form is used for s >= 2 and whenever the sizes are exactly s times the map's.
        """
        super().__init__()
        if any(hasattr(c, "weight_orig") for c in block.modules()):
            raise ValueError("FusedSPADEResnetBlock: apply spectral norm first (fold_renderer)")
        self.learned_shortcut = block.learned_shortcut
        spades: list[SPADE] = [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])
        self.hidden = spades[0].mlp_shared[0].out_channels
        self.shared = _concat_convs([s.mlp_shared[0] for s in spades])  # L -> n·hidden
        self.shared_up = UpsampledConv2d(self.shared, scale) if scale >= 2 else None
        self.scale = scale
        self.affine = nn.ModuleList(_concat_convs([s.mlp_gamma, s.mlp_beta]) for s in spades)  # hidden -> 2C each
        self.conv_0, self.conv_1 = block.conv_0, block.conv_1
        self.conv_s = block.conv_s if block.learned_shortcut else None

    def _shared(self, seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = seg.shape[2:]
        if self.shared_up is not None and size == (self.scale * h, self.scale * w):
            return F.relu(self.shared_up(seg))  # (B, n·hidden, H, W)
        seg = F.interpolate(seg, size=size, mode="nearest")  # (B, L, H, W)
        return F.relu(self.shared(seg))  # (B, n·hidden, H, W)

    def _modulate(self, x: torch.Tensor, actv: torch.Tensor, i: int) -> torch.Tensor:
        gamma, beta = self.affine[i](actv[:, i * self.hidden:(i + 1) * self.hidden]).chunk(2, dim=1)  # (B, C, H, W)
        normalized = F.instance_norm(x)  # (B, C, H, W), parameter-free
        return torch.addcmul(beta, normalized, 1 + gamma)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        actv = self._shared(seg, tuple(x.shape[2:]))  # (B, n·hidden, H, W)
        x_s = self.conv_s(self._modulate(x, actv, 2)) if self.learned_shortcut else x  # (B, Cout, H, W)
        dx = self.conv_0(F.leaky_relu(self._modulate(x, actv, 0), 0.2))  # (B, Cmid, H, W)
        dx = self.conv_1(F.leaky_relu(self._modulate(dx, actv, 1), 0.2))  # (B, Cout, H, W)
        return x_s + dx


def fuse_spade(model: nn.Module) -> nn.Module:
    """Replace every SPADEResnetBlock of `model` (spectral norm applied) by a FusedSPADEResnetBlock, in place. The
    decoder's ``up_i`` blocks see the condition map upsampled 2^(i+1) times (SPADEDecoder.logits)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SPADEResnetBlock):
                scale = 2 ** (int(name[len("up_"):]) + 1) if isinstance(module, SPADEDecoder) and \
                    name.startswith("up_") else 1
                setattr(module, name, FusedSPADEResnetBlock(child, scale))
    return model


# ----------------------------------------------------------------------------------------------------------------
# Memory format and precision
# ----------------------------------------------------------------------------------------------------------------
def _to_channels_last(model: nn.Module) -> None:
    """Convolution weights to NHWC / NDHWC (parameters and buffers, e.g. the sub-pixel weights)."""
    for module in model.modules():
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
            if fmt is not None and isinstance(module, (nn.Conv2d, nn.Conv3d, UpsampledConv2d)):
                t.data = t.data.contiguous(memory_format=fmt)


def _entry_hook(dtype: torch.dtype, channels_last: bool) -> Callable:
    """Forward pre-hook: cast floating inputs to `dtype` and (optionally) to channels-last, at a network's entry."""
    def hook(module: nn.Module, args: tuple) -> tuple:
        out = []
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                a = a.to(dtype)
                if channels_last and a.dim() in (4, 5):
                    a = a.contiguous(memory_format=torch.channels_last if a.dim() == 4 else torch.channels_last_3d)
            out.append(a)
        return tuple(out)
    return hook


class AvgPoolHW(nn.Module):
    """2x2 average pool over H and W of a (B, C, D, H, W) volume (DownBlock3d's ``AvgPool3d((1, 2, 2))``) for dtypes
    and layouts whose ``avg_pool3d`` PyTorch's CPU build lacks (bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[3:]
        return x.unflatten(3, (h // 2, 2)).unflatten(5, (w // 2, 2)).mean(dim=(4, 6))  # (B, C, D, H/2, W/2)


def _float_output_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the network's output back to contiguous fp32 (softmax, sigmoid and sampling stay fp32)."""
    return output.float().contiguous()


# ----------------------------------------------------------------------------------------------------------------
# The inference copy
# ----------------------------------------------------------------------------------------------------------------
class InferenceRenderer(nn.Module):
    """A prepared, frozen copy of a Renderer with the interface ``render()`` uses (``cfg``, ``cerl``,
    ``encode_source``, ``canonical_keypoints``, ``estimate_motion``, ``feature_volume``, ``generate``).
    Build it with :func:`prepare_renderer`."""

    def __init__(self, model: Renderer, options: InferenceOptions, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.device = device
        self.cfg = model.cfg
        self.cerl = model.cerl
        self._generate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], RendererOutput] = self._generate_eager
        if options.compile:
            self._generate = torch.compile(self._generate_eager, dynamic=False)
        self._graphs: dict[tuple[int, ...], tuple] = {}

    def encode_source(self, source: torch.Tensor) -> torch.Tensor:
        return self.model.encode_source(source)  # (B, C*D, h, w)

    def canonical_keypoints(self, source: torch.Tensor) -> torch.Tensor:
        return self.model.canonical_keypoints(source)  # (B, K, 3)

    def estimate_motion(self, image: torch.Tensor) -> HeadMotion:
        return self.model.estimate_motion(image)

    def feature_volume(self, f: torch.Tensor, relation: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.feature_volume(f, relation)  # (B, C, D, h, w)

    def _generate_eager(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
                        ) -> RendererOutput:
        return self.model.generate(volume, kp_source, kp_driving)

    def generate(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> RendererOutput:
        """As :meth:`Renderer.generate`; the prediction is fp32 whatever the precision."""
        if self.options.cuda_graphs:
            return self._graph_generate(volume, kp_source, kp_driving)
        return self._generate(volume, kp_source, kp_driving)

    def _graph_generate(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
                        ) -> RendererOutput:
        """CUDA graph per input shape: static input buffers, captured after a warm-up on a side stream."""
        key = tuple(volume.shape)
        if key not in self._graphs:
            static = [volume.clone(), kp_source.clone(), kp_driving.clone()]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up (cuDNN autotuning, allocations) outside the graph
                    self._generate(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._generate(*static)
            self._graphs[key] = (graph, static, out)
        graph, static, out = self._graphs[key]
        for buf, value in zip(static, (volume, kp_source, kp_driving)):
            buf.copy_(value)
        graph.replay()
        return RendererOutput(prediction=out.prediction.clone(), occlusion=None if out.occlusion is None
                              else out.occlusion.clone(), deformation=out.deformation.clone(), mask=out.mask.clone())


def prepare_renderer(renderer: Renderer, options: InferenceOptions | None = None,
                     device: torch.device | str = "cpu") -> InferenceRenderer:
    """A frozen inference copy of `renderer` on `device` with `options` applied; `renderer` is left as it is.

    Args:
        renderer: a (loaded) Renderer; its weights are copied, never modified.
        options: the switches; None = :meth:`InferenceOptions.fastest` for `device`.
        device: where the copy lives and computes.

    Raises:
        ValueError: for options the device does not support (fp16 or CUDA graphs without CUDA).
    """
    device = torch.device(device)
    options = InferenceOptions.fastest(device) if options is None else options
    options.validate(device)
    model = copy.deepcopy(renderer).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if options.fold:
        fold_renderer(model)
    if options.fuse_spade:
        fuse_spade(apply_spectral_norm(model))  # fusing needs the spectral norm applied
    gen = model.generator
    dm = gen.dense_motion_network
    dtype = _DTYPES[options.precision]
    # The heavy per-frame networks: cast once; their inputs are cast at entry and the logits they feed to softmax /
    # sigmoid come back in fp32.
    heavy_entries = [dm.hourglass, gen.third, gen.decoder]
    heavy = [dm.hourglass, dm.mask, gen.third, gen.fourth, gen.decoder] + ([dm.occlusion] if dm.occlusion is not None else [])
    if dtype != torch.float32:
        for m in heavy:
            m.to(dtype)
        if device.type == "cpu":
            for m in dm.hourglass.modules():
                if isinstance(m, DownBlock3d):
                    m.pool = AvgPoolHW()
        dm.mask.register_forward_hook(_float_output_hook)
        if dm.occlusion is not None:
            dm.occlusion.register_forward_hook(_float_output_hook)
        gen.decoder.conv_img.register_forward_hook(_float_output_hook)
    if options.channels_last:
        _to_channels_last(gen)
    if dtype != torch.float32 or options.channels_last:
        for m in heavy_entries:
            m.register_forward_pre_hook(_entry_hook(dtype, options.channels_last))
        if dtype == torch.float32:  # channels-last only: the mask / occlusion outputs back to the default layout
            dm.mask.register_forward_hook(_float_output_hook)
            if dm.occlusion is not None:
                dm.occlusion.register_forward_hook(_float_output_hook)
            gen.decoder.conv_img.register_forward_hook(_float_output_hook)
    return InferenceRenderer(model, options, device)


def frame_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames against reference uint8 frames of the same shape, over all pixels; inf if equal."""
    if frames.shape != reference.shape or frames.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError(f"frame_psnr: expected two uint8 arrays of one shape, got {frames.dtype} {frames.shape} and "
                         f"{reference.dtype} {reference.shape}")
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


__all__ = ["AvgPoolHW", "FusedSPADEResnetBlock", "InferenceOptions", "InferenceRenderer", "UpsampledConv2d",
           "apply_spectral_norm", "fold_batchnorm", "fold_renderer", "frame_psnr", "fuse_spade", "prepare_renderer"]
