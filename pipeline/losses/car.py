"""CAR, the correlation-aware audio-visual regularisation of TAVCE's audio-driven stage (TAVCE §III-D, Eq. 6;
method.md §5).

    L_CAR = 1 − ⟨C^a_{i−1,i}, C^v_{i−1,i}⟩

``C^a_{i−1,i}`` is the temporal relationship (TAVCE Eq. 2) of the frozen TAVC audio encoder's features of the mel
windows of frames i−1 and i; ``C^v_{i−1,i}`` that of the frozen visual encoder's features of the mouth ROI of the
REAL frame v_{i−1} (detached: a fixed anchor) and of the GENERATED frame v̂_i. The loss is small when the change of
the generated mouth from the previous real frame correlates with the change of the audio; its gradient reaches the
renderer (and MappingNet) through v̂_i only. ⟨·,·⟩ is :func:`pipeline.losses.tavc.tavc_similarity` (= cos² of
the feature differences, in [0, 1]), so L_CAR ∈ [0, 1]; a generated mouth that does not move (v̂_i's ROI = v_{i−1}'s)
gives exactly 1.

The ROI is the one the TAVC metric was trained on (`pipeline.data.corpus.mouth_roi`: a 72/256-of-the-crop square
around the median mouth landmark, resized to 112 x 112), cut here with a differentiable bilinear ``grid_sample``
(edge pixels repeated, as the NumPy version's BORDER_REPLICATE). Where the ROI sits comes from landmarks: those of
v_{i−1} for the real frame and those of the driving frame v_i for the generated one (the generated frame should show
the driving frame's mouth, so its mouth is where the driving frame's is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.data.corpus import MOUTH, MOUTH_BOX_PX, MOUTH_ROI_SIZE, REFERENCE_CROP
from pipeline.losses.tavc import tavc_similarity
from pipeline.models.tavc import TAVC


def mouth_roi_torch(images: torch.Tensor, landmarks: torch.Tensor, size: int = MOUTH_ROI_SIZE,
                    box: float = MOUTH_BOX_PX, reference: int = REFERENCE_CROP) -> torch.Tensor:
    """Differentiable twin of :func:`pipeline.data.corpus.mouth_roi` for a batch of square face crops.

    Args:
        images: (B, 3, S, S) face crops in [0, 1].
        landmarks: (B, 68, 2) landmarks in pixels of those images (pixel centres at integers).
        size: side of the ROI (112).
        box: side of the square for a `reference`-pixel crop, scaled to S.
    Returns:
        (B, 3, size, size) ROIs in [-1, 1] (the TAVC visual encoder's input range).
    """
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"mouth_roi_torch: expected (B, 3, S, S) square crops, got {tuple(images.shape)}")
    if landmarks.shape != (images.shape[0], 68, 2):
        raise ValueError(f"mouth_roi_torch: expected ({images.shape[0]}, 68, 2) landmarks, "
                         f"got {tuple(landmarks.shape)}")
    s_img = images.shape[-1]
    side = box * s_img / reference  # the ROI's side in image pixels
    centre = torch.quantile(landmarks[:, MOUTH].to(images.dtype), 0.5, dim=1)  # (B, 2), NumPy's median
    u = torch.arange(size, dtype=images.dtype, device=images.device) - size / 2  # ROI pixel offsets from the centre
    step = side / size  # image pixels per ROI pixel
    xs = centre[:, 0, None] + u[None] * step  # (B, size) image x of each ROI column
    ys = centre[:, 1, None] + u[None] * step  # (B, size)
    gx = 2 * xs / (s_img - 1) - 1  # align_corners=True: -1 and 1 are the centres of the edge pixels
    gy = 2 * ys / (s_img - 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, size, size, 2) (x, y)
    roi = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return roi * 2 - 1  # (B, 3, size, size)


@dataclass(frozen=True)
class CAROutput:
    """One batch of CAR: the loss (scalar mean of Eq. 6) and the per-sample similarity ⟨C^a, C^v⟩ (B,)."""

    loss: torch.Tensor
    similarity: torch.Tensor


class CARLoss:
    """TAVCE Eq. 6 with a frozen TAVC metric (its parameters never receive gradients; it stays in eval mode)."""

    def __init__(self, tavc: TAVC) -> None:
        self.tavc = tavc.eval().requires_grad_(False)

    def __call__(self, mel: torch.Tensor, real_previous: torch.Tensor, generated: torch.Tensor,
                 landmarks_previous: torch.Tensor, landmarks_current: torch.Tensor) -> CAROutput:
        """Args:
            mel: (B, 2, 1, 80, 16) mel windows of frames i−1 and i.
            real_previous: (B, 3, S, S) the real frame v_{i−1} in [0, 1] (detached here).
            generated: (B, 3, S, S) the generated frame v̂_i in [0, 1] (gradients flow into it).
            landmarks_previous, landmarks_current: (B, 68, 2) landmarks (S px) of v_{i−1} and of the driving v_i.
        """
        if mel.dim() != 5 or mel.shape[1] != 2:
            raise ValueError(f"CAR: expected (B, 2, 1, 80, 16) mel windows of frames i-1 and i, got {tuple(mel.shape)}")
        b = mel.shape[0]
        with torch.no_grad():
            f_a = self.tavc.encode_audio(mel.flatten(0, 1)).unflatten(0, (b, 2))  # (B, 2, D)
            f_prev = self.tavc.encode_visual(mouth_roi_torch(real_previous.detach(), landmarks_previous))  # (B, D)
        f_cur = self.tavc.encode_visual(mouth_roi_torch(generated, landmarks_current))  # (B, D)
        similarity = tavc_similarity(f_a[:, 0], f_a[:, 1], f_prev, f_cur)  # (B,) in [0, 1]
        return CAROutput(loss=(1.0 - similarity).mean(), similarity=similarity.detach())


__all__ = ["CARLoss", "CAROutput", "mouth_roi_torch"]
