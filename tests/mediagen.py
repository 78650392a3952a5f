"""Test media made on the fly with the ffmpeg CLI (independent of pipeline.media, so they test it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

# container suffix -> (video codec args, audio codec args)
_CODECS = {
    ".mp4": (["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18"], ["-c:a", "aac"]),
    ".mov": (["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18"], ["-c:a", "aac"]),
    ".mkv": (["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18"], ["-c:a", "aac"]),
    ".avi": (["-c:v", "mjpeg", "-q:v", "3"], ["-c:a", "pcm_s16le"]),
    ".webm": (["-c:v", "libvpx", "-b:v", "1M"], ["-c:a", "libopus"]),
}


def astronaut(size: int = 256) -> np.ndarray:
    """skimage's astronaut portrait (a real face), resized to size×size RGB uint8."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def face_frames(n: int, size: int = 256, two_faces: bool = False, amplitude: float = 6.0) -> np.ndarray:
    """(n, H, W, 3) frames of the astronaut moving slowly left/right (two side by side if `two_faces`)."""
    import cv2

    img = astronaut(size)
    if two_faces:
        img = np.concatenate([img, img[:, ::-1]], axis=1)  # (H, 2W, 3): two faces
    h, w = img.shape[:2]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        dx = amplitude * np.sin(2 * np.pi * t / 25.0)
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        out[t] = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return out


def write_video(path: Path, frames: np.ndarray, fps: float = 25, audio: bool = True, sample_rate: int = 16000,
                channels: int = 1, silent: bool = False) -> Path:
    """Encode frames (+ a 220 Hz tone, or digital silence if `silent`) with the ffmpeg CLI; the codec follows the
    suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w = frames.shape[:3]
    vargs, aargs = _CODECS[path.suffix.lower()]
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio:
        source = (f"anullsrc=r={sample_rate}:cl=mono,atrim=duration={n / fps + 0.5}" if silent else
                  f"sine=frequency=220:sample_rate={sample_rate}:duration={n / fps + 0.5}")
        cmd += ["-f", "lavfi", "-i", source,
                "-ac", str(channels), *aargs, "-shortest"]
    cmd += [*vargs, str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=300:sample_rate=16000:duration={seconds}", "-c:a", "aac", str(path)], check=True)
    return path


def write_testsrc(path: Path, seconds: float = 2.0, size: int = 256) -> Path:
    """ffmpeg's colour-bar test pattern with a tone: a valid video without any face."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=300:sample_rate=16000:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
