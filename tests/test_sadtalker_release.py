"""SadTalker's release end to end (pipeline/models/sadtalker.py, `tavce animate --sadtalker`; issue 18): which file
fills what, the safetensors variant of each loader, and a checkpoint folder the test assembles in SadTalker's layout
(random weights at SadTalker's full sizes) animating a portrait through the CLI."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.checkpoint import WeightsError, write_safetensors
from pipeline.models import sadtalker
from pipeline.models.audio2coeff import Audio2Coeff, load_sadtalker_weights
from pipeline.models.renderer.renderer import Renderer, load_sadtalker_renderer, sadtalker_layout
from tests.deep3d_files import random_recon_net, write_bfm_folder, write_recon_checkpoint

OLD_FILES = ("auido2exp_00300-model.pth", "auido2pose_00140-model.pth", "facevid2vid_00189-model.pth.tar",
             "mapping_00229-model.pth.tar", "epoch_20.pth")


def _touch(folder: Path, *names: str) -> None:
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b"x")


def test_release_file_table_lists_every_file() -> None:
    assert set(sadtalker.RELEASE_FILES) == {
        "SadTalker_V0.0.2_256.safetensors", *OLD_FILES, "mapping_00109-model.pth.tar",
        "BFM_Fitting/BFM_model_front.mat", "BFM_Fitting/similarity_Lm3D_all.mat"}


def test_resolve_release_old_layout_safetensors_layout_and_missing_files(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sadtalker.SadTalkerReleaseError) as err:
        sadtalker.resolve_release(empty)
    msg = str(err.value)
    for what in ("ExpNet + PoseVAE", "renderer", "MappingNet", "Deep3DFaceRecon", "BFM_model_front.mat",
                 "similarity_Lm3D_all.mat", "SadTalker_V0.0.2_256.safetensors", "auido2exp_00300-model.pth",
                 "facevid2vid_00189-model.pth.tar", "mapping_00229-model.pth.tar", "epoch_20.pth"):
        assert what in msg, what

    old = tmp_path / "SadTalker"  # the repository root: checkpoints/ inside
    _touch(old / "checkpoints", *OLD_FILES, "BFM_Fitting/BFM_model_front.mat", "BFM_Fitting/similarity_Lm3D_all.mat")
    r = sadtalker.resolve_release(old)
    ck = old / "checkpoints"
    assert (r.folder, r.audio2coeff, r.renderer, r.mapping, r.mapping_dim, r.recon, r.bfm_folder) == (
        ck, ck, ck / "facevid2vid_00189-model.pth.tar", ck / "mapping_00229-model.pth.tar", 70, ck / "epoch_20.pth",
        ck / "BFM_Fitting")
    assert sadtalker.resolve_release(ck) == r

    new = tmp_path / "new"  # the safetensors release: mapping 00109 only, the standard landmarks in src/config
    _touch(new, "checkpoints/SadTalker_V0.0.2_256.safetensors", "checkpoints/mapping_00109-model.pth.tar",
           "src/config/BFM_model_front.mat", "src/config/similarity_Lm3D_all.mat")
    r = sadtalker.resolve_release(new)
    st = new / "checkpoints/SadTalker_V0.0.2_256.safetensors"
    assert (r.audio2coeff, r.renderer, r.recon, r.mapping_dim, r.bfm_folder) == (st, st, st, 73, new / "src/config")
    assert sadtalker.resolve_release(st) == r  # the safetensors file itself
    assert sadtalker.renderer_config(r).mapping.coeff_dim == 73
    with pytest.raises(sadtalker.SadTalkerReleaseError, match="SadTalker_V0.0.2_512.safetensors"):
        sadtalker.resolve_release(new, size=512)
    with pytest.raises(sadtalker.SadTalkerReleaseError, match="no such"):
        sadtalker.resolve_release(tmp_path / "nope")


def test_renderer_and_audio2coeff_load_from_the_safetensors_and_a_folder(tmp_path) -> None:
    """The combined safetensors layout (flat generator.*, kp_extractor.*, audio2exp.*, audio2pose.*, no
    he_estimator) fills the same weights as the .pth files; a release folder works as `weights.sadtalker`."""
    from tests.test_audio2coeff import sadtalker_state
    from tests.test_animate import TINY_COEFF as cfg

    torch.manual_seed(0)
    src = Renderer(cfg)
    layout = sadtalker_layout(src)
    flat = {f"{'kp_extractor' if part == 'kp_detector' else part}.{k}": v
            for part, d in layout.items() if part not in ("he_estimator", "mapping") for k, v in d.items()}
    a2c = Audio2Coeff()
    flat.update({k: v for k, v in sadtalker_state(a2c).items() if k.startswith("audio2")})
    flat["face_3drecon.backbone.conv1.weight"] = torch.zeros(1)  # another part: ignored by both loaders
    ck = tmp_path / "checkpoints"
    write_safetensors(flat, ck / "SadTalker_V0.0.2_256.safetensors")
    torch.save({"mapping": layout["mapping"], "epoch": 229}, ck / "mapping_00229-model.pth.tar")

    dst = Renderer(cfg)
    he_before = {k: v.clone() for k, v in dst.he_estimator.state_dict().items()}
    assert load_sadtalker_renderer(dst, tmp_path) == ["generator", "kp_detector", "mapping"]  # the folder
    for k, v in src.state_dict().items():
        if k.startswith("cerl."):  # not SadTalker's: keeps its own init
            continue
        if k.startswith("he_estimator."):  # not in the safetensors: kept
            torch.testing.assert_close(dst.state_dict()[k], he_before[k[len("he_estimator."):]])
        else:
            torch.testing.assert_close(dst.state_dict()[k], v, msg=k)

    other = Audio2Coeff()
    load_sadtalker_weights(other, tmp_path)  # folder -> its safetensors
    torch.testing.assert_close(other.expnet.mapping1.weight, flat["audio2exp.mapping1.weight"])
    torch.testing.assert_close(other.pose.netG.decoder.pose_linear.weight,
                               flat["audio2pose.netG.decoder.pose_linear.weight"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no SadTalker Audio2Coeff weights"):
        load_sadtalker_weights(Audio2Coeff(), tmp_path / "empty")
    with pytest.raises(WeightsError, match="no SadTalker renderer weights"):
        load_sadtalker_renderer(Renderer(cfg), tmp_path / "empty")


def test_mapping_windows_append_the_alignment_for_a_73_input_mapping_net() -> None:
    from pipeline.animate import AnimateError, Portrait, mapping_windows
    from pipeline.faces.crop import CropBox

    coeffs = np.random.default_rng(0).normal(size=(5, 73)).astype(np.float32)
    p = Portrait(np.zeros((4, 4, 3), np.uint8), CropBox(0, 0, 4), np.zeros((4, 4, 3), np.uint8), coeffs[0], 1,
                 align=np.array([256.0, 256.0, 1.5, 120.0, 130.0]))
    w70 = mapping_windows(coeffs, [0, 4], 27, 70, p)
    w73 = mapping_windows(coeffs, [0, 4], 27, 73, p)
    assert w70.shape == (2, 70, 27) and w73.shape == (2, 73, 27)
    np.testing.assert_array_equal(w73[:, :70], w70)
    np.testing.assert_array_equal(w73[:, 70:, 5], [[1.5, 120.0, 130.0]] * 2)
    with pytest.raises(AnimateError, match="73"):
        mapping_windows(coeffs, [0], 27, 73, dataclasses.replace(p, align=None))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """A SadTalker repository with checkpoints/ in the older .pth layout, random weights at full size."""
    from tests.test_audio2coeff import sadtalker_state

    root = tmp_path_factory.mktemp("SadTalker")
    ck = root / "checkpoints"
    ck.mkdir()
    torch.manual_seed(0)
    r = Renderer(sadtalker.renderer_config(sadtalker.SadTalkerRelease(ck, ck, ck, ck, 70, ck, ck, 256)))
    layout = sadtalker_layout(r)
    torch.save({**{p: layout[p] for p in ("generator", "kp_detector", "he_estimator")}, "epoch": 189},
               ck / "facevid2vid_00189-model.pth.tar")
    torch.save({"mapping": layout["mapping"], "epoch": 109}, ck / "mapping_00229-model.pth.tar")
    probe = {"mapping.first.0.weight": layout["mapping"]["first.0.weight"][:4].clone(),
             "generator.decoder": next(iter(layout["generator"].values())).flatten()[:8].clone()}
    del r, layout
    gc.collect()
    state = sadtalker_state(Audio2Coeff())
    for part, fname in (("audio2exp", "auido2exp_00300-model.pth"), ("audio2pose", "auido2pose_00140-model.pth")):
        torch.save({"model": {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")},
                    "epoch": 1}, ck / fname)
    probe["expnet.mapping1.weight"] = state["audio2exp.mapping1.weight"]
    net = random_recon_net(seed=2)
    write_recon_checkpoint(ck / "epoch_20.pth", net)
    write_bfm_folder(ck / "BFM_Fitting")
    return {"root": root, "probe": probe, "recon": net}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_release_fills_every_network_strictly(release) -> None:
    models = sadtalker.load_release(release["root"], image_size=128)
    p = release["probe"]
    torch.testing.assert_close(models.renderer.mapping.first[0].weight[:4], p["mapping.first.0.weight"])
    torch.testing.assert_close(models.audio2coeff.expnet.mapping1.weight, p["expnet.mapping1.weight"])
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(models.estimator.net(x), release["recon"](x), rtol=1e-5, atol=1e-6)
    assert models.renderer.cerl is None and not models.renderer.cfg.align_corners
    assert models.renderer.cfg.image_size == 128 and models.renderer.cfg.mapping.coeff_dim == 70
    assert set(models.sources()) == {"renderer", "mapping", "audio2coeff", "coeff_estimator", "bfm_folder"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tavce_animate_sadtalker_writes_a_video(release, tmp_path) -> None:
    from pipeline import media
    from stages import tavce as cli
    from tests.mediagen import astronaut
    from tests.test_animate import _audio

    Image.fromarray(astronaut(256)).save(tmp_path / "portrait.png")
    _audio(tmp_path / "speech.wav", 0.6)
    out = tmp_path / "talk.mp4"
    assert cli.main(["animate", "--image", str(tmp_path / "portrait.png"), "--audio", str(tmp_path / "speech.wav"),
                     "--out", str(out), "--sadtalker", str(release["root"]), "--render-size", "128",
                     "--device", "cpu", "--quiet", "--batch-size", "4"]) == 0
    video = media.read_video(out)
    assert video.frames.shape[1:] == (128, 128, 3) and len(video.frames) == 15  # 0.6 s at 25 fps
    assert media.read_audio(out, sample_rate=16000).shape[0] > 0.5 * 16000
    with pytest.raises(SystemExit, match="incomplete SadTalker release"):
        cli.main(["animate", "--image", str(tmp_path / "portrait.png"), "--audio", str(tmp_path / "speech.wav"),
                  "--out", str(tmp_path / "x.mp4"), "--sadtalker", str(tmp_path)])
