"""Fast inference copies of the face renderer (issue 16): each optimisation is a switch of :class:`InferenceOptions`.

    fast = prepare_renderer(renderer, InferenceOptions(fold=True, fuse_spade=True, pointwise_occlusion=True,
                                                       channels_last=True, precision="bf16"))
    frames = render(fast, source_rgb, motion)            # pipeline.render; or render(renderer, ..., options=...)

:func:`prepare_renderer` never touches the trained model: it deep-copies it (after loading, so SadTalker's and our
checkpoints keep loading strictly into :class:`~pipeline.models.renderer.renderer.Renderer`) and rewrites the copy:

- ``fold``: spectral norm applied once (``W / σ`` with the stored power-iteration vectors, exactly what eval mode
  computes on every call) and every BatchNorm that follows a convolution folded into that convolution's weight and
  bias (eval-mode BatchNorm is a per-channel affine map). Exact up to float rounding (~1e-6).
- ``fuse_spade``: per SPADE residual block, the shared 3x3 convolutions of its two or three SPADEs (same input, the
  resized condition map) become one convolution, and each SPADE's γ and β convolutions one, with the 1 of
  ``1 + γ`` folded into γ's bias. Where the condition is a nearest-upsampled map (the decoder's upsampling blocks),
  the 3x3 convolution runs on the small map: a 3x3 window over an s-times nearest-upsampled map touches at most 2x2
  distinct source pixels, and along each axis the s output phases read the small map in only three distinct ways
  (first phase, middle phases, last phase), so s = 2 takes 4 convolutions of 2x2 taps (2.25x fewer
  multiply-accumulates) and s = 4 nine convolutions of 25 taps in all (5.8x fewer than on the upsampled map). The
  block input's InstanceNorm is computed once for norm_0 and the shortcut's norm_s, and the learned shortcut's 1x1
  convolution is composed with norm_s's β convolution (``conv_s(n·(1 + γ_s) + β_s) = conv_s(n·(1 + γ_s)) +
  (conv_s ∘ β_s)(actv)``: a 3x3 conv to the block's fewer output channels, 4x fewer multiply-accumulates for that
  term in the last block). Exact up to rounding.
- ``pointwise_occlusion``: the dense-motion occlusion head (one output channel, 7x7 over 1792 channels) as a 1x1
  convolution to its 49 taps and a shifted sum: oneDNN runs single-output convolutions far below its peak. Exact up
  to rounding.
- ``channels_last``: NHWC / NDHWC memory formats for the convolution weights and the activations of the generator;
  the SPADE InstanceNorms run as GroupNorm (one channel per group), the hourglass pooling as ``avg_pool2d`` on the
  depth slices and the sub-pixel phases are written straight into an NHWC map, so nothing is copied back to NCHW.
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
        pointwise_occlusion: the occlusion head's single-output 7x7 conv as a 1x1 conv to 49 maps + shifted sum.
        channels_last: NHWC / NDHWC memory formats.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (fp16 on CUDA only) for the heavy per-frame networks.
        compile: ``torch.compile`` the per-frame generation.
        cuda_graphs: replay ``generate`` as a CUDA graph per batch size (CUDA only).
    """

    fold: bool = False
    fuse_spade: bool = False
    pointwise_occlusion: bool = False
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
        issue 16). CPU: fold, fuse_spade, pointwise_occlusion and channels-last (NHWC is oneDNN's native layout:
        its convolutions run 5-20 % faster once the norms, pooling and sub-pixel writes stay in NHWC too), in bf16
        where the CPU has AVX-512 BF16. CUDA: the same exact switches with fp16, channels-last and CUDA graphs."""
        device = torch.device(device)
        if device.type == "cuda":
            return cls(fold=True, fuse_spade=True, pointwise_occlusion=True, channels_last=True, precision="fp16",
                       cuda_graphs=True)
        bf16 = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()
        return cls(fold=True, fuse_spade=True, pointwise_occlusion=True, channels_last=True,
                   precision="bf16" if bf16 else "fp32")


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


def _axis_types(scale: int) -> list[tuple[int, torch.Tensor, list[int]]]:
    """Along one axis, the distinct ways a 3x3 conv (taps o = -1, 0, 1) over an s-times nearest-upsampled map reads the
    small map. Output phase p (position s·i + p) reads source pixels i + ⌊(p + o) / s⌋: phase 0 reads i - 1 and i
    (2 taps), the last phase i and i + 1 (2 taps), and every phase between them only i (1 tap, all three weights
    summed). Returns per type (first source offset, the (taps, 3) 0/1 matrix A mapping the 3 conv taps onto the
    type's source taps, the phases of that type)."""
    types: dict[tuple[int, ...], list[int]] = {}
    for p in range(scale):
        types.setdefault(tuple((p + o) // scale for o in (-1, 0, 1)), []).append(p)
    out = []
    for offsets, phases in types.items():
        first = min(offsets)
        a = torch.zeros(max(offsets) - first + 1, 3)
        for t, off in enumerate(offsets):
            a[off - first, t] = 1.0
        out.append((first, a, phases))
    return out


class UpsampledConv2d(nn.Module):
    """``conv(F.interpolate(x, scale_factor=s, mode='nearest'))`` for a 3x3, padding-1 conv, computed on the small map.

    Along each axis the s output phases read the small map in at most three distinct ways (:func:`_axis_types`:
    phase 0 two taps, the last phase two taps, the phases between one tap). s = 2: the 4 phase convolutions of 2x2
    taps run as one convolution with 4·Cout outputs, pixel-shuffled (2.25x fewer multiply-accumulates than the conv
    on the upsampled map). s >= 3: one convolution per pair of types (9: 2x2, 2x1, 1x2 and 1x1 taps, 25 taps for
    s = 4 instead of 16 phases × 4 = 64, 5.8x fewer than the 9·16 of the upsampled map), each written to the phases
    of its type. Exact up to float rounding."""

    def __init__(self, conv: nn.Conv2d, scale: int) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or scale < 2:
            raise ValueError("UpsampledConv2d needs a 3x3 conv with padding 1, stride 1 and a scale >= 2")
        self.scale = scale
        self.cout = conv.out_channels
        weight = conv.weight.detach()  # (Cout, Cin, 3, 3)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(self.cout).to(weight)
        types = _axis_types(scale)
        self.types = [(first, phases) for first, _, phases in types]
        # Type pair (ty, tx) kernel: A_ty · W · A_txᵀ per (out, in) channel pair, (Cout, Cin, ny, nx).
        kernels = [torch.einsum("tv,oivw,uw->oitu", ay.to(weight), weight, ax.to(weight))
                   for _, ay, _ in types for _, ax, _ in types]
        if scale == 2:  # 4 kernels of 2x2 taps: one conv, output channels ordered (Cout, py, px) for pixel_shuffle
            w = torch.stack(kernels, dim=1)  # (Cout, 4, Cin, 2, 2)
            self.register_buffer("weight", w.reshape(self.cout * 4, conv.in_channels, 2, 2).contiguous())
            self.register_buffer("bias", bias.repeat_interleave(4))  # (Cout·4,)
            self.kernels = None
        else:
            self.kernels = len(kernels)  # buffers kernel_0 .. kernel_{n-1}, type pairs in row-major order
            for i, k in enumerate(kernels):
                self.register_buffer(f"kernel_{i}", k.contiguous())
            self.register_buffer("bias", bias)  # (Cout,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.scale
        if self.kernels is None:  # s = 2: phase 0 reads (i - 1, i), phase 1 (i, i + 1)
            full = F.conv2d(x, self.weight, self.bias, padding=1)  # (B, Cout·4, h+1, w+1)
            full = full.view(b, self.cout, 2, 2, h + 1, w + 1)
            phases = [full[:, :, py, px, py:py + h, px:px + w] for py in range(2) for px in range(2)]
            out = torch.stack(phases, dim=2).reshape(b, self.cout * 4, h, w)  # (B, Cout·4, h, w)
            return F.pixel_shuffle(out, 2)  # (B, Cout, 2h, 2w)
        padded = F.pad(x, (1, 1, 1, 1))  # (B, Cin, h+2, w+2)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # NHWC storage (B, h, py, w, px, Cout), seen as (B, Cout, h, py, w, px): the result stays channels-last
            out = x.new_empty(b, h, s, w, s, self.cout).permute(0, 5, 1, 2, 3, 4)
        else:
            out = x.new_empty(b, self.cout, h, s, w, s)  # (B, Cout, h, py, w, px): row s·i + py, column s·j + px
        kernels = (getattr(self, f"kernel_{i}") for i in range(self.kernels))
        for first_y, phases_y in self.types:
            for first_x, phases_x in self.types:
                k = next(kernels)  # (Cout, Cin, ny, nx)
                ny, nx = k.shape[2:]
                window = padded[:, :, 1 + first_y:1 + first_y + h + ny - 1, 1 + first_x:1 + first_x + w + nx - 1]
                y = F.conv2d(window, k, self.bias)  # (B, Cout, h, w)
                for py in phases_y:
                    for px in phases_x:
                        out[:, :, :, py, :, px] = y
        return out.reshape(b, self.cout, h * s, w * s)  # (B, Cout, s·h, s·w), a view in both layouts


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free InstanceNorm2d (eps 1e-5) as a GroupNorm of one channel per group: the same statistics, and
    PyTorch's CPU GroupNorm works on channels-last tensors in place of InstanceNorm's copy to NCHW."""
    return F.group_norm(x, x.shape[1], eps=1e-5)


def _compose_pointwise(pointwise: nn.Conv2d, conv: nn.Conv2d) -> nn.Conv2d:
    """The convolution ``P · conv(x)`` for the weight P of a 1x1 conv `pointwise` after `conv` (the 1x1 conv's own
    bias left out): weights W'[o] = Σ_c P[o, c] W[c], bias P·b. Exact: a 1x1 conv is linear per pixel."""
    p = pointwise.weight.detach()[:, :, 0, 0]  # (Cout, C)
    weight = torch.einsum("oc,cikl->oikl", p, conv.weight.detach())  # (Cout, Cin, k, k)
    bias = p @ conv.bias.detach() if conv.bias is not None else torch.zeros(p.shape[0]).to(p)
    fused = nn.Conv2d(conv.in_channels, p.shape[0], conv.kernel_size, padding=conv.padding,
                      bias=True).to(weight)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def _one_plus_gamma(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of SPADE's γ conv whose bias has 1 added: it outputs 1 + γ directly (one pass less per SPADE)."""
    out = copy.deepcopy(conv)
    with torch.no_grad():
        if out.bias is None:
            out.bias = nn.Parameter(torch.ones(out.out_channels).to(out.weight), requires_grad=False)
        else:
            out.bias.add_(1.0)
    return out


class FusedSPADEResnetBlock(nn.Module):
    """Inference form of :class:`~pipeline.models.renderer.blocks.SPADEResnetBlock` (spectral norm already applied):

    - the shared convs of its SPADEs as one conv, on the small condition map when it is upsampled
      (:class:`UpsampledConv2d`);
    - per SPADE one conv for (1 + γ) ‖ β (the 1 folded into γ's bias);
    - the instance norm of the block input computed once for norm_0 and the shortcut's norm_s;
    - on the learned shortcut, ``conv_s(n·(1 + γ_s) + β_s) = conv_s(n·(1 + γ_s)) + (conv_s ∘ β_s)(actv)``: the 1x1
      shortcut conv composed with β_s's 3x3 conv into one 3x3 conv to the block's (fewer) output channels.

    Same outputs as the block it is built from, up to float rounding."""

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
        affine = [_concat_convs([_one_plus_gamma(s.mlp_gamma), s.mlp_beta]) for s in spades[:2]]  # hidden -> 2C
        self.conv_0, self.conv_1 = block.conv_0, block.conv_1
        self.conv_s = block.conv_s if block.learned_shortcut else None
        if block.learned_shortcut:  # hidden -> Cin (1 + γ_s) ‖ Cout (conv_s ∘ β_s)
            affine.append(_concat_convs([_one_plus_gamma(block.norm_s.mlp_gamma),
                                         _compose_pointwise(block.conv_s, block.norm_s.mlp_beta)]))
            self.shortcut_channels = block.norm_s.mlp_gamma.out_channels
        self.affine = nn.ModuleList(affine)

    def _shared(self, seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = seg.shape[2:]
        if self.shared_up is not None and size == (self.scale * h, self.scale * w):
            return F.relu_(self.shared_up(seg))  # (B, n·hidden, H, W)
        seg = F.interpolate(seg, size=size, mode="nearest")  # (B, L, H, W)
        return F.relu_(self.shared(seg))  # (B, n·hidden, H, W)

    def _modulate(self, normalized: torch.Tensor, actv: torch.Tensor, i: int) -> torch.Tensor:
        gamma1, beta = self.affine[i](actv[:, i * self.hidden:(i + 1) * self.hidden]).chunk(2, dim=1)  # 1 + γ, β
        return torch.addcmul(beta, normalized, gamma1)  # (B, C, H, W)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        actv = self._shared(seg, tuple(x.shape[2:]))  # (B, n·hidden, H, W)
        normalized = _instance_norm(x)  # (B, Cin, H, W), parameter-free; shared by norm_0 and norm_s
        if self.learned_shortcut:
            gs = self.affine[2](actv[:, 2 * self.hidden:])  # (B, Cin + Cout, H, W)
            x_s = self.conv_s(normalized * gs[:, :self.shortcut_channels]) + gs[:, self.shortcut_channels:]
        else:
            x_s = x
        dx = self.conv_0(F.leaky_relu_(self._modulate(normalized, actv, 0), 0.2))  # (B, Cmid, H, W)
        dx = self.conv_1(F.leaky_relu_(self._modulate(_instance_norm(dx), actv, 1), 0.2))  # (B, Cout, H, W)
        return x_s + dx


class PointwiseShiftConv2d(nn.Module):
    """A k x k, stride-1, 'same'-padded conv with ONE output channel (the dense-motion occlusion head: 1792 -> 1,
    7x7) as a 1x1 conv to k² maps (one per tap) and their shifted sum. oneDNN runs a single-output conv at a few
    percent of its peak; the 1x1 conv with k² outputs runs near it, and the k² shifted additions of one small map
    each are cheap. The sum is taken, and returned, in fp32 whatever the input precision. Exact up to float rounding."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        if (conv.out_channels != 1 or conv.kernel_size != (k, k) or conv.stride != (1, 1) or conv.groups != 1
                or conv.dilation != (1, 1) or conv.padding != (k // 2, k // 2) or k % 2 != 1):
            raise ValueError("PointwiseShiftConv2d needs a single-output, odd k x k conv, stride 1, padding k // 2")
        self.k = k
        w = conv.weight.detach()[0]  # (Cin, k, k)
        self.register_buffer("weight", w.permute(1, 2, 0).reshape(k * k, -1, 1, 1).contiguous())  # (k², Cin, 1, 1)
        self.bias = float(conv.bias.detach()[0]) if conv.bias is not None else 0.0  # a scalar: stays fp32 under .to()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k, p = self.k, self.k // 2
        taps = F.pad(F.conv2d(x, self.weight).float(), (p, p, p, p))  # (B, k², h + 2p, w + 2p): tap (ky, kx) map
        out = taps.new_full((b, 1, h, w), self.bias)  # (B, 1, h, w)
        for ky in range(k):
            for kx in range(k):
                t = ky * k + kx
                # out[y, x] += Σ_c W[c, ky, kx] · x[c, y + ky - p, x + kx - p] = taps[t, y + ky, x + kx] (padded)
                out += taps[:, t:t + 1, ky:ky + h, kx:kx + w]
        return out.to(torch.promote_types(x.dtype, torch.float32))  # (B, 1, h, w), fp32 or wider


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
    whose ``avg_pool3d`` PyTorch's CPU build lacks (bf16): ``avg_pool2d`` over the depth slices, which are a view of
    the volume in either layout (NCDHW: (B, C·D, H, W); channels-last-3d: (B·D, C, H, W) channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        if x.is_contiguous():
            return F.avg_pool2d(x.view(b, c * d, h, w), 2).view(b, c, d, h // 2, w // 2)
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            slices = x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)  # a view: (B·D, C, H, W) channels-last
            pooled = F.avg_pool2d(slices, 2)  # (B·D, C, H/2, W/2), channels-last
            return pooled.view(b, d, c, h // 2, w // 2).permute(0, 2, 1, 3, 4)  # (B, C, D, H/2, W/2)
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
    if options.pointwise_occlusion and dm.occlusion is not None:
        dm.occlusion = PointwiseShiftConv2d(dm.occlusion)
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


__all__ = ["AvgPoolHW", "FusedSPADEResnetBlock", "InferenceOptions", "InferenceRenderer", "PointwiseShiftConv2d",
           "UpsampledConv2d", "apply_spectral_norm", "fold_batchnorm", "fold_renderer", "frame_psnr", "fuse_spade",
           "prepare_renderer"]
