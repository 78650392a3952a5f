"""Audio2Coeff (method.md §5): speech -> 70-d motion coefficients (64 expression + 3 rotation + 3 translation).

One network per file: `expnet.ExpNet` (SadTalker's audio2exp), `posevae.PoseVAE` (SadTalker's audio2pose CVAE and
its sequence discriminator), `ms_sync.MSSync` (MS-Sync's multi-scale autoregressive generator and discriminators).
`Audio2Coeff` holds ExpNet and one pose model (``pose_generator: posevae | ms_sync``) plus the training set's pose
statistics; :func:`generate_motion` is the inference entry point (the fine-tuning stage and ``animate`` use it),
:func:`load_audio2coeff` the loader of a ``train_audio2coeff`` checkpoint and :func:`load_sadtalker_weights` the
loader of SadTalker's released audio2exp / audio2pose weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipeline.checkpoint import WeightsError, load_model, load_state_strict, map_keys, read_weight_file
from pipeline.config import from_dict
from pipeline.data.sampling import sample_generator
from pipeline.models.audio2coeff.expnet import NUM_EXPRESSION, ExpNet, ExpNetConfig
from pipeline.models.audio2coeff.ms_sync import MSSync, MSSyncConfig
from pipeline.models.audio2coeff.posevae import POSE_DIM, PoseVAE, PoseVAEConfig
from pipeline.models import sadtalker_files

CHECKPOINT_KIND = "audio2coeff"
MOTION_DIM = NUM_EXPRESSION + POSE_DIM  # 70: what MappingNet reads (method.md §1)
PoseGenerator = Literal["posevae", "ms_sync"]


@dataclass(frozen=True)
class Audio2CoeffConfig:
    """Which pose generator, and the sizes of every network (defaults: SadTalker / MS-Sync full size)."""

    pose_generator: PoseGenerator = "posevae"
    expnet: ExpNetConfig = field(default_factory=ExpNetConfig)
    posevae: PoseVAEConfig = field(default_factory=PoseVAEConfig)
    ms_sync: MSSyncConfig = field(default_factory=MSSyncConfig)

    @property
    def seq_len(self) -> int:
        """Frames per generated pose window (PoseVAE's; MS-Sync's generator uses the same windows)."""
        return self.posevae.seq_len


class Audio2Coeff(nn.Module):
    """ExpNet + the configured pose model, and the pose normalisation (``pose_mean``, ``pose_std``: (6,) buffers,
    the training frames' mean and std of the 6 pose values; pose residuals are scaled by the same std)."""

    def __init__(self, cfg: Audio2CoeffConfig = Audio2CoeffConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.expnet = ExpNet(cfg.expnet)
        self.pose: PoseVAE | MSSync = PoseVAE(cfg.posevae) if cfg.pose_generator == "posevae" else MSSync(cfg.ms_sync)
        self.register_buffer("pose_mean", torch.zeros(POSE_DIM))
        self.register_buffer("pose_std", torch.ones(POSE_DIM))

    def set_pose_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        std = np.asarray(std, np.float32)
        if std.shape != (POSE_DIM,) or not np.all(std > 0):
            raise ValueError(f"pose std must be 6 positive values, got {std}")
        self.pose_mean.copy_(torch.as_tensor(np.asarray(mean, np.float32)))
        self.pose_std.copy_(torch.as_tensor(std))

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return self.pose.discriminator_parameters()

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.expnet.parameters()) + self.pose.generator_parameters()


def _build(state: Mapping[str, Any]) -> Audio2Coeff:
    return Audio2Coeff(from_dict(Audio2CoeffConfig, state["config"]["model"], "model"))


def load_audio2coeff(path: str | os.PathLike[str], *, frozen: bool = True,
                     device: str | torch.device = "cpu") -> Audio2Coeff:
    """The `Audio2Coeff` of a ``train_audio2coeff`` checkpoint, rebuilt from its stored config (eval mode)."""
    return load_model(path, CHECKPOINT_KIND, _build, frozen=frozen, device=device)


# ----------------------------------------------------------------------------------------------------------------
# SadTalker's weights
# ----------------------------------------------------------------------------------------------------------------
# Layout (SadTalker's src/test_audio2coeff.py): the combined SadTalker_V0.0.2_*.safetensors holds the parts under
# `audio2exp.` (SimpleWrapperV2: audio_encoder.*, mapping1.*) and `audio2pose.` (Audio2Pose:
# audio_encoder.audio_encoder.*, netG.*, netD_motion.*) beside the renderer's parts; the older .pth files
# (auido2exp_00300-model.pth, auido2pose_00140-model.pth) hold one part each under "model" without the prefix.
SADTALKER_EXP_RULES = (("audio_encoder.", "audio_encoder."), ("mapping1.", "mapping1."))
SADTALKER_POSE_RULES = (("audio_encoder.audio_encoder.", "audio_encoder."), ("netG.", "netG."),
                        ("netD_motion.", "netD_motion."))
SADTALKER_PART_FILES = sadtalker_files.PART_FILES
SADTALKER_COMBINED_FILE = sadtalker_files.combined_file(256)  # holds both parts (and the renderer's, the recon net's)


def sadtalker_audio2coeff_source(folder: str | os.PathLike[str]) -> Path:
    """Where a SadTalker release folder (or its ``checkpoints/``) keeps Audio2Coeff's weights: the folder itself when
    it holds both part files (`SADTALKER_PART_FILES`), else its combined safetensors. Raises `WeightsError` naming
    the files looked for."""
    root = sadtalker_files.checkpoint_folder(folder)
    source = sadtalker_files.audio2coeff_source(root, root / SADTALKER_COMBINED_FILE)
    if source is not None:
        return source
    raise WeightsError(f"{folder}: no SadTalker Audio2Coeff weights (looked for "
                       f"{' + '.join(str(root / f) for f in SADTALKER_PART_FILES.values())}, or "
                       f"{root / SADTALKER_COMBINED_FILE})")


def sadtalker_parts(state: Mapping[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split a combined SadTalker state dict into ``{"audio2exp": ..., "audio2pose": ...}`` (prefixes removed,
    the renderer's parts dropped). Raises `WeightsError` when a part is absent."""
    parts: dict[str, dict[str, torch.Tensor]] = {"audio2exp": {}, "audio2pose": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    empty = [k for k, v in parts.items() if not v]
    if empty:
        raise WeightsError(f"{source}: no {', '.join(f'`{k}.*`' for k in empty)} keys (a SadTalker checkpoint "
                           f"holds audio2exp.* and audio2pose.*)")
    return parts


def _read_any(path: Path) -> dict[str, torch.Tensor]:
    return read_weight_file(path, nested_keys=("model",))  # .safetensors: flat prefixed keys


def load_sadtalker_weights(model: Audio2Coeff, path: str | os.PathLike[str]) -> None:
    """Load SadTalker's audio2exp into ``model.expnet`` and audio2pose into ``model.pose`` (strictly).

    Args:
        model: a full-size `Audio2Coeff` with ``pose_generator: posevae``.
        path: SadTalker's combined checkpoint (``SadTalker_V0.0.2_256.safetensors`` or a ``.pth`` state dict with the
            same ``audio2exp.*`` / ``audio2pose.*`` keys), or a release folder (or its ``checkpoints/``) holding
            ``auido2exp_00300-model.pth`` and ``auido2pose_00140-model.pth``, or the safetensors
            (`sadtalker_audio2coeff_source`).

    SadTalker's coefficients are BFM ones (expression basis, pose units); this project's are the landmark 3DMM's
    (method.md §2), so the loaded networks are a starting point for fine-tuning, not a drop-in predictor.
    """
    if not isinstance(model.pose, PoseVAE):
        raise WeightsError(f"{path}: SadTalker weights need pose_generator `posevae`, not `{model.cfg.pose_generator}`")
    path = Path(path)
    if path.is_dir():
        path = sadtalker_audio2coeff_source(path)
    if path.is_dir():
        parts = {name: _read_any(path / fname) for name, fname in SADTALKER_PART_FILES.items()}
    else:
        parts = sadtalker_parts(_read_any(path), str(path))
    exp = map_keys(parts["audio2exp"], SADTALKER_EXP_RULES, f"{path} (audio2exp)")
    pose = map_keys(parts["audio2pose"], SADTALKER_POSE_RULES, f"{path} (audio2pose)")
    load_state_strict(model.expnet, exp, f"{path} (audio2exp)")
    load_state_strict(model.pose, pose, f"{path} (audio2pose)")


# ----------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------
def stitch_windows(windows: list[tuple[int, np.ndarray]], total: int) -> np.ndarray:
    """Join overlapping windows ``(start, (n, C) values)``, in start order, into (total, C): where a window overlaps
    the previous one, it is cross-faded in linearly (weights k/(n+1), k = 1..n), so the result is continuous at every
    seam and equals each window away from the overlaps."""
    if not windows:
        raise ValueError("no windows to stitch")
    out = np.zeros((total, windows[0][1].shape[1]), np.float64)
    end = 0
    for start, values in windows:
        if start > end:
            raise ValueError(f"window at {start} leaves a gap after frame {end}")
        n = min(end - start, len(values))  # overlap with what is written
        alpha = (np.arange(1, n + 1) / (n + 1))[:, None]  # (n, 1)
        out[start:start + n] = (1 - alpha) * out[start:start + n] + alpha * values[:n]
        out[start + n:start + len(values)] = values[n:]
        end = max(end, start + len(values))
    if end < total:
        raise ValueError(f"windows cover {end} of {total} frames")
    return out


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32,
                           device=device)


@torch.no_grad()
def generate_motion(models: Audio2Coeff, mel: np.ndarray | torch.Tensor, reference_coeffs: np.ndarray,
                    pose_style: int = 0, seed: int = 0, eye_ratio: np.ndarray | None = None,
                    overlap: int | None = None, chunk: int = 256) -> np.ndarray:
    """Motion coefficients for T frames of speech, starting from one reference frame.

    Args:
        models: a trained `Audio2Coeff` (:func:`load_audio2coeff`).
        mel: (T, 1, 80, 16) mel windows of the T frames (`pipeline.audio.mel_windows`), or the same as a lazy
            `pipeline.audio.MelWindows` (long audio).
        reference_coeffs: (70,) or (73,) coefficients of the reference frame (its expression conditions ExpNet, its
            pose is frame 0's pose).
        pose_style: PoseVAE style class (a training speaker, see the checkpoint's ``extra.styles``).
        seed: chooses PoseVAE's latent samples (window k uses ``sample_generator(seed, k)``); MS-Sync's generator is
            deterministic and ignores it.
        eye_ratio: (T,) relative eye openness per frame (0 = as in the reference; the default, no blinks).
        overlap: frames shared by consecutive PoseVAE windows, cross-faded (`stitch_windows`); default seq_len / 4.
            MS-Sync windows continue from the previous window's last pose (MS-Sync Eq. 9), so they need none.
        chunk: frames per ExpNet forward pass.

    Returns:
        (T, 70) float32: 64 expression coefficients, yaw, pitch, roll, tx, ty, tz. Frame 0's pose is the reference's.
    """
    dev = models.pose_mean.device
    # An array or tensor is moved to the device whole; a lazy window sequence (`pipeline.audio.MelWindows`: len,
    # shape, slices give (t, 1, 80, 16) arrays) is sliced as needed, so long audio never exists as windows at once.
    mel_t = mel if hasattr(mel, "shape") and not isinstance(mel, (np.ndarray, torch.Tensor)) else _as_tensor(mel, dev)
    if len(mel_t.shape) != 4 or tuple(mel_t.shape[1:]) != (1, 80, 16) or len(mel_t) < 1:
        raise ValueError(f"mel must be (T, 1, 80, 16) windows with T >= 1, got {tuple(mel_t.shape)}")

    def take(start: int, stop: int) -> torch.Tensor:
        return _as_tensor(mel_t[start:stop], dev)  # (t, 1, 80, 16)

    ref = np.asarray(reference_coeffs, np.float32).reshape(-1)
    if ref.shape[0] not in (MOTION_DIM, 73) or not np.all(np.isfinite(ref[:MOTION_DIM])):
        raise ValueError(f"reference_coeffs must be 70 or 73 finite values, got shape {ref.shape}")
    n_cls = models.cfg.posevae.num_classes
    if not isinstance(pose_style, (int, np.integer)) or not 0 <= pose_style < n_cls:
        raise ValueError(f"pose_style must be an int in [0, {n_cls}), got {pose_style!r}")
    T = len(mel_t)
    ratio = np.zeros(T, np.float32) if eye_ratio is None else np.asarray(eye_ratio, np.float32)
    if ratio.shape != (T,):
        raise ValueError(f"eye_ratio must have shape ({T},), got {ratio.shape}")
    models.eval()
    ref_t = torch.as_tensor(ref[:MOTION_DIM], device=dev)
    ratio_t = torch.as_tensor(ratio, device=dev)
    ref_expr = ref_t[None, :NUM_EXPRESSION]  # (1, 64)
    expr = torch.cat([models.expnet(take(i, i + chunk)[None], ref_expr, ratio_t[None, i:i + chunk])[0]
                      for i in range(0, T, chunk)])  # (T, 64)

    pose = np.repeat(ref[None, NUM_EXPRESSION:MOTION_DIM].astype(np.float64), T, axis=0)  # (T, 6)
    L = models.cfg.seq_len
    n = T - 1  # frames after the reference
    if n > 0:
        mean, std = models.pose_mean, models.pose_std
        ref_pose = ref_t[NUM_EXPRESSION:]  # (6,)
        if isinstance(models.pose, PoseVAE):
            ov = L // 4 if overlap is None else overlap
            if not 0 <= ov < L:
                raise ValueError(f"overlap must be in [0, {L}), got {ov}")
            starts = list(range(0, max(n - L, 0) + 1, L - ov))
            if starts[-1] + L < n:
                starts.append(n - L)  # last window ends at the last frame
            windows = []
            for k, s in enumerate(starts):
                m = take(1 + s, 1 + s + L)
                if len(m) < L:  # audio shorter than one window: repeat the last frame's window
                    m = torch.cat([m, m[-1:].expand(L - len(m), -1, -1, -1)])
                z = torch.randn(1, models.cfg.posevae.latent, generator=sample_generator(seed, k)).to(dev)
                res = models.pose.sample(m[None], ((ref_pose - mean) / std)[None],
                                         torch.tensor([pose_style], device=dev), z)[0]  # (L, 6) normalised residuals
                windows.append((s, (ref_pose + res * std).cpu().numpy()[:min(L, n - s)]))
            pose[1:] = stitch_windows(windows, n)
        else:
            x = ((ref_pose - mean) / std)[None]  # (1, 6)
            out = []
            for s in range(0, n, L):
                xs = models.pose.generator(x, take(1 + s, 1 + s + L)[None])  # (1, <=L, 6)
                out.append(xs[0])
                x = xs[:, -1]  # the next window continues from the last pose (MS-Sync Eq. 9)
            pose[1:] = (torch.cat(out) * std + mean).cpu().numpy()
    return np.concatenate([expr.cpu().numpy(), pose.astype(np.float32)], axis=1).astype(np.float32)  # (T, 70)
