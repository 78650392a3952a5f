"""CSIM: cosine similarity between the identity embedding of every generated frame and that of the source portrait
(TAVCE Table I; the papers use ArcFace), averaged over frames.

Identity networks (the result names the one used, :attr:`CsimResult.extractor`):

- ``dlib_resnet_v1`` (default, always available): dlib's pretrained ResNet face-recognition descriptor (128-d), of
  the face aligned by dlib's landmarks (:mod:`pipeline.metrics.dlib_face`);
- ``arcface``: an insightface ``arcface_torch`` IResNet (r18/r34/r50/r100, 512-d) loaded from its ``backbone.pth``
  state dict (``weights.arcface``), the network the papers' CSIM uses. The face is aligned to ArcFace's 112×112
  five-point template from dlib's 68 landmarks (eye centres, nose tip, mouth corners).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.checkpoint import WeightsError
from pipeline.metrics.dlib_face import DESCRIPTOR_NAME, DlibFace

ARCFACE_NAME = "arcface"
ARCFACE_SIZE = 112  # px, aligned input side
ARCFACE_DIMS = 512
# ArcFace's five-point template in a 112x112 crop: left eye, right eye, nose tip, left / right mouth corner
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)


@dataclass(frozen=True)
class CsimResult:
    """Mean cosine similarity of generated frames to the source identity.

    Attributes:
        csim: mean over frames with a face; frames_scored / frames: how many of the frames had one.
        extractor: identity network name.
    """

    csim: float
    frames_scored: int
    frames: int
    extractor: str


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) and (D,) or (N, D) arrays -> (N,)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


class IdentityEncoder(Protocol):
    name: str

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, D) embeddings, NaN rows where no face was found."""


class DlibIdentity:
    """dlib's ResNet descriptor as an :class:`IdentityEncoder`."""

    name = DESCRIPTOR_NAME

    def __init__(self, face: DlibFace | None = None) -> None:
        self.face = face or DlibFace.shared()

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.face.descriptors(frames)


def csim(encoder: IdentityEncoder, source: np.ndarray, frames: np.ndarray, name: str = "video") -> CsimResult:
    """CSIM of (T, H, W, 3) generated frames against one (H', W', 3) source portrait.

    Raises:
        ValueError: no face in the source, or in none of the frames (naming `name`).
    """
    src = encoder.embed(source[None])[0]  # (D,)
    if not np.isfinite(src).all():
        raise ValueError(f"{name}: no face found in the source image ({encoder.name})")
    emb = encoder.embed(frames)  # (T, D)
    ok = np.isfinite(emb).all(axis=1)
    if not ok.any():
        raise ValueError(f"{name}: no face found in any of its {len(frames)} frames ({encoder.name})")
    return CsimResult(float(cosine(emb[ok], src).mean()), int(ok.sum()), len(frames), encoder.name)


# ----------------------------------------------------------------------------------------------------------------
# ArcFace (insightface arcface_torch IResNet)
# ----------------------------------------------------------------------------------------------------------------
class IBasicBlock(nn.Module):
    """arcface_torch's pre-activation basic block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (+ skip)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out, eps=1e-5))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """arcface_torch's IResNet backbone: (B, 3, 112, 112) in [-1, 1] -> (B, 512) identity embedding.

    Args:
        layers: blocks per stage (r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3]).
    """

    WIDTHS = (64, 128, 256, 512)

    def __init__(self, layers: list[int], embed_dim: int = ARCFACE_DIMS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        c_in = 64
        for i, (n, c) in enumerate(zip(layers, self.WIDTHS)):
            blocks = [IBasicBlock(c_in, c, 2)] + [IBasicBlock(c, c, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, embed_dim)
        self.features = nn.BatchNorm1d(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.dropout(self.bn2(x)).flatten(1)  # (B, 25088)
        return self.features(self.fc(x))  # (B, 512)


def iresnet_layers(state: dict[str, torch.Tensor]) -> list[int]:
    """Blocks per stage read from an arcface_torch state dict's keys (``layer2.13.conv1.weight`` -> 14 blocks)."""
    layers = []
    for i in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}
        if not idx:
            raise KeyError(f"no layer{i}.* keys")
        layers.append(max(idx) + 1)
    return layers


def load_arcface(path: str | os.PathLike[str]) -> IResNet:
    """An arcface_torch IResNet from its ``backbone.pth`` (plain state dict), depth read from the keys; strict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such ArcFace weights file (insightface arcface_torch backbone.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = IResNet(iresnet_layers(state), embed_dim=int(state["features.weight"].shape[0]))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, OSError) as err:
        raise WeightsError(f"{path}: not an arcface_torch IResNet state dict ({err})") from err
    return model.eval()


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> (5, 2) ArcFace points: eye centres (36-41, 42-47), nose tip 30, mouth corners 48, 54."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def align_arcface(frame: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 + its 68 landmarks -> (112, 112, 3) uint8 aligned to the ArcFace template (similarity)."""
    m, _ = cv2.estimateAffinePartial2D(five_points(landmarks68).astype(np.float32),
                                       ARCFACE_TEMPLATE.astype(np.float32), method=cv2.LMEDS)
    if m is None:
        raise ValueError("degenerate landmarks: no similarity transform to the ArcFace template")
    return cv2.warpAffine(frame, m, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


class ArcFaceIdentity:
    """ArcFace embeddings of faces located and aligned with dlib's landmarks."""

    name = ARCFACE_NAME

    def __init__(self, model: IResNet, face: DlibFace | None = None, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.face = face or DlibFace.shared()
        self.device = device

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        track = self.face.landmarks(frames)
        out = np.full((len(frames), self.model.features.num_features), np.nan)
        idx = np.flatnonzero(track.found)
        if len(idx):
            chips = np.stack([align_arcface(frames[t], track.landmarks[t]) for t in idx])  # (n, 112, 112, 3)
            x = torch.from_numpy(chips).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (n, 3, 112, 112)
            out[idx] = self.model(x.to(self.device)).double().cpu().numpy()
        return out


def make_identity_encoder(arcface_weights: str | os.PathLike[str] | None,
                          device: str | torch.device = "cpu") -> IdentityEncoder:
    """ArcFace when its weights are given, else dlib's ResNet."""
    if arcface_weights is not None:
        return ArcFaceIdentity(load_arcface(arcface_weights), device=device)
    return DlibIdentity()
