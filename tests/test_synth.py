"""Synthetic corpus: espeak phoneme timing, visemes, determinism, media format, and that a real face detector
(mediapipe) finds the rendered face and measures its mouth and yaw as drawn."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.synth import tts
from pipeline.synth.corpus import SynthConfig, generate_corpus, speaker_spec
from pipeline.synth.face import FaceRenderer, sample_appearance
from pipeline.synth.motion import blink_track
from pipeline.synth.visemes import mouth_track, viseme_class

TINY = SynthConfig(speakers=1, clips_per_speaker=1, min_duration_s=1.5, max_duration_s=1.5,
                   frame_sizes=((160, 160),), audio_rates=(16000,), workers=1)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_tiny")
    generate_corpus(TINY, out, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3.5–4 s clip at a realistic frame size, for the detector checks."""
    out = tmp_path_factory.mktemp("synth_long")
    cfg = SynthConfig(speakers=1, clips_per_speaker=1, min_duration_s=3.5, max_duration_s=4.0,
                      frame_sizes=((256, 256),), workers=1)
    generate_corpus(cfg, out, seed=11, progress=False)
    return out / "spk000" / "clip000.mp4"


def _decode(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames via the ffmpeg CLI."""
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
         "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout)["streams"][0]
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, info["height"], info["width"], 3)


# --- speech ---------------------------------------------------------------------------------------------------
def test_phoneme_events_monotonic_and_cover_audio() -> None:
    utt = tts.synthesize("Bob may pay mom a big map.", tts.Voice("en-us+f3", rate_wpm=170))
    assert utt.sample_rate == tts.ESPEAK_SAMPLE_RATE_HZ
    ph = utt.phonemes
    assert len(ph) > 15
    starts = np.array([p.start_s for p in ph])
    ends = np.array([p.end_s for p in ph])
    assert np.all(ends > starts) and np.all(np.diff(starts) > 0)
    np.testing.assert_allclose(starts[1:], ends[:-1])  # contiguous
    assert starts[0] < 0.05 and ends[-1] > utt.duration_s - 0.05 and ends[-1] <= utt.duration_s + 1e-9
    symbols = [p.symbol for p in ph]
    assert symbols.count("b") >= 3 and symbols.count("m") >= 4 and symbols.count("p") >= 2
    # Speech energy sits inside the non-pause phonemes.
    speech = [p for p in ph if p.symbol not in tts.PAUSE_PHONEMES]
    assert speech[-1].end_s < utt.duration_s


def test_bilabial_closure_is_silent_in_audio() -> None:
    """The phoneme intervals are where espeak put them: the centre of a word-initial /p/ is a silent closure."""
    utt = tts.synthesize("Please pay Paul.", tts.Voice("en-us"))
    sr = utt.sample_rate
    rms = lambda t: float(np.sqrt(np.mean(utt.audio[int((t - 0.01) * sr):int((t + 0.01) * sr)] ** 2)))
    loud = max(rms(p.centre_s) for p in utt.phonemes if viseme_class(p.symbol) == "open" or p.symbol in ("eI", "i:"))
    closures = [p for p in utt.phonemes if p.symbol == "p"]
    assert closures and all(rms(p.centre_s) < 0.25 * loud for p in closures)


def test_unknown_voice_names_it() -> None:
    with pytest.raises(tts.EspeakError, match="no-such-voice"):
        tts.synthesize("hello", tts.Voice("no-such-voice"))


# --- visemes -------------------------------------------------------------------------------------------------
def test_viseme_classes() -> None:
    assert {viseme_class(s) for s in ("p", "b", "m")} == {"closed"}
    assert viseme_class("u:") == viseme_class("oU") == viseme_class("w") == "rounded"
    assert viseme_class("i:") == viseme_class("eI") == "spread"
    assert viseme_class("a") == viseme_class("aI") == "open"
    assert viseme_class("_:") == "rest"


def test_mouth_closed_at_bilabials_and_open_on_vowels() -> None:
    utt = tts.synthesize("Bob may pay mom a big map.", tts.Voice("en-gb-x-rp+m2"))
    times = np.arange(0, utt.duration_s, 0.005)
    track = mouth_track(utt.phonemes, times)
    for p in utt.phonemes:
        k = int(round(p.centre_s / 0.005))
        if viseme_class(p.symbol) == "closed":
            assert track.open[k] < 0.02, (p, track.open[k])
        elif viseme_class(p.symbol) == "open" and p.end_s - p.start_s > 0.06:
            assert track.open[k] > 0.4, (p, track.open[k])
    assert track.open.max() <= 1.0 and track.open.min() >= 0.0
    # Lips close again *between* vowels: the track is not just a smoothed envelope.
    assert np.sum(np.diff(np.sign(np.diff(track.open))) != 0) >= 8


def test_blinks() -> None:
    b = blink_track(np.random.default_rng(0), 25 * 20, 25.0)
    closed = b > 0.5
    onsets = np.flatnonzero(closed[1:] & ~closed[:-1])
    assert 3 <= len(onsets) <= 12  # ~one per 3 s
    runs = [len(r) for r in np.split(closed, np.flatnonzero(np.diff(closed)) + 1) if r[0]]
    assert max(runs) <= 4  # ≤ 160 ms at 25 fps


# --- config ----------------------------------------------------------------------------------------------------
def test_config_strict() -> None:
    base = to_dict(SynthConfig())  # a complete section
    cfg = from_dict(SynthConfig, {**base, "speakers": 2, "frame_sizes": [[128, 96]]}, "synth")
    assert cfg.frame_sizes == ((128, 96),)
    with pytest.raises(ConfigError, match="synth.speaker"):
        from_dict(SynthConfig, {**base, "speaker": 2}, "synth")
    with pytest.raises(ConfigError, match="synth"):
        from_dict(SynthConfig, {**base, "frame_sizes": [[127, 96]]}, "synth")
    with pytest.raises(ConfigError, match="synth.min_duration_s"):
        from_dict(SynthConfig, {**base, "min_duration_s": "2e0"}, "synth")
    missing = dict(base)
    missing.pop("crf")
    with pytest.raises(ConfigError, match="synth.crf: missing"):
        from_dict(SynthConfig, missing, "synth")


def test_speakers_are_prefix_stable() -> None:
    """Scaling the corpus up keeps the existing speakers' identity and voice."""
    small, big = SynthConfig(speakers=2), SynthConfig(speakers=20)
    assert speaker_spec(small, 5, 1) == speaker_spec(big, 5, 1)
    voices = {speaker_spec(big, 5, i).voice for i in range(20)}
    assert len(voices) == 20


# --- corpus files ----------------------------------------------------------------------------------------------
def test_files_and_media_format(tiny_corpus: Path) -> None:
    mp4 = tiny_corpus / "spk000" / "clip000.mp4"
    truth = json.loads((tiny_corpus / "spk000" / "clip000.truth.json").read_text())
    assert not list(tiny_corpus.rglob(".tmp*"))
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(mp4)],
        capture_output=True, text=True, check=True).stdout)["streams"]
    v = next(s for s in probe if s["codec_type"] == "video")
    a = next(s for s in probe if s["codec_type"] == "audio")
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p" and v["r_frame_rate"] == "25/1"
    assert (v["width"], v["height"]) == (160, 160)
    assert a["codec_name"] == "aac" and int(a["sample_rate"]) == 16000
    assert int(v["nb_frames"]) == truth["n_frames"] == len(truth["frames"]["mouth_open"])
    assert abs(truth["duration_s"] - 1.5) < 0.05
    ph = truth["phonemes"]
    assert ph and all(p["start_s"] < p["end_s"] for p in ph) and ph[-1]["end_s"] <= truth["duration_s"] + 1e-6
    for key in ("yaw", "pitch", "roll", "blink", "mouth_open"):
        assert len(truth["frames"][key]) == truth["n_frames"]
    lim = (25, 15, 10)
    for key, deg in zip(("yaw", "pitch", "roll"), lim):
        assert max(abs(x) for x in truth["frames"][key]) <= math.radians(deg)
    assert truth["voice"]["name"] and truth["text"].endswith(".")


def test_rerun_is_identical(tiny_corpus: Path, tmp_path: Path) -> None:
    generate_corpus(TINY, tmp_path, seed=3, progress=False)
    for name in ("clip000.truth.json", "clip000.mp4"):
        assert (tmp_path / "spk000" / name).read_bytes() == (tiny_corpus / "spk000" / name).read_bytes(), name


def test_other_seed_differs(tiny_corpus: Path, tmp_path: Path) -> None:
    generate_corpus(TINY, tmp_path, seed=4, progress=False)
    a = json.loads((tmp_path / "spk000" / "clip000.truth.json").read_text())
    b = json.loads((tiny_corpus / "spk000" / "clip000.truth.json").read_text())
    assert a["text"] != b["text"]


# --- the detector sees what was drawn ------------------------------------------------------------------------
mp = pytest.importorskip("mediapipe")


def _mesh(frames: np.ndarray, static: bool = False) -> list[np.ndarray | None]:
    """mediapipe face-mesh landmarks (478, 2) in pixels per frame (None where no face)."""
    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=True) as fm:
        for f in frames:
            r = fm.process(np.ascontiguousarray(f))
            if r.multi_face_landmarks:
                h, w = f.shape[:2]
                out.append(np.array([[p.x * w, p.y * h] for p in r.multi_face_landmarks[0].landmark]))
            else:
                out.append(None)
    return out


def test_mediapipe_detects_face_and_follows_mouth(long_clip: Path) -> None:
    frames = _decode(long_clip)
    truth = json.loads(long_clip.with_suffix("").with_suffix(".truth.json").read_text())
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
        found = [bool(fd.process(np.ascontiguousarray(f)).detections) for f in frames]
    assert np.mean(found) >= 0.95
    mesh = _mesh(frames)
    ok = [k for k, m in enumerate(mesh) if m is not None]
    assert len(ok) >= 0.95 * len(frames)
    # Inner-lip gap (mesh 13 upper, 14 lower) normalised by face height (10 forehead, 152 chin).
    measured = np.array([np.linalg.norm(mesh[k][13] - mesh[k][14]) / np.linalg.norm(mesh[k][10] - mesh[k][152])
                         for k in ok])
    drawn = np.array(truth["frames"]["mouth_open"])[ok]
    r = np.corrcoef(measured, drawn)[0, 1]
    assert r > 0.7, r


def test_yaw_is_a_3d_rotation_seen_by_the_detector() -> None:
    """Yaw +20° (nose towards image-left in the project convention) shifts the nose tip towards image-left
    relative to the face outline: the left-cheek span (outline → nose) shrinks, the right one grows."""
    app = sample_appearance(np.random.default_rng(1), (256, 256))
    r = FaceRenderer(app)
    front, _ = r.render(0.0, 0.0, 0.0)
    turned, _ = r.render(math.radians(20), 0.0, 0.0)
    m0, m1 = _mesh(np.stack([front, turned]), static=True)
    assert m0 is not None and m1 is not None

    def asym(m: np.ndarray) -> float:
        # mediapipe 234 / 454: face outline at image-left / image-right (cheek level); 1: nose tip.
        left, right = m[1, 0] - m[234, 0], m[454, 0] - m[1, 0]
        return (right - left) / (right + left)

    assert abs(asym(m0)) < 0.15
    assert asym(m1) > asym(m0) + 0.1
