"""Deep3DFaceRecon's reconstruction network and the deep3d estimator (pipeline/faces/deep3d.py): the state-dict layout
against the published definition, identical outputs with a checkpoint saved from an independent transcription
(tests/deep3d_files.py), the safetensors variant, the estimator on a real face, and the missing-file message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.checkpoint import WeightsError, write_safetensors
from pipeline.faces import deep3d
from tests.deep3d_files import LAYERS, random_recon_net, write_bfm_folder, write_recon_checkpoint


def published_recon_keys() -> dict[str, tuple[int, ...]]:
    """name -> shape of ReconNetWrapper('resnet50', use_last_fc=False), as read from sicxu/Deep3DFaceRecon_pytorch
    models/networks.py (torchvision's ResNet-50 layout under ``backbone.``, no ``fc``; 7 heads under
    ``final_layers.``), written out from that description rather than taken from either implementation."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    keys["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    cin = 64
    for i, (width, blocks, _) in enumerate(LAYERS, start=1):
        for b in range(blocks):
            p = f"backbone.layer{i}.{b}"
            keys[f"{p}.conv1.weight"] = (width, cin, 1, 1)
            bn(f"{p}.bn1", width)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            keys[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * width, cin, 1, 1)
                bn(f"{p}.downsample.1", 4 * width)
            cin = 4 * width
    for j, n in enumerate((80, 64, 80, 3, 27, 2, 1)):  # id, exp, tex, angle, gamma, (tx, ty), tz
        keys[f"final_layers.{j}.weight"] = (n, 2048, 1, 1)
        keys[f"final_layers.{j}.bias"] = (n,)
    return keys


def test_recon_net_layout_matches_the_published_definition() -> None:
    want = published_recon_keys()
    got = {k: tuple(v.shape) for k, v in deep3d.ReconNet().state_dict().items()}
    assert got == want
    assert len(want) == 332  # torchvision ResNet-50 has 320 entries; without fc 318, plus 7 x 2 head tensors
    assert sum(int(np.prod(s)) for k, s in want.items() if not k.endswith("num_batches_tracked")
               and "running" not in k) == 23_508_032 + 2048 * 257 + 257  # ResNet-50 w/o fc + the 257-d heads
    assert deep3d.NUM_COEFFS == 257
    assert [(s.start, s.stop) for s in deep3d.SLICES.values()] == [(0, 80), (80, 144), (144, 224), (224, 227),
                                                                    (227, 254), (254, 257)]


@pytest.fixture(scope="module")
def transcription() -> torch.nn.Module:
    return random_recon_net(seed=3)


def test_checkpoint_from_a_transcription_loads_and_gives_identical_outputs(tmp_path, transcription) -> None:
    path = write_recon_checkpoint(tmp_path / "epoch_20.pth", transcription)
    net = deep3d.load_recon_net(path)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = transcription(x)
        got = net(x)
    assert got.shape == (2, 257)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the same weights inside SadTalker's combined safetensors, under face_3drecon. beside other parts
    combined = {f"face_3drecon.{k}": v for k, v in transcription.state_dict().items()}
    combined["audio2exp.mapping1.weight"] = torch.zeros(2, 2)
    write_safetensors(combined, tmp_path / "SadTalker_V0.0.2_256.safetensors")
    with torch.no_grad():
        got2 = deep3d.load_recon_net(tmp_path / "SadTalker_V0.0.2_256.safetensors")(x)
    torch.testing.assert_close(got2, want, rtol=1e-5, atol=1e-6)
    # a file of another network fails with the keys named
    torch.save({"net_recon": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        deep3d.load_recon_net(tmp_path / "bad.pth")
    write_safetensors({"generator.x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="face_3drecon"):
        deep3d.load_recon_net(tmp_path / "other.safetensors")


def test_estimator_on_a_real_face(tmp_path, transcription) -> None:
    """astronaut's crop with mediapipe landmarks -> 257 coefficients per frame; a frame without landmarks -> NaN."""
    from pipeline.faces.landmarks import make_backend
    from tests.mediagen import astronaut

    face = astronaut(128)
    backend = make_backend("mediapipe")
    try:
        lms = backend.process(face[None]).landmarks  # (1, 68, 3)
    finally:
        backend.close()
    frames = np.stack([face, face])
    lm = np.concatenate([lms, np.full_like(lms, np.nan)])  # (2, 68, 3)
    est = deep3d.Deep3DEstimator.from_files(write_recon_checkpoint(tmp_path / "epoch_20.pth", transcription),
                                            write_bfm_folder(tmp_path / "BFM_Fitting"))
    res = est(frames, lm)
    assert res.coeffs.shape == (2, 257) and res.align.shape == (2, 5) and res.landmark_error.shape == (2,)
    assert np.isfinite(res.coeffs[0]).all() and np.isnan(res.coeffs[1]).all()
    assert res.align[0, :2].tolist() == [128, 128] and res.align[0, 2] > 0
    assert np.isfinite(res.landmark_error[0])
    motion = res.motion
    assert motion.shape == (2, 70)
    np.testing.assert_array_equal(motion[0, :64], res.coeffs[0, 80:144])
    np.testing.assert_array_equal(motion[0, 64:67], res.coeffs[0, 224:227])
    np.testing.assert_array_equal(motion[0, 67:70], res.coeffs[0, 254:257])


def test_missing_files_name_each_file_and_setting(tmp_path) -> None:
    missing = deep3d.missing_files(None, None)
    assert [role for role, _ in missing] == ["checkpoint", "bfm_folder", "bfm_folder"]
    assert "epoch_20.pth" in missing[0][1] and "similarity_Lm3D_all.mat" in missing[1][1]
    assert "BFM_model_front.mat" in missing[2][1]
    write_bfm_folder(tmp_path)
    (tmp_path / "epoch_20.pth").write_bytes(b"x")
    assert deep3d.missing_files(tmp_path / "epoch_20.pth", tmp_path) == []
