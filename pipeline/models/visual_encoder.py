"""Visual backbones for the 112 x 112 mouth ROI of the TAVC metric (method.md §3.1, ``E^v`` before its FC -> 128).

Two backbones, chosen by ``visual_backbone``:

- ``resnet18`` — He et al. ResNet-18 (the paper), with torchvision's module names (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...), so an ImageNet ``resnet18-*.pth`` loads strictly once its
  ``fc.*`` keys are dropped (the classifier is replaced by the TAVC FC). Output: global average pool, 512-d.
- ``iresnet18`` — the ArcFace IResNet-18 of insightface ``arcface_torch/backbones/iresnet.py`` (the authors'
  release), with its module names (``conv1, bn1, prelu, layer1-4`` of ``IBasicBlock`` = ``bn1, conv1, bn2, prelu,
  conv2, bn3, downsample``, then ``bn2, fc, features``), so an arcface_torch ``backbone.pth`` (r18) loads strictly.
  Output: the 512-d ``features`` embedding (flatten of the 7 x 7 map -> fc -> BatchNorm1d).

Both accept a width multiplier for small CPU configurations (pretrained weights need width 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

VisualBackbone = Literal["resnet18", "iresnet18"]
ROI_SIZE = 112  # the mouth ROI side (method.md §1); IResNet's fc is sized for it (7 x 7 after four stride-2 stages)
_STAGE_CHANNELS = (64, 128, 256, 512)
_RESNET18_BLOCKS = (2, 2, 2, 2)


def _width(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


# ----------------------------------------------------------------------------------------------------------------
# ResNet-18 (torchvision key names)
# ----------------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: conv3x3-bn-relu-conv3x3-bn + (downsampled) identity, relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 trunk without its classifier: image (B, 3, H, W) -> pooled feature (B, 512 * width).

    At 112 x 112: stem (stride 2 + max-pool) -> 28 x 28, layer1 28, layer2 14, layer3 7, layer4 4, average pool.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        chans = [_width(c, width) for c in _STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(3, chans[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = chans[0]
        for idx, (cout, blocks) in enumerate(zip(chans, _RESNET18_BLOCKS)):
            stride = 1 if idx == 0 else 2
            layer = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx + 1}", nn.Sequential(*layer))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = chans[-1]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C0, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C3, H/32, W/32)
        return self.avgpool(x).flatten(1)  # (B, C3)


# ----------------------------------------------------------------------------------------------------------------
# IResNet-18 (insightface arcface_torch key names)
# ----------------------------------------------------------------------------------------------------------------
class IBasicBlock(nn.Module):
    """arcface_torch ``IBasicBlock``: bn-conv3x3-bn-prelu-conv3x3(stride)-bn + (downsampled) identity, no final act."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-05)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-05)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-05)
        self.downsample = (nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout, eps=1e-05))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.prelu(self.bn2(self.conv1(self.bn1(x))))
        out = self.bn3(self.conv2(out))
        return out + identity


class IResNet18(nn.Module):
    """ArcFace IResNet-18: 112 x 112 image (B, 3, 112, 112) -> embedding (B, 512 * width).

    Stem conv stride 1 (112), four stride-2 stages (56, 28, 14, 7), bn2, flatten (B, C * 7 * 7), fc, BatchNorm1d
    ``features`` whose scale is frozen at 1 (as in arcface_torch).
    """

    fc_scale = 7 * 7  # spatial positions after the four stages at 112 x 112

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        chans = [_width(c, width) for c in _STAGE_CHANNELS]
        num_features = _width(512, width)
        self.conv1 = _conv3x3(3, chans[0])
        self.bn1 = nn.BatchNorm2d(chans[0], eps=1e-05)
        self.prelu = nn.PReLU(chans[0])
        cin = chans[0]
        for idx, (cout, blocks) in enumerate(zip(chans, _RESNET18_BLOCKS)):
            layer = [IBasicBlock(cin, cout, 2)] + [IBasicBlock(cout, cout) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx + 1}", nn.Sequential(*layer))
            cin = cout
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-05)
        self.fc = nn.Linear(cin * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.out_features = num_features
        for m in self.modules():  # arcface_torch's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (ROI_SIZE, ROI_SIZE):
            raise ValueError(f"IResNet18 expects {ROI_SIZE}x{ROI_SIZE} images, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, C0, 112, 112)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C3, 7, 7)
        x = self.bn2(x).flatten(1)  # (B, C3 * 49)
        return self.features(self.fc(x))  # (B, F)


def build_visual_backbone(name: VisualBackbone, width: float = 1.0) -> ResNet18 | IResNet18:
    """The backbone called `name` at the given width; it exposes ``out_features``."""
    if name == "resnet18":
        return ResNet18(width)
    if name == "iresnet18":
        return IResNet18(width)
    raise ValueError(f"unknown visual backbone {name!r} (resnet18 | iresnet18)")
