"""`tavce animate` / `tavce export` (pipeline/animate.py, pipeline/bundle.py, stages/tavce.py) end to end on tiny
models the test builds: a renderer driven by coefficients (MappingNet + CERL), Audio2Coeff, TAVC, an expression
basis; real faces from scikit-image's astronaut photo; audio made with ffmpeg."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import media
from pipeline.animate import AnimateError, animate, default_batch_size, find_portrait, load_models, read_image
from pipeline.bundle import BundleError, read_manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.config import to_dict
from pipeline.models.audio2coeff import Audio2Coeff
from pipeline.models.renderer.renderer import Renderer
from pipeline.models.tavc import TAVC
from stages import tavce as cli
from tests.mediagen import astronaut
from tests.test_audio2coeff import TINY as TINY_A2C, random_basis
from tests.test_renderer_train import TINY, TINY_TAVC
from tests.test_tavce_train import TINY_MAPPING

TINY_COEFF = dataclasses.replace(TINY, motion_source="coefficients", mapping=TINY_MAPPING)


def _save(path: Path, kind: str, model: torch.nn.Module, cfg) -> None:
    save_checkpoint(path, kind=kind, config={"model": to_dict(cfg)}, model=model, optimizer=None, step=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A pipeline run's layout: <root>/models/{renderer,audio2coeff,tavc}/checkpoint.pt and
    <root>/data/processed/expression_basis.npz."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    _save(root / "models/renderer/checkpoint.pt", "renderer", Renderer(TINY_COEFF), TINY_COEFF)
    _save(root / "models/audio2coeff/checkpoint.pt", "audio2coeff", Audio2Coeff(TINY_A2C), TINY_A2C)
    _save(root / "models/tavc/checkpoint.pt", "tavc", TAVC(TINY_TAVC), TINY_TAVC)
    (root / "data/processed").mkdir(parents=True)
    random_basis().save(root / "data/processed/expression_basis.npz")
    return root / "models"


def _audio(path: Path, seconds: float, rate: int = 16000, channels: int = 1, silent: bool = False) -> Path:
    """Speech-like audio (a 150 Hz buzz with harmonics, amplitude-modulated at 4 Hz like syllables)."""
    t = np.arange(int(seconds * rate)) / rate
    wav = np.zeros_like(t) if silent else (
        0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in (1, 2, 3)))
    wav = np.repeat(wav[:, None], channels, axis=1).astype("<f4")  # (S, C)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "f32le", "-ar", str(rate), "-ac",
                    str(channels), "-i", "-", str(path)], input=wav.tobytes(), check=True)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    face = astronaut(256)
    Image.fromarray(face).save(d / "portrait.jpg", quality=95)
    Image.fromarray(face).save(d / "portrait.png")
    # Stored sideways with EXIF orientation 6 ("rotate 90° clockwise to display"): np.rot90 turns it counter-clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(face))).save(d / "rotated.png", exif=exif)
    noise = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "noface.webp")
    two = np.concatenate([astronaut(220), face[18:238, ::-1]], axis=1)  # (220, 476, 3): the larger face on the right
    Image.fromarray(two).save(d / "two.png")
    (d / "broken.jpg").write_bytes(b"not an image")
    return {"jpg": d / "portrait.jpg", "png": d / "portrait.png", "rotated": d / "rotated.png",
            "noface": d / "noface.webp", "two": d / "two.png", "broken": d / "broken.jpg",
            "mp3": _audio(d / "speech.mp3", 1.2, rate=44100, channels=2), "wav": _audio(d / "speech.wav", 1.0),
            "silent": _audio(d / "silent.flac", 1.0, silent=True), "short": _audio(d / "short.wav", 0.2)}


def _frames(path: Path) -> np.ndarray:
    return media.read_video(path).frames


@pytest.mark.slow
def test_animate_stereo_mp3_writes_h264_aac_in_sync_with_a_gif_and_is_deterministic(models, inputs, tmp_path):
    out = tmp_path / "talk.mp4"
    res = animate(inputs["jpg"], inputs["mp3"], out, models=models, gif=True, device="cpu", chunk_seconds=0.5,
                  progress=False)
    assert res.frames == 30 and res.size == (32, 32) and res.gif is not None and res.gif.stat().st_size > 0
    info = media.probe(out)
    assert info.has_video and info.has_audio and (info.width, info.height) == (32, 32)
    assert info.audio_sample_rate == 16000 and abs(info.duration - 1.2) < 0.1
    streams = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                        capture_output=True, check=True).stdout)["streams"]
    assert {s["codec_name"] for s in streams} == {"h264", "aac"}
    frames = _frames(out)
    assert frames.shape == (30, 32, 32, 3)
    # Same inputs and seed -> the same bytes (chunking does not matter: frames are per-frame functions).
    again = tmp_path / "again.mp4"
    animate(inputs["jpg"], inputs["mp3"], again, models=models, device="cpu", chunk_seconds=4.0, batch_size=3,
            progress=False)
    assert again.read_bytes() == out.read_bytes()


def test_inference_options_render_the_same_video_within_rounding(models, inputs, tmp_path):
    """`--fast` / `options`: the exact-arithmetic switches (folded normalisation, fused SPADE; fp32) give the default
    path's frames up to float rounding and the H.264 encoder."""
    from pipeline.models.renderer.inference import InferenceOptions, frame_psnr

    plain, fast = tmp_path / "plain.mp4", tmp_path / "fast.mp4"
    animate(inputs["jpg"], inputs["wav"], plain, models=models, device="cpu", progress=False)
    res = animate(inputs["jpg"], inputs["wav"], fast, models=models, device="cpu", progress=False,
                  options=InferenceOptions(fold=True, fuse_spade=True))
    a, b = _frames(plain), _frames(fast)
    assert res.frames == len(a) == len(b)
    assert frame_psnr(a, b) > 40


def test_exif_orientation_is_honoured(inputs, models):
    upright = read_image(inputs["png"])
    rotated = read_image(inputs["rotated"])
    np.testing.assert_array_equal(rotated, upright)
    m = load_models(models)
    p = find_portrait(rotated, 32, m.basis, name="rotated.png")
    assert p.face.shape == (32, 32, 3) and np.isfinite(p.coeffs).all() and p.faces_found == 1


def test_two_faces_take_the_largest_with_a_warning_or_the_chosen_index(inputs, models):
    m = load_models(models)
    img = read_image(inputs["two"])
    with pytest.warns(UserWarning, match="2 faces found; animating the largest"):
        big = find_portrait(img, 32, m.basis, name="two.png")
    assert big.crop.center[0] > 300  # the face of the 256-px photo, on the right
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = find_portrait(img, 32, m.basis, name="two.png", face_index=1)
    assert small.crop.center[0] < 200 and small.crop.size < big.crop.size
    with pytest.raises(AnimateError, match="face-index 2 but 2 face"):
        find_portrait(img, 32, m.basis, name="two.png", face_index=2)


@pytest.mark.parametrize("image, audio, message", [
    ("noface", "wav", r"noface\.webp: no face found"),
    ("broken", "wav", r"broken\.jpg: cannot read it as an image"),
    ("jpg", "silent", r"silent\.flac: the audio is silent"),
    ("jpg", "short", r"short\.wav: the audio lasts 0\.20 s; animate needs at least 0\.5 s"),
    ("jpg", "broken", r"broken\.jpg: cannot read audio"),
])
def test_unusable_inputs_give_clear_errors(models, inputs, tmp_path, image, audio, message):
    with pytest.raises(AnimateError, match=message):
        animate(inputs[image], inputs[audio], tmp_path / "x.mp4", models=models, device="cpu", progress=False)
    assert not (tmp_path / "x.mp4").exists()


def test_a_renderer_without_mappingnet_is_refused(tmp_path, models):
    for sub in ("audio2coeff", "tavc"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "checkpoint.pt").write_bytes((models / sub / "checkpoint.pt").read_bytes())
    _save(tmp_path / "renderer/checkpoint.pt", "renderer", Renderer(TINY), TINY)
    random_basis().save(tmp_path / "expression_basis.npz")
    with pytest.raises(AnimateError, match="motion_source: estimator .* only be driven by video"):
        load_models(tmp_path)


def test_train_checkpoint_is_preferred_over_pretrain(tmp_path, models):
    from pipeline.animate import model_files

    for sub in ("renderer", "train", "audio2coeff"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "checkpoint.pt").write_bytes(b"x")
    random_basis().save(tmp_path / "expression_basis.npz")
    assert model_files(tmp_path)["renderer"] == tmp_path / "train/checkpoint.pt"


@pytest.mark.slow
def test_export_then_animate_from_the_bundle_gives_the_same_video_and_paste_back(models, inputs, tmp_path):
    bundle = tmp_path / "model.tavce"
    assert cli.main(["export", "--models", str(models), "--out", str(bundle)]) == 0
    manifest = read_manifest(bundle)
    assert set(manifest["files"]) == {"renderer/checkpoint.pt", "audio2coeff/checkpoint.pt", "tavc/checkpoint.pt",
                                      "expression_basis.npz"}
    assert manifest["configs"]["renderer/checkpoint.pt"]["model"]["motion_source"] == "coefficients"
    assert "git_revision" in manifest["versions"]
    a, b = tmp_path / "dir.mp4", tmp_path / "bundle.mp4"
    animate(inputs["png"], inputs["wav"], a, models=models, device="cpu", progress=False)
    assert cli.main(["animate", "--image", str(inputs["png"]), "--audio", str(inputs["wav"]), "--out", str(b),
                     "--models", str(bundle), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(_frames(a), _frames(b))
    # --paste-back: the whole photo, the face region animated, the rest untouched (feathered in between).
    full = tmp_path / "full.mp4"
    res = animate(inputs["png"], inputs["wav"], full, models=bundle, paste_back_full=True, device="cpu",
                  progress=False)
    assert res.size == (256, 256) and _frames(full).shape == (25, 256, 256, 3)
    # A damaged bundle is refused with its name.
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tavce"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"bad\.tavce: renderer/checkpoint\.pt is damaged"):
        load_models(bad)


def test_paste_back_changes_only_the_crop_and_feathers_its_edge():
    from pipeline.animate import feather_mask, paste_back
    from pipeline.faces.crop import CropBox

    photo = np.full((41, 50, 3), 100, np.uint8)  # odd height: cut to even for H.264
    crop = CropBox(x0=30, y0=-5, size=30)  # partly outside the photo
    out = paste_back(photo, np.full((2, 8, 8, 3), 200, np.uint8), crop, feather_mask(30))
    assert out.shape == (2, 40, 50, 3)
    assert (out[:, :, :30] == 100).all()  # left of the crop: untouched
    assert out[0, 10, 45, 0] == 200 and 100 < out[0, 10, 31, 0] < 200  # inside: the frame; near the edge: blended


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["animate", "--help"])
    assert "tavce animate --image portrait.jpg --audio speech.wav --out talk.mp4" in capsys.readouterr().out


def test_default_batch_size_is_one_only_for_large_renders_on_a_cpu():
    # issue 16: at 256 px on a CPU batching frames was slower than one at a time; small renders and GPUs batch
    assert default_batch_size("cpu", 256) == 1 and default_batch_size("cpu", 512) == 1
    assert default_batch_size("cpu", 64) == 8 and default_batch_size("cpu", 128) == 8
    assert default_batch_size("cuda", 256) == 8
