"""Media I/O for the preprocessing stage: probe, read audio (ffmpeg), read video (decord), write video (ffmpeg).

Every failure that is the input file's fault raises :class:`MediaError`, which names the file and carries a short
machine-readable ``reason`` (see :data:`MEDIA_ERROR_REASONS`) that preprocessing writes to the manifest as the
rejection reason.

Video is resampled to the pipeline frame rate by presentation timestamps, never by "every n-th frame": output
frame k shows the source frame on screen at time ``k / fps`` (measured from the first frame), so 24/30/60 fps and
variable-frame-rate inputs all map to the same clock as the audio.

Conventions for real-world inputs:

- **Clock.** Time 0 of a file is the presentation time of its first video frame (``MediaInfo.video_start``). Output
  video frame k is the frame on screen at ``video_start + k / fps``, and :func:`read_audio` sample j plays at
  ``video_start + j / sample_rate``: audio that starts later than the video is preceded by silence, audio that
  starts earlier (or AAC priming that a container does not trim, as in MPEG-TS) is cut. Files without video use
  the audio stream's own start.
- **Rotation.** Phone recordings store the picture sideways plus a display matrix (ffprobe:
  ``side_data_list[].rotation``, legacy ``tags.rotate``). :attr:`MediaInfo.rotation` is the *clockwise* rotation, in
  degrees (0/90/180/270), that turns the stored picture into the displayed one; frames from :func:`read_video` /
  :func:`iter_video_chunks` are already rotated (``np.rot90(stored, k=-rotation // 90)``) and so look like the
  output of ``ffmpeg -i file out.png`` (which auto-rotates); ``MediaInfo.width/height`` are the *displayed* size,
  i.e. the size of those frames.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import ffmpeg  # ffmpeg-python
import numpy as np

from pipeline.audio import FPS, SAMPLE_RATE
from pipeline.io import atomic_path

# Reasons a MediaError can carry (manifest rejection codes).
MEDIA_ERROR_REASONS = (
    "not_found",  # the path does not exist
    "unreadable",  # exists but cannot be opened (permissions, not a media file ffprobe recognises)
    "corrupt",  # container damaged: truncated, missing index (moov atom), invalid data
    "no_video_stream",
    "no_audio_stream",
    "too_short",
    "decode_error",  # container opened but decoding frames/samples failed
)

# s; a frame that starts this much after an output time still counts as on screen at it. It only has to absorb
# float error: decord returns float32 seconds (half an ulp is 6e-8 * t, added in resample_indices), and mkv's 1 ms
# time base stores the common rates' coincidences with k / 25 exactly. It must stay well below 0.2 ms, by which
# 29.97 fps frame 6 (0.2002 s) starts after output frame 5 (0.2 s); 1 ms picked that frame too early.
TIMESTAMP_TOLERANCE_S = 1e-5
END_TOLERANCE_S = 1e-3  # s; see resample_indices
DEFAULT_CRF = 15  # libx264 constant rate factor, visually near-lossless
DEFAULT_PRESET = "medium"  # libx264 preset
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
DEFAULT_AUDIO_BITRATE = "192k"  # AAC


def _decord() -> Any:
    """decord, imported on first use: reading audio and writing video (all that `animate` needs) never decode
    video with it, so those paths run where decord is not installed (e.g. a GPU machine measuring `animate`)."""
    import decord

    return decord


def _decord_errors() -> tuple[type[BaseException], ...]:
    """decord raises DECORDError from its C++ checks, and a plain RuntimeError when it cannot open a file."""
    return (_decord().DECORDError, RuntimeError)


class MediaError(Exception):
    """A media file cannot be used; ``reason`` is one of :data:`MEDIA_ERROR_REASONS`."""

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str = "") -> None:
        if reason not in MEDIA_ERROR_REASONS:
            raise ValueError(f"unknown MediaError reason {reason!r}; expected one of {MEDIA_ERROR_REASONS}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across multiprocessing workers
        return (type(self), (self.path, self.reason, self.detail))


def _require(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"{binary} not found on PATH; install ffmpeg (Debian: apt-get install -y ffmpeg)")
    return found


def _last_meaningful_line(stderr: bytes | str | None) -> str:
    """Last non-empty stderr line that is not ffmpeg's generic trailer, for error messages."""
    if not stderr:
        return ""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    generic = ("Conversion failed!", "Exiting normally")
    for line in reversed(lines):
        if not line.startswith(generic):
            return line
    return lines[-1] if lines else ""


def _reason_from_stderr(message: str, default: str) -> str:
    low = message.lower()
    if "no such file" in low:
        return "not_found"
    if "permission denied" in low:
        return "unreadable"
    if any(s in low for s in ("moov atom not found", "invalid data found", "end of file", "truncat", "corrupt")):
        return "corrupt"
    return default


# ---------------------------------------------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file. Video fields are None when there is no video stream, audio fields likewise.

    Attributes:
        path: the probed file.
        duration: seconds (container duration, else the video's, else the audio's); None if unknown.
        width, height: *displayed* size of the first video stream in pixels, i.e. the stored size with width and
            height swapped when ``rotation`` is 90 or 270 — the size of the frames :func:`read_video` returns.
        fps: average frame rate (``avg_frame_rate``; ``r_frame_rate`` or frames/duration when that is 0/0).
        variable_fps: True when avg and real base frame rates disagree (VFR) — resample by timestamps.
        n_frames: frame count from the stream header when the container stores it (mp4/mov), else None.
        video_codec, audio_codec: codec names.
        audio_sample_rate: Hz; audio_channels: count.
        rotation: clockwise rotation in degrees (0, 90, 180, 270) from the stored to the displayed picture. ffprobe
            reports the display matrix as ``side_data_list[].rotation`` = the *counter-clockwise* angle
            (``av_display_rotation_get``), so ``rotation = -side_data_rotation mod 360``; e.g. an iPhone portrait
            video stores 1920x1080 with side-data rotation -90 -> ``rotation`` 90, displayed 1080x1920. The
            legacy ``tags.rotate`` (older muxers/ffprobe) is already clockwise. Other angles are rounded to the
            nearest multiple of 90; mirroring in the display matrix is ignored.
        video_start, audio_start: ``start_time`` of the two streams in seconds (None if unknown); see the module
            docstring for how they define the common clock.
        video_stream: absolute index of the video stream used (cover art skipped).
    """

    path: str
    duration: float | None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    variable_fps: bool = False
    n_frames: int | None = None
    video_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None
    rotation: int = 0
    video_start: float | None = None
    audio_start: float | None = None
    video_stream: int | None = None

    @property
    def stored_size(self) -> tuple[int, int] | None:
        """(width, height) of the picture as stored in the stream, before the display rotation."""
        if self.width is None or self.height is None:
            return None
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def has_video(self) -> bool:
        return self.width is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_sample_rate is not None


def _rate(text: str | None) -> float | None:
    """'30000/1001' -> 29.97; '0/0', '', None -> None."""
    if not text:
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return float(value) if value > 0 else None


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _rotation(stream: dict[str, Any]) -> int:
    """Clockwise display rotation (0/90/180/270) of a video stream from ffprobe's JSON; see :class:`MediaInfo`."""
    for side in stream.get("side_data_list") or []:
        ccw = _float(side.get("rotation"))  # av_display_rotation_get: counter-clockwise degrees
        if ccw is not None:
            return int(round(-ccw / 90)) % 4 * 90
    cw = _float((stream.get("tags") or {}).get("rotate"))  # legacy tag: clockwise degrees
    return int(round(cw / 90)) % 4 * 90 if cw is not None else 0


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Probe a media file with ffprobe (``ffmpeg.probe``).

    Results are cached per (path, size, mtime, inode), so that :func:`read_video` / :func:`read_audio`, which need
    the rotation and stream start times, do not pay ffprobe's start-up (~90 ms) again after the caller probed.

    Raises:
        MediaError: ``not_found``, ``unreadable`` or ``corrupt`` with ffprobe's last meaningful stderr line.
    """
    _require("ffprobe")
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaError(path, "not_found") from None
    except OSError:
        st = None  # let ffprobe say what is wrong
    if st is None:
        return _probe(path)
    return _probe_cached(path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=256)
def _probe_cached(path: str, size: int, mtime_ns: int, inode: int) -> MediaInfo:
    del size, mtime_ns, inode  # cache key only: a rewritten file is probed again
    return _probe(path)


def _probe(path: str) -> MediaInfo:
    if not os.path.exists(path):
        raise MediaError(path, "not_found")
    try:
        data = ffmpeg.probe(path)
    except ffmpeg.Error as err:
        line = _last_meaningful_line(err.stderr)
        raise MediaError(path, _reason_from_stderr(line, "unreadable"), line) from err
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover_art(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaError(path, "unreadable", "no audio or video stream")

    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in (video, audio) if s]
    known = [d for d in durations if d is not None]
    info: dict[str, Any] = {"path": path, "duration": known[0] if known else None}
    if video is not None:
        avg = _rate(video.get("avg_frame_rate"))
        real = _rate(video.get("r_frame_rate"))
        n_frames = int(video["nb_frames"]) if str(video.get("nb_frames", "")).isdigit() else None
        fps = avg or real
        if fps is None and n_frames and info["duration"]:
            fps = n_frames / info["duration"]
        rotation = _rotation(video)
        width, height = int(video["width"]), int(video["height"])
        if rotation in (90, 270):
            width, height = height, width
        info.update(
            width=width,
            height=height,
            rotation=rotation,
            video_start=_float(video.get("start_time")),
            video_stream=int(video["index"]) if "index" in video else None,
            fps=fps,
            variable_fps=bool(avg and real and abs(avg - real) > 1e-3 * real),
            n_frames=n_frames or None,
            video_codec=video.get("codec_name"),
        )
    if audio is not None:
        info.update(
            audio_sample_rate=int(audio["sample_rate"]) if audio.get("sample_rate") else None,
            audio_channels=int(audio["channels"]) if audio.get("channels") else None,
            audio_codec=audio.get("codec_name"),
            audio_start=_float(audio.get("start_time")),
        )
    return MediaInfo(**info)


def _is_cover_art(stream: dict[str, Any]) -> bool:
    """Embedded album art in m4a/mp3 shows up as a one-frame 'video' stream."""
    return bool(stream.get("disposition", {}).get("attached_pic"))


def check_duration(info: MediaInfo, min_seconds: float) -> None:
    """Raise ``MediaError(reason='too_short')`` when the file is shorter than ``min_seconds`` (or of unknown length)."""
    if info.duration is None or info.duration < min_seconds:
        have = "unknown" if info.duration is None else f"{info.duration:.3f} s"
        raise MediaError(info.path, "too_short", f"{have} < {min_seconds:.3f} s")


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------
def _read_pipe(cmd: list[str], chunk: int = 1 << 20) -> tuple[bytearray, bytes, int]:
    """Run `cmd`, reading its stdout into one growing bytearray (stderr drained by a thread, so a chatty decoder
    cannot block on a full pipe). Returns (stdout bytes, stderr bytes, exit status)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    buf = bytearray()
    try:
        while True:
            part = proc.stdout.read(chunk)  # type: ignore[union-attr]
            if not part:
                break
            buf += part
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        rc = proc.wait()
        drain.join()
    return buf, err[0] if err else b"", rc


def read_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream, downmixed to mono and resampled by ffmpeg, on the video's clock.

    Sample 0 plays at the first video frame's presentation time (``MediaInfo.video_start``), the time of
    ``read_video(path).frames[0]``: when the audio stream starts later (``audio_start > video_start``) that many
    samples of silence are prepended, when it starts earlier they are cut. ffmpeg's raw output itself starts at
    the audio stream's first sample and does not fill the lead-in. Audio-only files start at their first sample.

    Returns:
        (S,) float32 mono at ``sample_rate`` Hz.

    Raises:
        MediaError: ``no_audio_stream``, ``decode_error`` (or a probe reason).
    """
    _require("ffmpeg")
    cmd = (ffmpeg.input(str(path))
           .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0")
           .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
           .compile())
    buf, stderr, rc = _read_pipe(cmd)
    if rc != 0:
        # Only now pay for ffprobe (~90 ms start-up), to say why: not_found / corrupt / no_audio_stream.
        info = probe(path)  # raises its own MediaError for unreadable files
        if not info.has_audio:
            raise MediaError(path, "no_audio_stream")
        line = _last_meaningful_line(stderr)
        raise MediaError(path, _reason_from_stderr(line, "decode_error"), line)
    # A writable view of the bytes read (no copy): long recordings exist once in memory, not three times.
    wav = np.frombuffer(buf, dtype="<f4", count=len(buf) // 4)
    if wav.size == 0:
        raise MediaError(path, "decode_error", "audio stream decoded to 0 samples")
    info = probe(path)  # cached after the caller's probe
    if info.has_video and info.video_start is not None and info.audio_start is not None:
        shift = round((info.audio_start - info.video_start) * sample_rate)
        if shift > 0:
            wav = np.concatenate([np.zeros(shift, np.float32), wav])
        elif shift < 0:
            wav = wav[-shift:]
            if wav.size == 0:
                raise MediaError(path, "decode_error", "the audio ends before the first video frame")
    return wav


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFrames:
    """Frames resampled to a fixed rate.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        fps: frame rate of ``frames`` (the target rate).
        source_fps: average frame rate of the source file.
        source_indices: (T,) int64, the source frame shown at each output frame.
        start: index of the first output frame within the whole resampled clip (0 unless from a chunk iterator).
    """

    frames: np.ndarray
    fps: float
    source_fps: float
    source_indices: np.ndarray
    start: int = 0

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def resample_indices(frame_starts: np.ndarray, clip_end: float, fps: float) -> np.ndarray:
    """Source frame index on screen at each output time ``k / fps``, times relative to the first frame.

    Args:
        frame_starts: (N,) presentation start time of each source frame, seconds, in decode order.
        clip_end: end of the last source frame (its start + its duration), seconds.
        fps: target frame rate.

    Returns:
        (T,) int64, T = ceil((clip_end - frame_starts[0]) * fps) (at least 1), non-decreasing.
    """
    starts = np.asarray(frame_starts, dtype=np.float64) - frame_starts[0]  # (N,)
    duration = float(clip_end - frame_starts[0])
    # the clip end is a rounded container value (mkv: 1 ms): an output frame needs 1 ms of picture to count
    n_out = max(1, math.ceil(duration * fps - END_TOLERANCE_S * fps))
    times = np.arange(n_out) / fps  # (T,)
    tolerance = TIMESTAMP_TOLERANCE_S + 1.2e-7 * (np.abs(times) + abs(float(frame_starts[0])))  # float32 ulps
    # A frame is shown from its start until the next frame's start. Sort by start in case of odd decode orders.
    order = np.argsort(starts, kind="stable")
    chosen = np.searchsorted(starts[order], times + tolerance, side="right") - 1  # (T,)
    return order[np.clip(chosen, 0, starts.size - 1)].astype(np.int64)


def _decord_message(err: BaseException) -> str:
    """decord messages start with a C++ source location and run long; keep the first line, shortened."""
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def _open_failure(path: str, err: BaseException) -> MediaError:
    """Explain why decord could not open ``path``: ffprobe's verdict if it has one, else ``decode_error``."""
    try:
        info = probe(path)
    except MediaError as probe_err:
        return probe_err
    if not info.has_video:
        return MediaError(path, "no_video_stream")
    return MediaError(path, "decode_error", _decord_message(err))


def _open_source(path: str, fps: float) -> _VideoSource | _FFmpegVideoSource:
    """The decoder for one file: decord, or the ffmpeg CLI for files with a display rotation.

    decord 0.6 cannot be used on rotated files: it applies the display matrix itself, correctly for 180° but for
    90°/270° it allocates the output with the stored size and ``get_batch`` fails ("from_size == to_size").
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    info = probe(path)  # cached; raises not_found / corrupt / unreadable
    if not info.has_video:
        raise MediaError(path, "no_video_stream")
    if info.rotation:
        return _FFmpegVideoSource(path, fps, info)
    return _VideoSource(path, fps)


class _VideoSource:
    """An open decord reader plus the resampling plan of one file (no display rotation).

    decord's timestamps are relative to the video stream's start, i.e. already on the clock of the module
    docstring.
    """

    def __init__(self, path: str, fps: float) -> None:
        self.path = path
        # Non-ASCII file names (clip_é_日本.mp4) open fine: decord passes the name as UTF-8 (tested).
        try:
            decord = _decord()
            self.reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            n = len(self.reader)
            stamps = np.asarray(self.reader.get_frame_timestamp(np.arange(n)), dtype=np.float64) if n else None
            self.source_fps = float(self.reader.get_avg_fps())
        except _decord_errors() as err:
            raise _open_failure(path, err) from err
        if stamps is None:
            raise _open_failure(path, RuntimeError("decord found 0 frames"))
        self.indices = resample_indices(stamps[:, 0], float(stamps[-1, 1]), fps)  # (T,)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Decode source frames ``indices`` (non-decreasing) -> (n, H, W, 3) uint8."""
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            batch = self.reader.get_batch(unique.tolist()).asnumpy()  # (U, H, W, 3)
        except _decord_errors() as err:
            raise MediaError(self.path, "decode_error", _decord_message(err)) from err
        if batch.shape[0] != unique.size or batch.ndim != 4 or batch.shape[-1] != 3:
            raise MediaError(self.path, "decode_error", f"decord returned shape {batch.shape}")
        return batch[inverse] if unique.size != indices.size else batch

    def close(self) -> None:
        self.reader = None  # decord releases the decoder when the reader is collected


class _FFmpegVideoSource:
    """Sequential decoding through the ffmpeg CLI, for rotated files (see :func:`_open_source`).

    The resampling plan comes from the packet timestamps (``ffprobe -show_entries packet``: demuxing only, no
    decoding); ffmpeg then decodes every frame (``-vsync passthrough``, ``-noautorotate``) in presentation order
    and the frames are rotated here with ``np.rot90`` by ``info.rotation``. Source indices are presentation-order
    indices. ``get`` must be called with non-decreasing indices across calls (read_video and iter_video_chunks do).
    """

    def __init__(self, path: str, fps: float, info: MediaInfo) -> None:
        self.path = path
        self.rotation = info.rotation
        self.video_stream = info.video_stream
        assert info.stored_size is not None
        self.width, self.height = info.stored_size
        stream = info.video_stream if info.video_stream is not None else 0
        ffprobe = _require("ffprobe")
        proc = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", str(stream), "-show_entries",
             "packet=pts_time,duration_time,flags", "-of", "json", path],
            capture_output=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            line = _last_meaningful_line(proc.stderr)
            raise MediaError(path, _reason_from_stderr(line, "decode_error"), line)
        packets = json.loads(proc.stdout or b"{}").get("packets", [])
        # 'D': packets the demuxer marks as discarded (outside an mp4 edit list); the decoder drops their frames.
        kept = [(_float(pk.get("pts_time")), _float(pk.get("duration_time"))) for pk in packets
                if "D" not in str(pk.get("flags", ""))]  # fmt: skip
        kept = [(t, d) for t, d in kept if t is not None]
        if not kept:
            raise MediaError(path, "decode_error", "no video packets with timestamps")
        starts = np.sort(np.array([t for t, _ in kept], dtype=np.float64))  # (N,) presentation order
        step = float(np.median(np.diff(starts))) if starts.size > 1 else 1.0 / (info.fps or fps)
        end = max(t + (d if d else step) for t, d in kept)
        self.n_source = int(starts.size)
        self.source_fps = float(info.fps or (self.n_source / max(end - starts[0], 1e-9)))
        self.indices = resample_indices(starts, end, fps)  # (T,)
        self.frame_bytes = self.width * self.height * 3
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: Any = None
        self.position = 0  # number of frames read so far
        self.current: np.ndarray | None = None  # (H, W, 3) displayed frame position - 1

    def _start(self) -> subprocess.Popen[bytes]:
        ffmpeg_bin = _require("ffmpeg")
        self.stderr = tempfile.TemporaryFile()
        stream = "0:v:0" if self.video_stream is None else f"0:{self.video_stream}"
        cmd = [ffmpeg_bin, "-nostdin", "-hide_banner", "-loglevel", "error", "-noautorotate", "-i", self.path,
               "-map", stream, "-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]  # fmt: skip
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr)

    def _read_frame(self) -> np.ndarray:
        if self.proc is None:
            self.proc = self._start()
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(self.frame_bytes)
        if len(data) != self.frame_bytes:
            self.proc.wait()
            self.stderr.seek(0)
            line = _last_meaningful_line(self.stderr.read())
            raise MediaError(self.path, "decode_error",
                             f"ffmpeg decoded {self.position} of {self.n_source} frames" + (f": {line}" if line else ""))
        frame = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
        # clockwise by `rotation` = counter-clockwise by -rotation; np.rot90 turns counter-clockwise for k > 0
        return np.ascontiguousarray(np.rot90(frame, k=-self.rotation // 90))

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Displayed source frames ``indices`` (non-decreasing, not before an earlier call's) -> (n, H', W', 3)."""
        out: list[np.ndarray] = []
        for i in indices.tolist():
            if i < self.position - 1:
                raise ValueError(f"{self.path}: frames must be requested in order ({i} after {self.position - 1})")
            while self.position <= i:
                self.current = self._read_frame()
                self.position += 1
            assert self.current is not None
            out.append(self.current)
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc.wait()
            self.proc = None
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


_DECODE_BATCH = 64  # frames per decord get_batch call; one huge batch is slower (measured) and needs a 2nd copy


def read_video(path: str | os.PathLike[str], fps: float = FPS) -> VideoFrames:
    """Decode a whole video, resampled to ``fps`` by timestamps (see :func:`resample_indices`).

    Raises:
        MediaError: ``no_video_stream``, ``decode_error`` (decord failed, e.g. a truncated file), or a probe reason.
    """
    source = _open_source(str(path), fps)
    try:
        first = source.get(source.indices[:_DECODE_BATCH])  # (<=64, H, W, 3)
        frames = np.empty((source.indices.size, *first.shape[1:]), dtype=np.uint8)  # (T, H, W, 3)
        frames[: first.shape[0]] = first
        for start in range(_DECODE_BATCH, source.indices.size, _DECODE_BATCH):
            frames[start : start + _DECODE_BATCH] = source.get(source.indices[start : start + _DECODE_BATCH])
    finally:
        source.close()
    return VideoFrames(frames=frames, fps=float(fps), source_fps=source.source_fps, source_indices=source.indices)


def iter_video_chunks(path: str | os.PathLike[str], fps: float = FPS, chunk: int = 64) -> Iterator[VideoFrames]:
    """Like :func:`read_video` but yields consecutive chunks of at most ``chunk`` output frames (bounded memory).

    Concatenating the chunks' frames equals ``read_video(path, fps).frames``; each chunk's ``start`` is the index
    of its first frame in the resampled clip.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    source = _open_source(str(path), fps)
    try:
        for start in range(0, source.indices.size, chunk):
            idx = source.indices[start : start + chunk]
            yield VideoFrames(
                frames=source.get(idx), fps=float(fps), source_fps=source.source_fps, source_indices=idx, start=start
            )
    finally:
        source.close()


def read_frames(path: str | os.PathLike[str], start: int, count: int, fps: float = FPS) -> np.ndarray:
    """Resampled frames [start, start + count) (fewer at the clip's end), decoded chunk by chunk so that a
    long clip never sits in memory whole. Returns (t, H, W, 3) uint8."""
    out = []
    for part in iter_video_chunks(path, fps=fps, chunk=_DECODE_BATCH):
        lo, hi = max(start - part.start, 0), min(start + count - part.start, len(part))
        if lo < hi:
            out.append(part.frames[lo:hi])
        if part.start + len(part) >= start + count:
            break
    if not out:
        raise ValueError(f"{path}: no frames in [{start}, {start + count})")
    return np.concatenate(out)


class _StdinWriter:
    """Feeds a process's stdin from a thread, so that the caller produces the next chunk (decoding, rendering) while
    the encoder reads this one; before, the two took turns. At most `depth` chunks wait in the queue (bounded
    memory). A broken pipe (the encoder died) stops the writing; the encoder's exit code and stderr then say why."""

    def __init__(self, stream: Any, depth: int = 2) -> None:
        self.stream = stream
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ffmpeg-stdin", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep taking chunks, so that the producer never blocks on a full queue
            try:
                self.stream.write(memoryview(chunk.reshape(-1)))
            except BaseException as err:  # BrokenPipeError: ffmpeg died
                self.error = err

    def put(self, chunk: np.ndarray) -> None:
        self.queue.put(chunk)

    def close(self) -> None:
        """Waits until every queued chunk is written, then closes stdin; re-raises a write error other than a
        broken pipe."""
        self.queue.put(None)
        self.thread.join()
        try:
            self.stream.close()
        except BrokenPipeError:
            pass
        if self.error is not None and not isinstance(self.error, BrokenPipeError):
            raise self.error


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    threads: int = 1,
    pix_fmt: Literal["yuv420p", "yuv444p"] = "yuv420p",
    audio_rate: int | None = None,
    audio_bitrate: str = DEFAULT_AUDIO_BITRATE,
    keyint: int | None = None,
) -> None:
    """Encode RGB frames (+ optional mono audio) as H.264 yuv420p + AAC, atomically.

    ffmpeg reads raw frames from stdin and writes a temporary file in the destination folder, which is then
    ``os.replace``-d onto ``path``, so readers never see a half-written video. With ``threads=1`` and bitexact flags
    the output bytes are a function of the inputs only (same ffmpeg/x264 build).
    ``frames`` may also be an iterable of (t, H, W, 3) chunks, streamed to the encoder one at a time so that long
    videos never sit in memory whole. A thread writes them to the encoder, so producing the next chunk overlaps
    encoding this one (two chunks wait at most).

    Fidelity (measured, 8-bit BT.601): yuv420p halves chroma resolution, which caps the RGB PSNR of colourful
    content at ~37 dB even at crf 0 (luma PSNR ~45 dB; ~43 dB at crf 15). ``pix_fmt="yuv444p"`` keeps full chroma
    (RGB PSNR ~50 dB at crf 15) but produces High 4:4:4 files that browsers and MLflow's preview do not play.

    Args:
        path: destination; the container follows the suffix (.mp4, .mov, .mkv).
        frames: (T, H, W, 3) uint8 RGB, or an iterable of such chunks; for yuv420p H and W must be even (chroma
            is subsampled 2×2).
        fps: frame rate.
        audio: (S,) float mono in [-1, 1] at ``sample_rate``, or None for a silent video (no audio stream).
        crf: libx264 constant rate factor (0 lossless ... 51); 15 is near-lossless.
        preset: libx264 speed/size preset.
        threads: encoder threads (0 = ffmpeg picks by the CPU count); 1 gives the same bytes on any machine,
            more give the same bytes for the same count (x264 threading is deterministic).
        pix_fmt: "yuv420p" (plays everywhere) or "yuv444p" (full chroma resolution, any frame size).
        audio_rate: sample rate of the encoded audio (ffmpeg resamples); None keeps ``sample_rate``.
        audio_bitrate: AAC bitrate.
        keyint: at most this many frames between keyframes (x264 ``-g``; e.g. ``fps`` for one a second, so that
            readers seeking to a random frame decode at most that many); None = x264's default (250).

    Raises:
        ValueError: bad array shapes/dtypes.
        RuntimeError: ffmpeg failed; the message names the file and includes ffmpeg's stderr.
    """
    ffmpeg_bin = _require("ffmpeg")
    path = Path(path)
    chunks = iter([frames] if isinstance(frames, np.ndarray) else frames)
    first = next(chunks, None)
    first = np.asarray(first) if first is not None else np.zeros((0, 0, 0, 3), np.uint8)

    def check(chunk: np.ndarray) -> np.ndarray:
        if chunk.ndim != 4 or chunk.shape[-1] != 3 or chunk.dtype != np.uint8:
            raise ValueError(f"{path}: expected (T, H, W, 3) uint8 frames, got {chunk.shape} {chunk.dtype}")
        if chunk.shape[1:] != first.shape[1:]:
            raise ValueError(f"{path}: frame size changed from {first.shape[1:3]} to {chunk.shape[1:3]}")
        return np.ascontiguousarray(chunk)

    if first.ndim != 4 or first.shape[-1] != 3 or first.dtype != np.uint8 or first.shape[0] == 0:
        raise ValueError(f"{path}: expected (T, H, W, 3) uint8 frames with T >= 1, got {first.shape} {first.dtype}")
    _, height, width, _ = first.shape
    if pix_fmt not in ("yuv420p", "yuv444p"):
        raise ValueError(f"{path}: pix_fmt must be 'yuv420p' or 'yuv444p', got {pix_fmt!r}")
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        # Refuse rather than pad/crop silently: a size change would misalign boxes/landmarks stored for the clip.
        raise ValueError(f"{path}: H.264 yuv420p needs even frame sizes, got {width}x{height}; crop/pad or use yuv444p")
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"{path}: expected mono audio of shape (S,), got {audio.shape}")

    with tempfile.TemporaryDirectory(prefix="tavce_audio_") as audio_dir, atomic_path(path) as tmp_path:
        cmd = [ffmpeg_bin, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
        if audio is not None:
            audio_raw = os.path.join(audio_dir, "audio.f32le")
            audio.astype("<f4").tofile(audio_raw)
            cmd += ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", audio_raw]
        cmd += ["-map", "0:v:0"] + (["-map", "1:a:0"] if audio is not None else [])
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", pix_fmt, "-threads", str(threads)]
        if keyint is not None:
            if keyint < 1:
                raise ValueError(f"{path}: keyint must be >= 1, got {keyint}")
            cmd += ["-g", str(keyint)]
        # Tag the BT.601 matrix that swscale's rgb->yuv conversion uses, so decoders convert back consistently.
        cmd += ["-colorspace", "smpte170m", "-color_primaries", "smpte170m", "-color_trc", "smpte170m"]
        if audio is not None:
            cmd += ["-c:a", "aac", "-b:a", audio_bitrate, "-ar", str(audio_rate or sample_rate)]
        cmd += ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
        if path.suffix.lower() in (".mp4", ".mov", ".m4v", ""):
            cmd += ["-movflags", "+faststart"]
        if not path.suffix:
            cmd += ["-f", "mp4"]
        cmd += [str(tmp_path)]
        n = 0
        # stderr goes to a file, not a pipe: a chatty ffmpeg must never block while we feed stdin.
        with open(os.path.join(audio_dir, "stderr.txt"), "w+b") as err, subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
        ) as proc:
            assert proc.stdin is not None
            writer = _StdinWriter(proc.stdin)
            try:
                for given in itertools.chain([first], chunks):
                    chunk = check(np.asarray(given))
                    # Written later, from the thread: a copy, so that the caller may reuse its buffer.
                    writer.put(chunk.copy() if np.shares_memory(chunk, given) else chunk)
                    n += chunk.shape[0]
                    if writer.error is not None:
                        break  # ffmpeg died; its exit code and stderr say why
            finally:
                writer.close()
            returncode = proc.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace").strip()
        if returncode != 0:
            raise RuntimeError(f"{path}: ffmpeg failed (exit {returncode}) after {n} frames:\n{stderr}")


def video_to_gif(src: str | os.PathLike[str], dst: str | os.PathLike[str], fps: float = 12.5, width: int = 192) -> None:
    """Convert a video to a small palette GIF (MLflow's UI previews GIFs reliably, mp4 not), atomically."""
    ffmpeg_bin = _require("ffmpeg")
    graph = f"fps={fps},scale={width}:-1:flags=lanczos,split[a][b];[a]palettegen[p];[b][p]paletteuse"
    with atomic_path(dst, suffix=".gif") as tmp:
        proc = subprocess.run([ffmpeg_bin, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                               "-vf", graph, "-f", "gif", str(tmp)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{dst}: ffmpeg failed making a GIF from {src}:\n{proc.stderr.decode(errors='replace')}")
