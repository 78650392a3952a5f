"""Test-made stand-ins for the files of SadTalker's release that the `deep3d` backend reads (issue 18): a small
BFM-format ``BFM_model_front.mat``, a ``similarity_Lm3D_all.mat``, and Deep3DFaceRecon's ``epoch_20.pth`` written from
an *independent* transcription of its ReconNetWrapper (below), so loading it into `pipeline.faces.deep3d.ReconNet`
checks the layout rather than the module against itself.

The transcription follows sicxu/Deep3DFaceRecon_pytorch ``models/networks.py`` (``ReconNetWrapper`` with
``resnet50``, ``use_last_fc=False``): a torchvision-style ResNet-50 (``conv1`` 7x7/2, ``bn1``, max pool, ``layer1..4``
of 3, 4, 6, 3 bottlenecks of widths 64, 128, 256, 512, expansion 4, the stride on the 3x3 conv, a 1x1 conv + BN
``downsample`` on each layer's first block, average pool, no ``fc``), then ``final_layers``: seven 1x1 convs with
bias from 2048 channels to 80, 64, 80, 3, 27, 2, 1 outputs, concatenated and flattened to 257.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.io import savemat
from torch import nn

from pipeline.faces.mediapipe68 import TEMPLATE_68

HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, (tx, ty), tz
LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride) of layer1..4


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(4 * width)) if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, blocks, stride) in enumerate(LAYERS, start=1):
            mods = [Bottleneck(cin, width, stride, True)] + [Bottleneck(4 * width, width, 1, False)
                                                              for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*mods))
            cin = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3), keepdim=True)  # (B, 2048, 1, 1)


class ReconNetTranscription(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, n, 1, bias=True) for n in HEAD_SIZES])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return torch.cat([head(f) for head in self.final_layers], 1).flatten(1)


def random_recon_net(seed: int = 0, head_scale: float = 1e-3) -> ReconNetTranscription:
    """The transcription with random weights *and* BN statistics (so eval-mode BN is exercised), in eval mode.
    Heads are scaled down so the coefficients stay in a plausible range (small angles, small translation)."""
    gen = torch.Generator().manual_seed(seed)
    net = ReconNetTranscription()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias")) or ".bias" in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif "bn" in name or "downsample.1" in name:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:  # conv weights: He-like scale keeps activations bounded through 50 layers
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
        for head in net.final_layers:
            head.weight.mul_(head_scale)
            head.bias.mul_(head_scale)
    return net.eval()


def write_recon_checkpoint(path: Path, net: nn.Module) -> Path:
    """Deep3DFaceRecon's checkpoint layout: the network under ``net_recon`` beside training state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net_recon": net.state_dict(), "epoch": 20}, path)
    return path


def standard_landmarks68() -> np.ndarray:
    """A 68x3 "standard face" in BFM-like units (y up, z towards the camera, about one unit between the outer eye
    corners), made from the project's landmark template."""
    return np.asarray(TEMPLATE_68, np.float64) * np.array([1.0, -1.0, -1.0])


def write_standard_landmarks(folder: Path, lm: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "similarity_Lm3D_all.mat", {"lm": standard_landmarks68() if lm is None else lm})
    return folder / "similarity_Lm3D_all.mat"


def write_bfm(folder: Path, n_extra: int = 32, seed: int = 0, basis_scale: float = 0.01) -> dict[str, np.ndarray]:
    """A BFM_model_front.mat with 68 + n_extra vertices, in the released field layout (meanshape (1, 3N), idBase
    (3N, 80), exBase (3N, 64), keypoints (1, 68) 1-based, meantex, texBase, tri, point_buf). The landmark vertices
    are scattered among the others (a permutation), and the mean shape is not centred (the loader must re-centre it
    over *all* vertices). Returns the arrays written, plus ``kp`` (0-based) for tests."""
    rng = np.random.default_rng(seed)
    n = 68 + n_extra
    verts = np.concatenate([standard_landmarks68(), rng.normal(0, 0.5, (n_extra, 3))])  # (N, 3)
    order = rng.permutation(n)  # vertex order in the file
    mean = np.empty((n, 3))
    mean[order] = verts
    mean += np.array([0.3, -0.2, 0.5])  # an offset the re-centring removes
    kp = order[:68]  # file vertex index of landmark k
    id_base = rng.normal(0, basis_scale, (3 * n, 80))
    exp_base = rng.normal(0, basis_scale, (3 * n, 64))
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"meanshape": mean.reshape(1, -1), "idBase": id_base, "exBase": exp_base,
              "keypoints": (kp + 1).reshape(1, -1).astype(np.float64), "meantex": np.full((1, 3 * n), 128.0),
              "texBase": np.zeros((3 * n, 80)), "tri": np.array([[1, 2, 3]], np.float64),
              "point_buf": np.ones((n, 8))}
    savemat(folder / "BFM_model_front.mat", fields)
    return {**fields, "kp": kp, "mean_vertices": mean}


def write_bfm_folder(folder: Path, seed: int = 0) -> Path:
    """Both BFM files SadTalker ships in checkpoints/BFM_Fitting."""
    write_bfm(folder, seed=seed)
    write_standard_landmarks(folder)
    return folder
