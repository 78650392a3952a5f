"""TAVC metric network (TAVCE §III-B, TAVCE Eq. 1-2; method.md §3): audio and visual encoders into one 128-d
space, and the temporal relationship matrix ``C_{i,j}`` of two features.

- ``E^a`` (TAVCE Eq. 1): Wav2Lip mel encoder (:class:`~pipeline.models.audio_encoder.AudioEncoder`) + FC -> 128.
- ``E^v``: ResNet18 (paper) or ArcFace IResNet18 (authors' release) on the 112 x 112 mouth ROI + FC -> 128.
- :func:`relationship` (TAVCE Eq. 2 as resolved in method.md §3.2): ``C = mᵀm`` with ``m`` the two stacked
  features minus their mean, i.e. ``½ (f_i - f_j)(f_i - f_j)ᵀ``.

Later stages (CERL, CAR) load a trained metric with :func:`load_tavc` and use ``encode_audio`` / ``encode_visual``
with :func:`relationship`. Pretrained public encoders are loaded with :func:`load_pretrained`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.audio import MEL_WINDOW_FRAMES, N_MELS
from pipeline.checkpoint import WeightsError, load_model, load_state_strict, map_keys, read_weight_file
from pipeline.config import from_dict
from pipeline.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from pipeline.models.visual_encoder import ROI_SIZE, VisualBackbone, build_visual_backbone

CHECKPOINT_KIND = "tavc"
AUDIO_KEY = "audio_encoder."  # Wav2Lip / SadTalker module name of the mel encoder in public checkpoints


@dataclass(frozen=True)
class TAVCConfig:
    """Dimensions of the TAVC metric (the `model` part of the `train_tavc` params section).

    Attributes:
        embed_dim: size of f^a and f^v (paper: 128), so C is embed_dim x embed_dim.
        audio_width: channel multiplier of the Wav2Lip mel encoder (1.0 = Wav2Lip, loads public weights).
        visual_backbone: resnet18 (paper) | iresnet18 (authors' release, ArcFace IResNet18).
        visual_width: channel multiplier of the visual backbone (1.0 = full, loads public weights).
    """

    embed_dim: int = 128
    audio_width: float = 1.0
    visual_backbone: VisualBackbone = "resnet18"
    visual_width: float = 1.0

    def validate(self) -> None:
        if self.embed_dim < 2:
            raise ValueError(f"embed_dim must be >= 2, got {self.embed_dim}")
        for name in ("audio_width", "visual_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def relationship(f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
    """Temporal relationship of two features of one sample, TAVCE Eq. 2 as resolved in method.md §3.2.

    ``m = stack(f_i, f_j) - mean`` (the two-sample centred data), ``C = mᵀ m``, which equals
    ``½ (f_i - f_j)(f_i - f_j)ᵀ``: a rank-1, symmetric matrix, unchanged when i and j are swapped.

    Args:
        f_i, f_j: (B, D) features (e.g. ``E^a(a_{i-1})``, ``E^a(a_i)``).

    Returns:
        (B, D, D) relationship matrices.
    """
    if f_i.shape != f_j.shape or f_i.ndim != 2:
        raise ValueError(f"relationship expects two (B, D) features, got {tuple(f_i.shape)} and {tuple(f_j.shape)}")
    m = torch.stack([f_i, f_j], dim=1)  # (B, 2, D)
    m = m - m.mean(dim=1, keepdim=True)  # (B, 2, D)
    return m.transpose(1, 2) @ m  # (B, D, 2) @ (B, 2, D) -> (B, D, D)


class TAVC(nn.Module):
    """The TAVC metric's two encoders, ``E^a`` and ``E^v`` (TAVCE Eq. 1), each followed by an FC to `embed_dim`.

    Submodule names: ``audio_encoder`` (Wav2Lip keys), ``audio_fc``, ``visual_encoder`` (torchvision / arcface keys),
    ``visual_fc``.
    """

    def __init__(self, cfg: TAVCConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(AudioEncoderConfig(width=cfg.audio_width))
        self.audio_fc = nn.Linear(self.audio_encoder.out_features, cfg.embed_dim)
        self.visual_encoder = build_visual_backbone(cfg.visual_backbone, cfg.visual_width)
        self.visual_fc = nn.Linear(self.visual_encoder.out_features, cfg.embed_dim)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """``f^a = E^a(a)``: mel windows (B, 1, 80, 16) -> (B, embed_dim)."""
        return self.audio_fc(self.audio_encoder(mel))  # (B, Ca) -> (B, D)

    def encode_visual(self, roi: torch.Tensor) -> torch.Tensor:
        """``f^v = E^v(v)``: mouth ROIs (B, 3, 112, 112) in [-1, 1] -> (B, embed_dim)."""
        if roi.ndim != 4 or tuple(roi.shape[1:]) != (3, ROI_SIZE, ROI_SIZE):
            raise ValueError(f"encode_visual expects mouth ROIs (B, 3, {ROI_SIZE}, {ROI_SIZE}), got {tuple(roi.shape)}")
        return self.visual_fc(self.visual_encoder(roi))  # (B, Cv) -> (B, D)

    def forward(self, mel: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of (..., 1, 80, 16) mel windows and (..., 3, 112, 112) ROIs with any leading dims.

        Returns:
            f^a (..., D) and f^v (..., D) with the leading dims of the inputs, e.g. (B, 2, D) and (B, 3, D).
        """
        lead_a, lead_v = mel.shape[:-3], roi.shape[:-3]
        f_a = self.encode_audio(mel.reshape(-1, 1, N_MELS, MEL_WINDOW_FRAMES))  # (N, D)
        f_v = self.encode_visual(roi.reshape(-1, 3, ROI_SIZE, ROI_SIZE))  # (N', D)
        return f_a.reshape(*lead_a, -1), f_v.reshape(*lead_v, -1)


# ----------------------------------------------------------------------------------------------------------------
# Weights in: public pretrained encoders, and trained TAVC checkpoints
# ----------------------------------------------------------------------------------------------------------------
def _audio_prefix(state: dict[str, torch.Tensor], source: str) -> str:
    """The prefix in front of the (last) ``audio_encoder.`` of the file's keys: '' (lipsync_expert.pth),
    'module.' (wav2lip.pth saved from DataParallel), 'netG.' (SadTalker audio2exp), 'audio_encoder.' (audio2pose)."""
    found: set[str] = set()
    for key in state:
        cut = key.rfind(AUDIO_KEY)
        if cut >= 0 and key[cut + len(AUDIO_KEY):].split(".")[0].isdigit():  # `...audio_encoder.<layer>.`
            found.add(key[:cut])
    prefixes = sorted(found)
    if not prefixes:
        raise WeightsError(f"{source}: no `{AUDIO_KEY}<layer>.*` keys (a Wav2Lip / SadTalker checkpoint is expected; "
                           f"first keys: {sorted(state)[:5]})")
    if len(prefixes) > 1:
        raise WeightsError(f"{source}: several audio encoders ({[p + AUDIO_KEY for p in prefixes]}); "
                           "extract the wanted one into its own state dict")
    return prefixes[0]


def load_audio_weights(encoder: AudioEncoder, path: str | os.PathLike[str]) -> None:
    """Initialise a Wav2Lip mel encoder from ``wav2lip.pth``, ``lipsync_expert.pth`` or a SadTalker checkpoint.

    The file's ``<prefix>audio_encoder.*`` keys (prefix detected) map one-to-one onto the encoder; every other key
    of the file (face encoder, decoder, mapping layers) is ignored. Missing, extra or mis-shaped encoder keys raise.

    Raises:
        WeightsError: naming the file and the keys at fault.
    """
    source = str(path)
    state = read_weight_file(path)
    prefix = _audio_prefix(state, source)
    own = {k: v for k, v in state.items() if k.startswith(prefix + AUDIO_KEY)}
    mapped = map_keys(own, [(prefix + AUDIO_KEY, "")], source)
    try:
        load_state_strict(encoder, mapped, source)
    except WeightsError as err:
        hint = "" if encoder.cfg.width == 1.0 else f" (public weights need audio width 1.0, not {encoder.cfg.width})"
        raise WeightsError(f"{err}{hint}") from err


def load_visual_weights(backbone: nn.Module, name: VisualBackbone, path: str | os.PathLike[str],
                        width: float = 1.0) -> None:
    """Initialise the visual backbone from torchvision ``resnet18-*.pth`` (its ``fc.*`` classifier is dropped) or an
    insightface arcface_torch IResNet18 ``backbone.pth`` (all keys used, including ``fc`` and ``features``).

    Raises:
        WeightsError: naming the file and the keys at fault.
    """
    source = str(path)
    state = read_weight_file(path)
    drop = ("fc.",) if name == "resnet18" else ()
    mapped = map_keys(state, [("", "")], source, drop=drop)
    try:
        load_state_strict(backbone, mapped, source)
    except WeightsError as err:
        hint = "" if width == 1.0 else f" (public weights need visual width 1.0, not {width})"
        raise WeightsError(f"{err} [visual_backbone {name}]{hint}") from err


def load_pretrained(model: TAVC, audio: str | os.PathLike[str] | None = None,
                    visual: str | os.PathLike[str] | None = None) -> None:
    """Initialise ``E^a`` and/or ``E^v`` from public checkpoints (each None = keep the random initialisation).

    The FC layers to `embed_dim` stay randomly initialised: no public checkpoint has them.
    """
    if audio is not None:
        load_audio_weights(model.audio_encoder, audio)
    if visual is not None:
        load_visual_weights(model.visual_encoder, model.cfg.visual_backbone, visual, model.cfg.visual_width)


def load_tavc(path: str | os.PathLike[str], *, frozen: bool = True, device: str | torch.device = "cpu") -> TAVC:
    """A trained TAVC metric from a ``tavc`` checkpoint (written by the train_tavc stage), in eval mode.

    The model is rebuilt from the config stored beside the weights (``config["model"]``), then loaded strictly
    (:func:`pipeline.checkpoint.load_model`).
    """
    return load_model(path, CHECKPOINT_KIND, lambda state: TAVC(from_dict(TAVCConfig, state["config"]["model"],
                                                                          "model")), frozen=frozen, device=device)
