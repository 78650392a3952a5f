"""Hopenet head-pose network (Ruiz et al., 2018), the pose teacher of face-vid2vid's head-pose loss (method.md §4.3).

A torchvision ResNet50 trunk whose classifier is replaced by three 66-bin heads (``fc_yaw``, ``fc_pitch``,
``fc_roll``; 3° bins from −99° to +96°, decoded by :func:`pipeline.models.renderer.keypoints.bins_to_degrees`).
Key names follow the public ``hopenet_robust_alpha1.pkl``, so that file loads strictly (its unused
``fc_finetune`` layer is dropped). Without such a file there is no pose teacher and the head-pose loss is off
(weight 0), as method.md §4.3 prescribes: a randomly initialised teacher would only inject noise.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import load_state_strict, map_keys, read_weight_file

NUM_BINS = 66
INPUT_SIZE = 224  # Hopenet's input side
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Hopenet(nn.Module):
    """ResNet50 + yaw / pitch / roll bin classifiers. Input (B, 3, H, W) in [0, 1]; output three (B, 66) logits."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        trunk = torchvision.models.resnet50(weights=None)
        # Reuse the trunk's layers under their torchvision names (conv1, bn1, layer1..4), as Hopenet does.
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_yaw = nn.Linear(2048, NUM_BINS)
        self.fc_pitch = nn.Linear(2048, NUM_BINS)
        self.fc_roll = nn.Linear(2048, NUM_BINS)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> yaw, pitch, roll logits, (B, 66) each."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"Hopenet expects (B, 3, H, W) images, got {tuple(image.shape)}")
        x = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)  # (B,3,224,224)
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, 7, 7)
        x = self.avgpool(x).flatten(1)  # (B, 2048)
        return self.fc_yaw(x), self.fc_pitch(x), self.fc_roll(x)


def load_hopenet(path: str | os.PathLike[str]) -> Hopenet:
    """A frozen, eval-mode Hopenet from ``hopenet_robust_alpha1.pkl`` (or any state dict of the same layout)."""
    state = read_weight_file(path)
    state = map_keys(state, [("", "")], str(path), drop=("fc_finetune.",))
    model = Hopenet()
    load_state_strict(model, state, str(path))
    model.eval()
    model.requires_grad_(False)
    return model
