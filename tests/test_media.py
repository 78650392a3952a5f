"""pipeline.media on tiny files built with the ffmpeg CLI: probing, decoding, timestamp resampling, errors, writing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest

from pipeline import media as M

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _testsrc(size: str, rate: int, duration: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration={duration}"]


def _sine(sample_rate: int, duration: float, freq: int = 440) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={sample_rate}:duration={duration}"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    f = {name: d / name for name in [
        "av.mp4", "audio.m4a", "silent.mp4", "one.mp4", "stereo8k.mp4", "num60.mp4", "v24.mp4", "v30.mp4",
        "odd.mp4", "clip_é_日本.mp4", "c.mkv", "c.webm", "c.avi", "c.mov", "vfr.mkv", "trunc.mp4", "trunc_fs.mp4",
        "garbage.mp4",
    ]}  # fmt: skip
    _ffmpeg(*_testsrc("64x48", 25, 2), *_sine(44100, 2), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-shortest", str(f["av.mp4"]))  # fmt: skip
    _ffmpeg(*_sine(44100, 1.5), "-c:a", "aac", str(f["audio.m4a"]))
    _ffmpeg(*_testsrc("64x48", 25, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["silent.mp4"]))
    _ffmpeg(*_testsrc("64x48", 25, 1), "-frames:v", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["one.mp4"]))
    _ffmpeg(*_testsrc("64x48", 25, 1), *_sine(8000, 1), "-ac", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(f["stereo8k.mp4"]))  # fmt: skip
    # frame number in the picture: luma 16 + 2 N, lossless, so every source frame is distinct and identifiable
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=60:d=1.5,format=yuv420p,geq=lum='16+2*N':cb=128:cr=128",
           "-c:v", "libx264", "-qp", "0", str(f["num60.mp4"]))  # fmt: skip
    # variable frame rate: 10 frames 0.1 s apart, then 20 frames at 50 fps
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=50:d=0.6,format=yuv420p,geq=lum='16+6*N':cb=128:cr=128,"
           "setpts='if(lt(N,10),N*5,50+(N-10))'", "-fps_mode", "passthrough", "-c:v", "libx264", "-qp", "0",
           str(f["vfr.mkv"]))  # fmt: skip
    _ffmpeg(*_testsrc("64x48", 24, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["v24.mp4"]))
    _ffmpeg(*_testsrc("64x48", 30, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["v30.mp4"]))
    _ffmpeg(*_testsrc("321x241", 30, 1), "-c:v", "libx264", "-pix_fmt", "yuv444p", str(f["odd.mp4"]))
    _ffmpeg(*_testsrc("64x48", 60, 1), *_sine(44100, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(f["clip_é_日本.mp4"]))  # fmt: skip
    _ffmpeg(*_testsrc("64x48", 24, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["c.mkv"]))
    _ffmpeg(*_testsrc("64x48", 25, 1), *_sine(48000, 1), "-c:v", "libvpx-vp9", "-c:a", "libopus", str(f["c.webm"]))
    _ffmpeg(*_testsrc("64x48", 30, 1), "-c:v", "mpeg4", str(f["c.avi"]))
    _ffmpeg(*_testsrc("64x48", 25, 1), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f["c.mov"]))
    data = f["av.mp4"].read_bytes()  # index (moov) at the end: cutting in half loses it
    f["trunc.mp4"].write_bytes(data[: len(data) // 2])
    fs = d / "fs.mp4"  # index at the start: the header survives, the frames do not
    _ffmpeg(*_testsrc("64x48", 25, 2), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(fs))
    f["trunc_fs.mp4"].write_bytes(fs.read_bytes()[: fs.stat().st_size // 2])
    f["garbage.mp4"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return f


# ---------------------------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------------------------
def test_probe_av(files: dict[str, Path]) -> None:
    info = M.probe(files["av.mp4"])
    assert (info.width, info.height, info.fps, info.n_frames) == (64, 48, 25.0, 50)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert (info.audio_sample_rate, info.audio_channels, info.audio_codec) == (44100, 1, "aac")
    assert info.has_video and info.has_audio and not info.variable_fps


def test_probe_audio_only_and_silent_and_containers(files: dict[str, Path]) -> None:
    audio = M.probe(files["audio.m4a"])
    assert not audio.has_video and audio.width is None and audio.fps is None and audio.has_audio
    silent = M.probe(files["silent.mp4"])
    assert silent.has_video and not silent.has_audio and silent.audio_codec is None
    stereo = M.probe(files["stereo8k.mp4"])
    assert (stereo.audio_sample_rate, stereo.audio_channels) == (8000, 2)
    for name, fps in [("c.mkv", 24), ("c.webm", 25), ("c.avi", 30), ("c.mov", 25)]:
        info = M.probe(files[name])
        assert info.fps == pytest.approx(fps) and info.duration == pytest.approx(1.0, abs=0.05), name


def test_rate_parsing() -> None:
    assert M._rate("30000/1001") == pytest.approx(29.97, abs=1e-3)
    assert M._rate("0/0") is None and M._rate("") is None and M._rate(None) is None


@pytest.mark.parametrize(("name", "reason"), [("trunc.mp4", "corrupt"), ("garbage.mp4", "corrupt")])
def test_probe_failures(files: dict[str, Path], name: str, reason: str) -> None:
    with pytest.raises(M.MediaError) as info:
        M.probe(files[name])
    assert info.value.reason == reason
    assert info.value.path == str(files[name]) and str(files[name]) in str(info.value)
    assert info.value.__cause__ is not None  # the ffmpeg.Error is kept


def test_missing_file(tmp_path: Path) -> None:
    for fn in (M.probe, M.read_audio, M.read_video):
        with pytest.raises(M.MediaError) as info:
            fn(tmp_path / "nope.mp4")
        assert info.value.reason == "not_found"


def test_check_duration(files: dict[str, Path]) -> None:
    M.check_duration(M.probe(files["av.mp4"]), 1.2)
    with pytest.raises(M.MediaError, match="too_short") as info:
        M.check_duration(M.probe(files["silent.mp4"]), 1.2)
    assert info.value.reason == "too_short"


def test_media_error_reason_is_validated() -> None:
    with pytest.raises(ValueError):
        M.MediaError("x.mp4", "something_else")


# ---------------------------------------------------------------------------------------------------------------
# read_audio
# ---------------------------------------------------------------------------------------------------------------
def _peak_hz(wav: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return float(np.fft.rfftfreq(wav.size, 1 / sample_rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("name", "duration"), [("av.mp4", 2.0), ("audio.m4a", 1.5), ("stereo8k.mp4", 1.0)])
def test_read_audio_resamples_to_16k_mono(files: dict[str, Path], name: str, duration: float) -> None:
    wav = M.read_audio(files[name])
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.flags.writeable
    assert abs(wav.size - duration * 16000) < 0.05 * 16000
    assert _peak_hz(wav, 16000) == pytest.approx(440, abs=2)
    assert 0.05 < np.abs(wav).max() <= 1.0


def test_read_audio_other_rate(files: dict[str, Path]) -> None:
    wav = M.read_audio(files["audio.m4a"], sample_rate=8000)
    assert abs(wav.size - 1.5 * 8000) < 0.05 * 8000


def test_read_audio_without_audio_stream(files: dict[str, Path]) -> None:
    with pytest.raises(M.MediaError) as info:
        M.read_audio(files["silent.mp4"])
    assert info.value.reason == "no_audio_stream" and "silent.mp4" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# read_video
# ---------------------------------------------------------------------------------------------------------------
def _raw_frames(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_read_video_60fps_picks_the_frame_on_screen(files: dict[str, Path]) -> None:
    video = M.read_video(files["num60.mp4"])
    assert video.frames.shape == (38, 64, 64, 3)  # ceil(1.5 s * 25)
    assert video.source_fps == 60.0 and video.fps == 25.0
    k = np.arange(38)
    np.testing.assert_array_equal(video.source_indices, np.floor(k * 60 / 25 + 1e-9).astype(int))
    # decode the frame number from the picture: raw frames are distinct and brighter with N
    raw_means = _raw_frames(files["num60.mp4"]).mean(axis=(1, 2, 3))
    assert np.all(np.diff(raw_means) > 0)
    shown = [int(np.argmin(np.abs(raw_means - m))) for m in video.frames.mean(axis=(1, 2, 3))]
    np.testing.assert_array_equal(shown, video.source_indices)


def test_read_video_variable_frame_rate(files: dict[str, Path]) -> None:
    video = M.read_video(files["vfr.mkv"])
    # source frame n starts at 0.1 n for n < 10, then 1.0 + 0.02 (n - 10); output time k / 25
    t = np.arange(len(video)) / 25
    expected = np.where(t < 1.0, np.floor(t / 0.1 + 1e-9), 10 + np.floor((t - 1.0) / 0.02 + 1e-9)).astype(int)
    np.testing.assert_array_equal(video.source_indices, expected)
    assert len(video) == 35  # 1.4 s


@pytest.mark.parametrize(
    ("name", "n_out", "shape"),
    [
        ("v24.mp4", 25, (48, 64)),
        ("v30.mp4", 25, (48, 64)),
        ("odd.mp4", 25, (241, 321)),
        ("one.mp4", 1, (48, 64)),
        ("clip_é_日本.mp4", 25, (48, 64)),
        ("c.mkv", 25, (48, 64)),
        ("c.webm", 25, (48, 64)),
        ("c.avi", 25, (48, 64)),
        ("c.mov", 25, (48, 64)),
    ],
)
def test_read_video_formats(files: dict[str, Path], name: str, n_out: int, shape: tuple[int, int]) -> None:
    video = M.read_video(files[name])
    assert video.frames.shape == (n_out, *shape, 3) and video.frames.dtype == np.uint8
    assert np.all(np.diff(video.source_indices) >= 0) and video.source_indices[0] == 0
    raw = _raw_frames(files[name])
    np.testing.assert_array_equal(video.frames, raw[video.source_indices])


def test_read_video_at_source_rate_is_identity(files: dict[str, Path]) -> None:
    video = M.read_video(files["v30.mp4"], fps=30)
    np.testing.assert_array_equal(video.source_indices, np.arange(30))


def test_non_ascii_name_also_reads_audio(files: dict[str, Path]) -> None:
    assert M.probe(files["clip_é_日本.mp4"]).fps == 60.0
    assert abs(M.read_audio(files["clip_é_日本.mp4"]).size - 16000) < 800


def test_read_video_failures(files: dict[str, Path]) -> None:
    with pytest.raises(M.MediaError) as info:
        M.read_video(files["audio.m4a"])
    assert info.value.reason == "no_video_stream"
    with pytest.raises(M.MediaError) as info:
        M.read_video(files["trunc.mp4"])
    assert info.value.reason == "corrupt"
    with pytest.raises(M.MediaError) as info:  # header intact, frame data missing: decord fails
        M.read_video(files["trunc_fs.mp4"])
    assert info.value.reason == "decode_error" and "trunc_fs.mp4" in str(info.value)
    assert info.value.__cause__ is not None


def test_iter_video_chunks_equals_read_video(files: dict[str, Path]) -> None:
    whole = M.read_video(files["num60.mp4"])
    chunks = list(M.iter_video_chunks(files["num60.mp4"], chunk=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 7, 3]
    assert [c.start for c in chunks] == [0, 7, 14, 21, 28, 35]
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    np.testing.assert_array_equal(np.concatenate([c.source_indices for c in chunks]), whole.source_indices)
    with pytest.raises(ValueError):
        next(M.iter_video_chunks(files["num60.mp4"], chunk=0))


# ---------------------------------------------------------------------------------------------------------------
# write_video
# ---------------------------------------------------------------------------------------------------------------
def _smooth_frames(n: int, height: int, width: int) -> np.ndarray:
    """Moving colour gradients: natural-image-like content (no 1-pixel colour edges that 4:2:0 cannot keep)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    t = np.arange(n)[:, None, None] / n
    r = 0.5 + 0.4 * np.sin(2 * np.pi * (x + t))
    g = 0.5 + 0.4 * np.cos(2 * np.pi * (y - t))
    b = 0.5 + 0.3 * np.sin(2 * np.pi * (x + y + 2 * t))
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)  # (T, H, W, 3)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # BT.601 Y'


def test_write_video_round_trip(tmp_path: Path) -> None:
    frames = _smooth_frames(30, 48, 64)
    t = np.arange(int(1.2 * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = tmp_path / "out.mp4"
    M.write_video(out, frames, fps=25, audio=audio, sample_rate=16000, crf=15)
    info = M.probe(out)
    assert (info.width, info.height, info.fps, info.n_frames) == (64, 48, 25.0, 30)
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", 16000, 1)
    video = M.read_video(out)
    assert video.frames.shape == frames.shape
    np.testing.assert_array_equal(video.source_indices, np.arange(30))
    # yuv420p halves chroma resolution: luma is near-lossless, RGB PSNR is capped near 37 dB even at crf 0
    assert _psnr(_luma(video.frames), _luma(frames)) > 40
    assert _psnr(video.frames, frames) > 34
    back = M.read_audio(out)
    assert abs(back.size - audio.size) < 0.05 * 16000
    assert _peak_hz(back, 16000) == pytest.approx(440, abs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp files left behind


def test_write_video_yuv444_is_near_lossless_and_allows_odd_sizes(tmp_path: Path) -> None:
    frames = _smooth_frames(10, 241, 321)
    M.write_video(tmp_path / "full.mp4", frames, crf=15, pix_fmt="yuv444p")
    video = M.read_video(tmp_path / "full.mp4")
    assert video.frames.shape == frames.shape
    assert _psnr(video.frames, frames) > 40


def test_write_video_without_audio_is_deterministic(tmp_path: Path) -> None:
    frames = _smooth_frames(10, 32, 32)
    M.write_video(tmp_path / "a.mp4", frames)
    M.write_video(tmp_path / "b.mp4", frames)
    assert not M.probe(tmp_path / "a.mp4").has_audio
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_write_video_failure_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "bad.mp4"
    with pytest.raises(RuntimeError, match="ffmpeg failed") as info:
        M.write_video(out, _smooth_frames(2, 16, 16), preset="no-such-preset")
    assert "bad.mp4" in str(info.value) and "preset" in str(info.value).lower()
    assert os.listdir(tmp_path) == []


def test_write_video_streams_chunks_from_a_thread(tmp_path: Path) -> None:
    """Chunks are written from a thread after the generator moved on: a producer that refills one buffer must
    still get its frames, and the file equals the one written from the whole array (same bytes)."""
    frames = _smooth_frames(12, 32, 48)
    M.write_video(tmp_path / "whole.mp4", frames)
    buffer = np.empty((3, 32, 48, 3), np.uint8)
    produced = []

    def chunks():
        for s in range(0, 12, 3):
            buffer[:] = frames[s:s + 3]  # the same array every time
            produced.append(s)
            yield buffer

    M.write_video(tmp_path / "chunks.mp4", chunks())
    assert produced == [0, 3, 6, 9]
    assert (tmp_path / "chunks.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()


def test_write_video_producer_error_leaves_no_file(tmp_path: Path) -> None:
    def chunks():
        yield _smooth_frames(2, 16, 16)
        raise OSError("renderer failed")

    with pytest.raises(OSError, match="renderer failed"):
        M.write_video(tmp_path / "out.mp4", chunks())
    assert os.listdir(tmp_path) == []


def test_write_video_threads_and_encoder_death(tmp_path: Path) -> None:
    frames = _smooth_frames(10, 32, 32)
    M.write_video(tmp_path / "a.mp4", frames, threads=0)
    M.write_video(tmp_path / "b.mp4", frames, threads=0)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()  # same thread count: same bytes
    assert M.read_video(tmp_path / "a.mp4").frames.shape == frames.shape
    # ffmpeg gives up on the first frame (a preset it does not know) while chunks keep coming: no hang, its error.
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        M.write_video(tmp_path / "c.mp4", (frames for _ in range(200)), preset="no-such-preset")


def test_media_imports_without_decord(tmp_path: Path) -> None:
    """Audio reading and video writing (all `animate` needs) work where decord is missing (a GPU machine)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'decord':\n"
        "            raise ImportError('no decord here')\n"
        "sys.meta_path.insert(0, Block())\n")
    code = ("import numpy as np; from pipeline import media; import pipeline.animate\n"
            f"media.write_video({str(tmp_path / 'v.mp4')!r}, np.zeros((5, 16, 16, 3), np.uint8), "
            "audio=np.full(3200, 0.1, np.float32))\n"
            f"print(media.read_audio({str(tmp_path / 'v.mp4')!r}).size)\n"
            "try:\n"
            f"    media.read_video({str(tmp_path / 'v.mp4')!r})\n"
            "except ImportError as err:\n"
            "    print('read_video:', err)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert abs(int(lines[0]) - 3200) < 1100  # AAC priming / padding
    assert lines[1] == "read_video: no decord here"


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        M.write_video(tmp_path / "odd.mp4", np.zeros((2, 241, 321, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        M.write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="mono"):
        M.write_video(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.uint8), audio=np.zeros((2, 100), np.float32))


def test_read_audio_failures(files: dict[str, Path]) -> None:
    for name, reason in [("trunc.mp4", "corrupt"), ("garbage.mp4", "corrupt")]:
        with pytest.raises(M.MediaError) as info:
            M.read_audio(files[name])
        assert info.value.reason == reason and name in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# real-world inputs: display rotation, VFR / NTSC rates, streams that start at different times
# ---------------------------------------------------------------------------------------------------------------
def _ffprobe_json(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def _ffmpeg_frames(path: Path, *input_args: str) -> np.ndarray:
    """All frames as ffmpeg itself shows them (auto-rotated unless told otherwise), (N, H, W, 3) uint8."""
    info = M.probe(path)
    w, h = (info.stored_size if "-noautorotate" in input_args else (info.width, info.height))
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *input_args, "-i", str(path), "-vsync", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Same 64x48 clip (testsrc + a white 12x12 square in the stored top-left corner) with 3 display rotations.

    ffmpeg 5.1 cannot set a display matrix on input (``-display_rotation`` is ffmpeg >= 6): the mp4 muxer turns a
    ``rotate`` tag into one. It stores tag R as ffprobe side-data rotation R, i.e. R degrees *counter-clockwise*
    (the opposite of what the legacy tag meant), so the files are keyed by the clockwise rotation ffprobe reports.
    """
    d = tmp_path_factory.mktemp("rotated")
    base = d / "base.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=0.4,drawbox=x=0:y=0:w=12:h=12:c=white:t=fill",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(base))  # fmt: skip
    out: dict[int, Path] = {0: base}
    for tag in (90, 180, 270):
        dst = d / f"tag{tag}.mp4"
        _ffmpeg("-i", str(base), "-c", "copy", "-metadata:s:v:0", f"rotate={tag}", str(dst))
        side = _ffprobe_json(dst)["streams"][0]["side_data_list"][0]["rotation"]  # counter-clockwise degrees
        out[round(-side) % 360] = dst
    assert sorted(out) == [0, 90, 180, 270]
    return out


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotation_probe_and_frames_match_ffmpeg_display(rotated: dict[int, Path], rotation: int) -> None:
    path = rotated[rotation]
    info = M.probe(path)
    assert info.rotation == rotation
    assert info.stored_size == (64, 48)
    assert (info.width, info.height) == ((48, 64) if rotation in (90, 270) else (64, 48))  # displayed size
    video = M.read_video(path)
    assert video.frames.shape == (10, info.height, info.width, 3)  # what preprocessing crops with
    np.testing.assert_array_equal(video.source_indices, np.arange(10))
    shown = _ffmpeg_frames(path)  # ffmpeg auto-rotates: the reference for "as displayed"
    assert shown.shape == video.frames.shape
    assert np.abs(video.frames.astype(int) - shown).max() <= 2
    # the convention itself: displayed = stored turned clockwise by `rotation` = np.rot90 with k = -rotation / 90
    stored = _ffmpeg_frames(path, "-noautorotate")
    assert np.abs(video.frames.astype(int) - np.rot90(stored, k=-rotation // 90, axes=(1, 2))).max() <= 2
    # the marker lands where a clockwise turn puts the top-left corner
    bright = video.frames[0].min(axis=-1) > 200  # (H, W)
    corner = {0: bright[:8, :8], 90: bright[:8, -8:], 180: bright[-8:, -8:], 270: bright[-8:, :8]}[rotation]
    assert corner.all()
    chunks = list(M.iter_video_chunks(path, chunk=3))
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), video.frames)
    assert [c.start for c in chunks] == [0, 3, 6, 9]


def test_rotation_from_ffprobe_json() -> None:
    assert M._rotation({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}) == 90
    assert M._rotation({"side_data_list": [{"rotation": 90}]}) == 270
    assert M._rotation({"side_data_list": [{"rotation": -180}]}) == 180
    assert M._rotation({"side_data_list": [{"rotation": 180}]}) == 180
    assert M._rotation({"tags": {"rotate": "90"}}) == 90  # legacy tag: clockwise already
    assert M._rotation({"side_data_list": [{"rotation": -89.6}], "tags": {"rotate": "0"}}) == 90
    assert M._rotation({}) == 0 and M._rotation({"side_data_list": [{"side_data_type": "CPB"}]}) == 0


def _frame_numbers(video: M.VideoFrames, path: Path) -> list[int]:
    """Which source frame each output frame shows, read from the picture (brightness rises with N)."""
    raw_means = _raw_frames(path).mean(axis=(1, 2, 3))
    assert np.all(np.diff(raw_means) > 0)
    return [int(np.argmin(np.abs(raw_means - m))) for m in video.frames.mean(axis=(1, 2, 3))]


@pytest.fixture(scope="module")
def rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rates")
    f = {"ntsc": d / "ntsc.mp4", "vfr": d / "vfr.mp4"}
    # 29.97 fps (30000/1001), 60 frames = 2.002 s, frame number in the luma
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=30000/1001:d=2.002,format=yuv420p,"
            "geq=lum='16+3*N':cb=128:cr=128", "-frames:v", "60", "-c:v", "libx264", "-qp", "0", str(f["ntsc"]))
    # phone-style VFR in mp4: 30 frames at 30 fps (0-1 s), then 15 frames at 15 fps (1-2 s)
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=30:d=1.5,format=yuv420p,geq=lum='16+4*N':cb=128:cr=128,"
            "setpts='if(lt(N,30),N,30+2*(N-30))'", "-fps_mode", "vfr", "-c:v", "libx264", "-qp", "0",
            str(f["vfr"]))  # fmt: skip
    return f


def test_read_video_ntsc_29_97(rates: dict[str, Path]) -> None:
    info = M.probe(rates["ntsc"])
    assert info.fps == pytest.approx(30000 / 1001) and not info.variable_fps and info.n_frames == 60
    video = M.read_video(rates["ntsc"])
    assert len(video) == math.ceil(60 * 1001 / 30000 * 25 - 1e-6) == 51  # ≈ 2.002 s × 25
    k = np.arange(len(video))
    expected = np.floor(k / 25 * 30000 / 1001 + 1e-9).astype(int)  # the frame on screen at k / 25
    assert expected[-1] == 59
    np.testing.assert_array_equal(video.source_indices, expected)
    np.testing.assert_array_equal(_frame_numbers(video, rates["ntsc"]), expected)


def test_read_video_vfr_mp4_30_then_15(rates: dict[str, Path]) -> None:
    info = M.probe(rates["vfr"])
    assert info.variable_fps and info.n_frames == 45
    video = M.read_video(rates["vfr"])
    assert len(video) == 50  # 2.0 s × 25
    t = np.arange(50) / 25
    expected = np.where(t < 1, np.floor(t * 30 + 1e-9), 30 + np.floor((t - 1) * 15 + 1e-9)).astype(int)
    np.testing.assert_array_equal(video.source_indices, expected)
    np.testing.assert_array_equal(_frame_numbers(video, rates["vfr"]), expected)


@pytest.fixture(scope="module")
def offsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Video 0-2 s; a 440 Hz tone that starts 0.7 s into the audio stream; one stream delayed by 0.5 s."""
    d = tmp_path_factory.mktemp("offsets")
    video, audio = d / "v.mp4", d / "a.wav"
    _ffmpeg(*_testsrc("64x48", 25, 2), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
    _ffmpeg("-f", "lavfi", "-i", "aevalsrc='if(gte(t,0.7),0.5*sin(2*PI*440*t),0)':s=16000:d=2", str(audio))
    f = {"late_audio": d / "late_audio.mkv", "late_video": d / "late_video.mkv", "ts": d / "offset.ts"}
    _ffmpeg("-i", str(video), "-itsoffset", "0.5", "-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
            "-c:a", "flac", str(f["late_audio"]))  # fmt: skip
    _ffmpeg("-itsoffset", "0.5", "-i", str(video), "-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
            "-c:a", "flac", str(f["late_video"]))  # fmt: skip
    return f


def _onset_s(wav: np.ndarray, sample_rate: int = 16000) -> float:
    return float(np.argmax(np.abs(wav) > 0.05)) / sample_rate


def test_audio_starting_after_the_video_is_padded(offsets: dict[str, Path]) -> None:
    info = M.probe(offsets["late_audio"])
    assert info.video_start == pytest.approx(0) and info.audio_start == pytest.approx(0.5, abs=0.01)
    wav = M.read_audio(offsets["late_audio"])
    assert _onset_s(wav) == pytest.approx(0.5 + 0.7, abs=0.01)  # on the video clock
    assert np.abs(wav[: int(1.15 * 16000)]).max() < 1e-3
    assert wav.size == pytest.approx(2.5 * 16000, abs=0.01 * 16000)
    assert len(M.read_video(offsets["late_audio"])) == 50


def test_audio_starting_before_the_video_is_cut(offsets: dict[str, Path]) -> None:
    info = M.probe(offsets["late_video"])
    assert info.video_start == pytest.approx(0.5, abs=0.01) and info.audio_start == pytest.approx(0)
    wav = M.read_audio(offsets["late_video"])
    assert _onset_s(wav) == pytest.approx(0.7 - 0.5, abs=0.01)  # sample 0 = first video frame
    assert wav.size == pytest.approx(1.5 * 16000, abs=0.01 * 16000)
    video = M.read_video(offsets["late_video"])
    assert len(video) == 50 and video.source_indices[0] == 0  # video clock starts at its first frame


def test_probe_is_cached_but_sees_rewritten_files(tmp_path: Path, files: dict[str, Path]) -> None:
    dst = tmp_path / "x.mp4"
    shutil.copy(files["v24.mp4"], dst)
    assert M.probe(dst) is M.probe(dst)
    assert M.probe(dst).fps == 24
    shutil.copy(files["v30.mp4"], dst)
    os.utime(dst, ns=(1, 1))
    assert M.probe(dst).fps == 30


def test_read_frames_equals_slice_of_read_video(tmp_path: Path) -> None:
    frames = (np.arange(150, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8))
    path = tmp_path / "ramp.mp4"
    M.write_video(path, frames, fps=25, crf=0)
    full = M.read_video(path).frames
    np.testing.assert_array_equal(M.read_frames(path, 60, 10), full[60:70])
    np.testing.assert_array_equal(M.read_frames(path, 140, 50), full[140:])


def test_write_video_keyint_and_preset(tmp_path: Path) -> None:
    """keyint=25: a keyframe at least every 25 frames (cheap seeks); a faster preset keeps frames and quality."""
    frames = _smooth_frames(80, 48, 64)
    M.write_video(tmp_path / "k.mp4", frames, crf=15, preset="superfast", keyint=25)
    M.write_video(tmp_path / "d.mp4", frames, crf=15)
    keys = decord.VideoReader(str(tmp_path / "k.mp4")).get_key_indices()
    assert keys[0] == 0 and np.diff(np.r_[keys, 80]).max() <= 25 and len(keys) >= 4
    assert len(decord.VideoReader(str(tmp_path / "d.mp4")).get_key_indices()) == 1  # x264's default: 250
    fast, slow = M.read_video(tmp_path / "k.mp4").frames, M.read_video(tmp_path / "d.mp4").frames
    assert fast.shape == slow.shape == frames.shape
    assert _psnr(_luma(fast), _luma(frames)) > 40
    with pytest.raises(ValueError, match="keyint"):
        M.write_video(tmp_path / "bad.mp4", frames, keyint=0)
