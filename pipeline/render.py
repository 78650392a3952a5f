"""Inference API of the face renderer (method.md §4): animate one source face with per-frame motion.

    renderer = load_renderer("models/renderer/checkpoint.pt")   # pipeline.models.renderer.renderer; pretrain_renderer
    frames = render(renderer, source_rgb, motion, relation=c_a, batch_size=8)   # (T, H, W, 3) uint8

The motion of frame i is a :class:`~pipeline.models.renderer.keypoints.HeadMotion` row (yaw, pitch, roll as 66-bin
logits or degrees, translation t, expression deltas δ): the driving keypoints are
``x_d = R(yaw, pitch, roll) · x_c + t + δ`` from the source's canonical keypoints ``x_c`` (face-vid2vid;
:func:`transform_keypoints`). Later stages get the motion from MappingNet (audio-driven) or from the head-pose
estimator on a driving video (video-driven).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.corpus import resize_square
from pipeline.models.renderer.inference import (
    InferenceOptions,
    InferenceRenderer,
    prepare_renderer,
)
from pipeline.models.renderer.keypoints import HeadMotion, transform_keypoints
from pipeline.models.renderer.renderer import Renderer, load_renderer
from pipeline.viz import to_uint8


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def source_tensor(source_image: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """The source face as the renderer's input: (1, 3, S, S) float32 in [0, 1].

    Args:
        source_image: (H, W, 3) uint8 RGB array, or a (3, H, W) float tensor in [0, 1]. A square image of another
            side is resized to `image_size` S: arrays with :func:`pipeline.data.corpus.resize_square` (cv2 area /
            linear, exactly as the training samples are made), tensors with antialiased bilinear interpolation.
        image_size: the renderer's ``cfg.image_size``.

    Raises:
        ValueError: for another layout, dtype, range, or a non-square image (the renderer expects the square face
            crop of preprocessing; stretching a non-square picture would distort the face).
    """
    if isinstance(source_image, np.ndarray):
        if source_image.dtype != np.uint8 or source_image.ndim != 3 or source_image.shape[2] != 3:
            raise ValueError(f"source_image: expected an (H, W, 3) uint8 RGB array, got {source_image.dtype} "
                             f"{source_image.shape}")
        if source_image.shape[0] != source_image.shape[1]:
            raise ValueError(f"source_image: expected a square face crop, got {source_image.shape[:2]}")
        rgb = resize_square(source_image, image_size)  # (S, S, 3) uint8
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)  # (3, S, S)
        return x[None]  # (1, 3, S, S)
    if isinstance(source_image, torch.Tensor):
        if source_image.ndim != 3 or source_image.shape[0] != 3 or not source_image.is_floating_point():
            raise ValueError(f"source_image: expected a (3, H, W) float tensor in [0, 1], got {source_image.dtype} "
                             f"{tuple(source_image.shape)}")
        if source_image.shape[1] != source_image.shape[2]:
            raise ValueError(f"source_image: expected a square face crop, got {tuple(source_image.shape[1:])}")
        lo, hi = float(source_image.min()), float(source_image.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"source_image: float tensor values must lie in [0, 1], got [{lo:.3f}, {hi:.3f}]")
        x = source_image.detach().float().cpu()[None]  # (1, 3, H, W)
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)  # (1, 3, S, S)
        return x
    raise ValueError(f"source_image: expected a numpy array or a torch tensor, got {type(source_image).__name__}")


def motion_length(motion: HeadMotion, num_kp: int) -> int:
    """Number of frames T of a per-frame motion, after checking that its fields agree (shapes (T, 66) or (T,) for the
    angles, (T, 3) for t, (T, K, 3) for δ)."""
    t = motion.t
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"motion.t: expected (T, 3), got {tuple(t.shape)}")
    n = t.shape[0]
    angle_shape = (n,) if motion.in_degrees else (n, 66)
    for name in ("yaw", "pitch", "roll"):
        a = getattr(motion, name)
        if a.ndim != len(angle_shape) or a.shape[0] != n or (not motion.in_degrees and a.shape[1] != 66):
            form = "degrees (T,)" if motion.in_degrees else "logits (T, 66)"
            raise ValueError(f"motion.{name}: expected {form} with T = {n}, got {tuple(a.shape)}")
    if tuple(motion.exp.shape) != (n, num_kp, 3):
        raise ValueError(f"motion.exp: expected (T, K, 3) = ({n}, {num_kp}, 3), got {tuple(motion.exp.shape)}")
    return n


def motion_rows(motion: HeadMotion, start: int, stop: int, device: torch.device | str) -> HeadMotion:
    """Frames [start, stop) of a per-frame motion (every tensor field sliced on its leading dim), on `device`."""
    fields = {}
    for field in dataclasses.fields(motion):
        value = getattr(motion, field.name)
        fields[field.name] = value[start:stop].to(device) if isinstance(value, torch.Tensor) else value
    return type(motion)(**fields)


# ----------------------------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------------------------
def render(renderer: Renderer | InferenceRenderer, source_image: np.ndarray | torch.Tensor, motion: HeadMotion, *,
           source_motion: HeadMotion | None = None, relation: torch.Tensor | None = None, batch_size: int = 8,
           device: torch.device | str = "cpu", progress: bool = False,
           options: InferenceOptions | None = None) -> np.ndarray:
    """Animate one source face: T frames, frame i showing the source identity with motion row i.

    The source is encoded ONCE — 2D appearance feature f, canonical keypoints x_c, source keypoints
    x_s = transform_keypoints(x_c, source_motion) — and then the frames are generated in batches of `batch_size`:
    per batch the driving keypoints ``x_d = R·x_c + t + δ`` and ``generate(volume, x_s, x_d)``. The 3D feature volume
    is made per frame only when CERL is used (``relation`` given and the renderer has CERL), since the audio
    relationship changes per frame; otherwise it is made once and shared by all frames.

    Saving over SadTalker: its ``make_animation`` calls the full generator per frame, which re-encodes the source image
    for every frame: at full size the 2D appearance encoder is 10.3 G and the 3D residual blocks 21.7 G of a frame's
    ~602 G multiply-accumulates (``benchmarks/complexity.py``). Here the 2D encoder runs once per video, and the 3D
    blocks too when there is no relation. ``benchmarks/render_fps.py`` measures both ways.

    Speed (issue 16): with `options` the frames come from an inference copy of the renderer
    (:func:`~pipeline.models.renderer.inference.prepare_renderer`: folded normalisation, fused SPADE convolutions,
    channels-last, bf16/fp16, torch.compile, CUDA graphs — each a switch of
    :class:`~pipeline.models.renderer.inference.InferenceOptions`); the renderer itself is not changed. To reuse one
    copy over several calls (and a compiled graph), pass a prepared ``InferenceRenderer`` as `renderer`.

    Args:
        renderer: the renderer (e.g. from :func:`load_renderer`). It is moved to `device` and put in eval mode for the
            call; its device and the train/eval mode of every submodule are restored afterwards. Or an
            InferenceRenderer from ``prepare_renderer`` (used as it is, on its own device; `options` must be None).
        source_image: (H, W, 3) uint8 RGB array or (3, H, W) float tensor in [0, 1], a square face crop; resized to
            ``renderer.cfg.image_size`` when its side differs (see :func:`source_tensor`).
        motion: per-frame HeadMotion with leading dim T (angles as (T, 66) logits, or (T,) degrees with
            ``in_degrees=True``; t (T, 3); exp (T, K, 3)).
        source_motion: the source frame's own HeadMotion (batch 1). None: estimated from the source with
            ``renderer.estimate_motion`` (the video-driven convention of pretraining).
        relation: (T, D, D) audio relationship C^a per frame for CERL (not normalised; CERL normalises), or None
            (CERL acts as the identity). Ignored when the renderer was built without CERL.
        batch_size: frames generated per forward pass (memory vs speed; the frames do not depend on it).
        device: where to compute ("cpu", "cuda", ...).
        progress: show a tqdm bar over batches.
        options: inference switches (e.g. ``InferenceOptions.fastest(device)``); None = the renderer's own fp32
            arithmetic (the reference the switches are measured against).

    Returns:
        (T, S, S, 3) uint8 RGB frames, S = ``renderer.cfg.image_size``.
    """
    cfg = renderer.cfg
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_frames = motion_length(motion, cfg.num_kp)
    use_cerl = relation is not None and renderer.cerl is not None
    if use_cerl:
        d = cfg.cerl.relation_dim
        if tuple(relation.shape) != (n_frames, d, d):
            raise ValueError(f"relation: expected (T, D, D) = ({n_frames}, {d}, {d}), got {tuple(relation.shape)}")
    if source_motion is not None:
        motion_length(source_motion, cfg.num_kp)
        if source_motion.t.shape[0] != 1:
            raise ValueError(f"source_motion: expected one row (batch 1), got {source_motion.t.shape[0]}")

    src = source_tensor(source_image, cfg.image_size)  # (1, 3, S, S)
    out = np.empty((n_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    if isinstance(renderer, InferenceRenderer) or options is not None:
        if isinstance(renderer, InferenceRenderer):
            if options is not None:
                raise ValueError("render: options apply when preparing the copy; pass a Renderer with options, or "
                                 "an InferenceRenderer without")
            model = renderer
        else:
            model = prepare_renderer(renderer, options, device)
        with torch.inference_mode():
            _render_frames(model, src, motion, source_motion, relation if use_cerl else None, batch_size,
                           model.device, progress, out)
        return out
    first = next(renderer.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in renderer.modules()}
    try:
        renderer.to(device).eval()
        with torch.inference_mode():
            _render_frames(renderer, src, motion, source_motion, relation if use_cerl else None, batch_size,
                           device, progress, out)
    finally:
        renderer.to(home)
        for module, mode in modes.items():
            module.training = mode
    return out


def _render_frames(renderer: Renderer | InferenceRenderer, src: torch.Tensor, motion: HeadMotion,
                   source_motion: HeadMotion | None, relation: torch.Tensor | None, batch_size: int,
                   device: torch.device | str, progress: bool, out: np.ndarray) -> None:
    """render()'s work on a ready model: encode the source once, then the frames batch by batch into `out`
    (T, S, S, 3). `relation` None = no CERL (the volume made once)."""
    use_cerl = relation is not None
    n_frames = out.shape[0]
    src = src.to(device)
    f = renderer.encode_source(src)  # (1, C*D, h, w)
    kp_canonical = renderer.canonical_keypoints(src)  # (1, K, 3)
    if source_motion is None:
        source_motion = renderer.estimate_motion(src)
    kp_source = transform_keypoints(kp_canonical, motion_rows(source_motion, 0, 1, device))  # (1, K, 3)
    volume = None if use_cerl else renderer.feature_volume(f, None)  # (1, C, D, h, w), shared

    starts = range(0, n_frames, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="render", unit="batch")
    for a in starts:  # frames [a, b) form a batch of B = b - a
        b = min(a + batch_size, n_frames)
        n = b - a
        if use_cerl:
            rel = relation[a:b].to(device)  # (B, Dr, Dr)
            vol = renderer.feature_volume(f.expand(n, -1, -1, -1), rel)  # (B, C, D, h, w)
        else:
            vol = volume.expand(n, *volume.shape[1:])  # (B, C, D, h, w), a view
        kp_driving = transform_keypoints(kp_canonical.expand(n, -1, -1),
                                         motion_rows(motion, a, b, device))  # (B, K, 3)
        result = renderer.generate(vol, kp_source.expand(n, -1, -1), kp_driving)  # prediction (B, 3, S, S)
        out[a:b] = to_uint8(result.prediction)  # (B, S, S, 3)


def identity_motion(source_motion: HeadMotion, frames: int) -> HeadMotion:
    """`frames` copies of a one-row motion (e.g. the source's own: rendering it reproduces the source pose)."""
    fields = {}
    for field in dataclasses.fields(source_motion):
        value = getattr(source_motion, field.name)
        if isinstance(value, torch.Tensor):
            value = value[:1].expand(frames, *value.shape[1:]).clone()  # (T, ...)
        fields[field.name] = value
    return type(source_motion)(**fields)


# load_renderer (defined beside the Renderer class) is re-exported: loading and rendering are one API for users.
__all__ = ["identity_motion", "load_renderer", "motion_length", "motion_rows", "render", "source_tensor"]
