"""CSIM (pipeline/metrics/csim.py) with dlib's real pretrained ResNet; the ArcFace IResNet loader and alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import WeightsError
from pipeline.metrics import csim as C
from pipeline.synth.face import FaceRenderer, sample_appearance
from tests.mediagen import astronaut


def synthetic_face(seed: int = 1, size: int = 256) -> np.ndarray:
    return FaceRenderer(sample_appearance(np.random.default_rng(seed), (size, size))).render(0.0, 0.0, 0.0)[0]


def test_cosine_known_values() -> None:
    np.testing.assert_allclose(C.cosine(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([2.0, 0.0])),
                               [1.0, 1 / np.sqrt(2)])


def test_csim_of_a_face_with_its_mirror_beats_another_face() -> None:
    """dlib_resnet_v1: the mirrored astronaut is the same person (cos ~0.99), a synthetic face is not."""
    enc = C.DlibIdentity()
    face = astronaut(256)
    mirror = C.csim(enc, face, face[:, ::-1][None].copy())
    other = C.csim(enc, face, synthetic_face()[None])
    assert mirror.extractor == "dlib_resnet_v1" and mirror.frames_scored == 1
    assert mirror.csim > 0.97 and mirror.csim > other.csim + 0.05
    assert C.csim(enc, face, face[None]).csim == pytest.approx(1.0, abs=1e-9)


def test_csim_names_the_video_without_a_face() -> None:
    enc = C.DlibIdentity()
    blank = np.full((2, 128, 128, 3), 127, np.uint8)
    with pytest.raises(ValueError, match="clip7.mp4: no face found in any"):
        C.csim(enc, astronaut(256), blank, name="clip7.mp4")


def test_arcface_alignment_maps_the_five_points_onto_the_template() -> None:
    """A face whose five points are the template scaled x2 and shifted: the warp undoes exactly that."""
    lm = np.zeros((68, 2))
    pts = C.ARCFACE_TEMPLATE * 2 + 10  # (5, 2)
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = pts[0], pts[1], pts[2], pts[3], pts[4]
    np.testing.assert_allclose(C.five_points(lm), pts)
    frame = np.zeros((260, 260, 3), np.uint8)
    x, y = pts[2].astype(int)
    frame[y - 3:y + 4, x - 3:x + 4] = 255  # a white square on the nose tip
    chip = C.align_arcface(frame, lm)
    assert chip.shape == (112, 112, 3)
    yy, xx = np.nonzero(chip[..., 0] > 128)
    assert abs(xx.mean() - C.ARCFACE_TEMPLATE[2, 0]) < 1.0 and abs(yy.mean() - C.ARCFACE_TEMPLATE[2, 1]) < 1.0


def test_arcface_loader_reads_depth_from_the_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = C.IResNet([1, 2, 1, 1]).eval()
    path = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), path)
    loaded = C.load_arcface(path)
    assert C.iresnet_layers(loaded.state_dict()) == [1, 2, 1, 1]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    enc = C.ArcFaceIdentity(loaded)
    emb = enc.embed(np.stack([astronaut(256), np.full((256, 256, 3), 127, np.uint8)]))
    assert emb.shape == (2, C.ARCFACE_DIMS) and np.isfinite(emb[0]).all() and np.isnan(emb[1]).all()
    assert enc.name == "arcface"
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        C.load_arcface(tmp_path / "bad.pth")
