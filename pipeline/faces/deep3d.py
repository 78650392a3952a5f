"""Deep3DFaceRecon coefficients (the `deep3d` coefficient backend; issue 18): the ResNet-50 reconstruction network that
SadTalker ships as ``epoch_20.pth`` (or inside ``SadTalker_V0.0.2_*.safetensors`` under ``face_3drecon.``), run on
SadTalker's 5-point aligned 224x224 crops, giving Basel-Face-Model coefficients.

Network (`ReconNet`, Deep3DFaceRecon's ``ReconNetWrapper`` with ``resnet50``, ``use_last_fc=False``; state-dict keys
``backbone.*`` = torchvision's ResNet-50 without ``fc``, ``final_layers.{0..6}.{weight,bias}``):

    image in [0, 1]          (B, 3, 224, 224)
    backbone + avg pool      (B, 2048, 1, 1)
    7 heads, 1x1 convs       id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | (tx, ty) 2 | tz 1
    concatenated             (B, 257)

Per-frame output in this project's 73-d layout (`pipeline.faces.coeffs`): indices 0–69 are SadTalker's own
coefficients, unchanged — ``exp`` (64), ``angle`` (3: rotations about x, y, z in radians, Deep3DFaceRecon's order
and signs, `pipeline.faces.bfm.rotation_matrix`), ``trans`` (3, decimetres) — because every SadTalker network
(ExpNet, PoseVAE, MappingNet) reads exactly these values. Indices 70–72 (scale, crop centre) are filled by the
preprocessing as for the landmark backend. Note that 64–66 are then (pitch, yaw, roll) in Deep3DFaceRecon's
convention, not the landmark backend's (yaw, pitch, roll).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.checkpoint import WeightsError, load_state_strict, read_weight_file
from pipeline.faces import bfm as bfm_mod

CHECKPOINT_FILE = "epoch_20.pth"  # Deep3DFaceRecon's release, as SadTalker ships it; the weights under "net_recon"
CHECKPOINT_KEY = "net_recon"
SAFETENSORS_PREFIX = "face_3drecon."  # the same weights inside SadTalker_V0.0.2_*.safetensors
BACKBONE_DIM = 2048  # ResNet-50's pooled features
# (name, size) of the 257 outputs, in order.
HEADS: tuple[tuple[str, int], ...] = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27),
                                      ("txy", 2), ("tz", 1))
NUM_COEFFS = sum(n for _, n in HEADS)  # 257
SLICES: dict[str, slice] = {"id": slice(0, 80), "exp": slice(80, 144), "tex": slice(144, 224),
                            "angle": slice(224, 227), "gamma": slice(227, 254), "trans": slice(254, 257)}
MOTION_DIM = 70  # exp + angle + trans: what SadTalker's networks read


class ReconNet(nn.Module):
    """Deep3DFaceRecon's face reconstruction network (ResNet-50 + seven 1x1 heads); (B, 3, 224, 224) in [0, 1] ->
    (B, 257) BFM coefficients (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        backbone = resnet50(weights=None)
        del backbone.fc  # Deep3DFaceRecon's backbone has no fc (use_last_fc=False): its keys stop at layer4
        self.backbone = backbone
        self.final_layers = nn.ModuleList([nn.Conv2d(BACKBONE_DIM, n, kernel_size=1, bias=True) for _, n in HEADS])
        for layer in self.final_layers:  # as released before training: zero heads (real weights overwrite them)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(image))))  # (B, 64, 56, 56)
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))  # (B, 2048, 7, 7)
        x = b.avgpool(x)  # (B, 2048, 1, 1)
        return torch.cat([layer(x) for layer in self.final_layers], dim=1).flatten(1)  # (B, 257)


def read_recon_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ReconNet state dict of ``epoch_20.pth`` (under ``net_recon``) or of SadTalker's ``.safetensors``
    (keys under ``face_3drecon.``, prefix removed)."""
    path = Path(path)
    state = read_weight_file(path, nested_keys=(CHECKPOINT_KEY,))
    if path.suffix == ".safetensors":
        state = {k[len(SAFETENSORS_PREFIX):]: v for k, v in state.items() if k.startswith(SAFETENSORS_PREFIX)}
        if not state:
            raise WeightsError(f"{path}: no `{SAFETENSORS_PREFIX}*` keys (the face reconstruction network)")
    return state


def load_recon_net(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ReconNet:
    """A ReconNet filled strictly from `path` (`read_recon_weights`), in eval mode, frozen."""
    net = ReconNet()
    load_state_strict(net, read_recon_weights(path), f"{path} ({CHECKPOINT_KEY})")
    return net.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------
def missing_files(checkpoint: str | os.PathLike[str] | None, bfm_folder: str | os.PathLike[str] | None
                  ) -> list[tuple[str, str]]:
    """``(role, what is expected)`` for every file the backend needs that is not there: role is ``checkpoint`` or
    ``bfm_folder`` (the setting that points to it)."""
    out = []
    if checkpoint is None or not Path(checkpoint).is_file():
        out.append(("checkpoint", f"{checkpoint if checkpoint else '(not set)'}: Deep3DFaceRecon's {CHECKPOINT_FILE} "
                                  f"(key {CHECKPOINT_KEY}) or SadTalker_V0.0.2_256.safetensors"))
    for name, role in ((bfm_mod.STANDARD_LANDMARKS_FILE, "5-point alignment"),
                       (bfm_mod.BFM_FILE, "landmark projection")):
        p = Path(bfm_folder) / name if bfm_folder else None
        if p is None or not p.is_file():
            out.append(("bfm_folder", f"{p if p else '(bfm_folder not set)/' + name}: {role}"))
    return out


# --------------------------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Deep3DResult:
    """Deep3DFaceRecon's estimate for T frames (NaN rows where a frame had no landmarks).

    Attributes:
        coeffs: (T, 257) id, exp, tex, angle, gamma, trans (`SLICES`).
        align: (T, 5) alignment parameters (W0, H0, s, tx, ty) (`pipeline.faces.bfm.Alignment`).
        landmark_error: (T,) RMS distance in pixels of the 224 input between the BFM's projected landmarks and the
            observed (aligned) ones: the fit's quality.
    """

    coeffs: np.ndarray
    align: np.ndarray
    landmark_error: np.ndarray

    @property
    def motion(self) -> np.ndarray:
        """(T, 70): exp, angle, trans (the first 70 entries of SadTalker's 73-d coefficients)."""
        return motion_coefficients(self.coeffs)


def motion_coefficients(coeffs: np.ndarray) -> np.ndarray:
    """(T, 257) -> (T, 70) exp (64), angle (3), trans (3)."""
    c = np.asarray(coeffs)
    return np.concatenate([c[:, SLICES["exp"]], c[:, SLICES["angle"]], c[:, SLICES["trans"]]], axis=1)


class Deep3DEstimator:
    """Landmarked face crops -> BFM coefficients: 5-point alignment, ReconNet, landmark projection.

    Args:
        net: a filled `ReconNet`.
        standard: (5, 3) standard points (`bfm.load_standard_landmarks`).
        model: the BFM landmark model (`bfm.BFMLandmarks.load`).
        batch_size: frames per network pass.
    """

    def __init__(self, net: ReconNet, standard: np.ndarray, model: bfm_mod.BFMLandmarks, *, batch_size: int = 16,
                 device: str | torch.device = "cpu") -> None:
        self.net = net.eval().to(device)
        self.standard = np.asarray(standard, np.float64)
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device)

    @classmethod
    def from_files(cls, checkpoint: str | os.PathLike[str], bfm_folder: str | os.PathLike[str], *,
                   batch_size: int = 16, device: str | torch.device = "cpu") -> Deep3DEstimator:
        folder = Path(bfm_folder)
        return cls(load_recon_net(checkpoint, device),
                   bfm_mod.load_standard_landmarks(folder / bfm_mod.STANDARD_LANDMARKS_FILE),
                   bfm_mod.BFMLandmarks.load(folder / bfm_mod.BFM_FILE), batch_size=batch_size, device=device)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> Deep3DResult:
        """Args:
            frames: (T, H, W, 3) uint8 RGB face crops.
            landmarks: (T, 68, 2+) pixel landmarks of those crops, y down; NaN rows for frames without a face.
        """
        T = len(frames)
        if np.shape(landmarks)[:2] != (T, bfm_mod.NUM_LANDMARKS):
            raise ValueError(f"Deep3DEstimator: {T} frames need (T, 68, 2+) landmarks, got {np.shape(landmarks)}")
        coeffs = np.full((T, NUM_COEFFS), np.nan, np.float32)
        align = np.full((T, 5), np.nan)
        error = np.full(T, np.nan)
        ok = np.flatnonzero(np.isfinite(np.asarray(landmarks)[..., :2]).all(axis=(1, 2)))
        for s in range(0, len(ok), self.batch_size):
            idx = ok[s:s + self.batch_size]
            al = [bfm_mod.align_image(frames[i], landmarks[i][:, :2], self.standard) for i in idx]
            x = torch.from_numpy(np.stack([a.image for a in al])).to(self.device)  # (b, 224, 224, 3) uint8
            x = x.permute(0, 3, 1, 2).float() / 255.0  # (b, 3, 224, 224)
            out = self.net(x).float().cpu().numpy()  # (b, 257)
            coeffs[idx] = out
            align[idx] = np.stack([a.params for a in al])
            proj = bfm_mod.project_landmarks(self.model, out[:, SLICES["id"]], out[:, SLICES["exp"]],
                                             out[:, SLICES["angle"]], out[:, SLICES["trans"]])  # (b, 68, 2)
            obs = np.stack([a.landmarks for a in al])  # (b, 68, 2)
            error[idx] = np.sqrt(((proj - obs) ** 2).sum(-1).mean(-1))
        return Deep3DResult(coeffs, align, error)
