"""Preprocessing (method.md §1–2): raw talking-head videos -> cropped 25 fps clips, landmarks, coefficients,
audio features.

Two passes:

1. **Per clip** (expensive, parallel over clips, cached): probe, decode (decord) and resample to 25 fps,
   audio to 16 kHz mono (ffmpeg), per-frame face detection and 68-point landmarks, box smoothing and one fixed
   square crop per clip (FOMM/SadTalker style, so head motion stays visible), rigid pose by Procrustes, the
   aligned expression residuals, and the three audio features. Writes the cropped clip
   `clips/<id>.mp4` and a cache entry `cache/<id>.npz` keyed by a fingerprint of the raw file's bytes and the
   pass-1 settings. A clip that fails is recorded with a reason and skipped.
2. **Corpus** (cheap, always recomputed): speaker-disjoint split, the 64-component expression PCA basis fitted
   on the train split (`expression_basis.npz`, a versioned artifact), the 73-d coefficients of every clip,
   `features/<id>.npz`, `manifest.parquet`, `rejected.csv`.

Rerunning after adding videos only runs pass 1 on new or changed files; pass 2 then rebuilds everything that
depends on the corpus (split, basis, coefficients), so the outputs equal those of a clean run. Every file is
written atomically (temp name + rename) and cache entries are written last, so a killed run leaves nothing a
rerun would trust.

The clip id is the video's path under the raw folder without its extension (`id00017/abc_0001`); the speaker
is the first folder of that path (VoxCeleb2/HDTF layout), or the file stem for files directly in the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import audio as audio_features
from pipeline import media
from pipeline.config import CommonConfig, to_dict
from pipeline.data import corpus as corpus_mod
from pipeline.faces import bfm as bfm_mod
from pipeline.faces import coeffs as coeffs_mod
from pipeline.faces import deep3d as deep3d_mod
from pipeline.faces import crop as crop_mod
from pipeline.faces.landmarks import (
    FACE_ALIGNMENT_FILES_2D,
    FACE_ALIGNMENT_FILES_3D,
    FaceTrack,
    check_face_alignment_weights,
    make_backend,
)
from pipeline.io import (atomic_path, check_writable, file_digest, load_npz, remove_stale_temps, save_npz, verify_npz,
                         write_json)

log = logging.getLogger(__name__)

# Bump when pass-1 outputs change meaning, so stale cache entries are recomputed.
CACHE_VERSION = 3  # 3: the cache records the cropped clip's size and digest; silent and sideways inputs
# Members a cache entry must hold to be trusted (besides passing its CRC check; see `_cached`).
CACHE_MEMBERS = ("fingerprint", "meta", "clip_bytes", "clip_digest", "landmarks", "boxes", "scores", "rotation",
                 "translation", "scale", "aligned", "wav", "mel", "mfcc", "fbank")
SIDEWAYS_ROLL_DEG = 45.0  # a clip whose median roll is beyond ±45° is stored sideways (see `upright_turns`)
STREAM_CHUNK_FRAMES = 128  # frames per decoded chunk when a clip is streamed
BASIS_MAX_FRAMES = 200_000  # train frames used to fit the expression PCA (strided over clips beyond that)
VIDEO_EXTENSIONS = ("mp4", "mkv", "avi", "mov", "webm")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of *speakers* per split (method.md §1.2: splits are by speaker)."""

    train: float = 0.75
    val: float = 0.125
    test: float = 0.125

    def validate(self) -> None:
        fr = (self.train, self.val, self.test)
        if min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")


@dataclass(frozen=True)
class Deep3DConfig:
    """Files of the `deep3d` coefficient backend (`pipeline.faces.deep3d`; README "SadTalker's release").

    Attributes:
        checkpoint: Deep3DFaceRecon's ``epoch_20.pth`` (weights under ``net_recon``) or SadTalker's
            ``SadTalker_V0.0.2_256.safetensors`` (weights under ``face_3drecon.``).
        bfm_folder: folder with ``BFM_model_front.mat`` and ``similarity_Lm3D_all.mat`` (SadTalker's
            ``checkpoints/BFM_Fitting``).
        batch_size: frames per reconstruction-network pass.
    """

    checkpoint: str | None = None
    bfm_folder: str | None = None
    batch_size: int = 16


@dataclass(frozen=True)
class PreprocessConfig:
    r"""`preprocess` section of params.yaml.

    Attributes:
        backend: landmark backend, `mediapipe` (default, offline) or `face_alignment` (needs its weights).
        face_alignment_landmarks: `2D` (2DFAN4) or `3D` (3DFAN4 + depth) for the face_alignment backend.
        device: torch device for the face_alignment backend.
        face_alignment_weights: folder holding the face_alignment weight files; null = the torch hub cache
            (`$TORCH_HOME/hub/checkpoints`, resolved by the stage entry point).
        workers: processes over clips (1 = in the main process); with the `ray` engine and no `ray_address`,
            the CPUs of the local Ray instance it starts.
        engine: `local` (a process pool on this machine) or `ray` (one Ray task per clip, on the cluster at
            `ray_address`); both write the same cache, rejection records and manifest.
        ray_address: the Ray cluster to attach to (`auto`, `ray://host:10001`, `host:6379`); null = start a
            local Ray instance for this run (only when `engine` is `ray`).
        ray_max_retries: times Ray reruns a clip whose worker process died before the clip is rejected
            (`worker_crash`).
        extensions: video file extensions picked up under the raw folder.
        speaker_regex: how to read the speaker from a clip id (its path under the raw folder, no extension):
            the first group of the first match (the whole match without groups). null = the first folder, or
            the file stem for files directly in the raw folder. E.g. HDTF's flat `WDA_BarackObama_000.mp4`
            needs `'^(?:.*/)?[A-Z]+_(.+)_\d+$'` so that all of a person's videos share one split.
        min_duration_s: shorter clips are rejected (longest training window + margin).
        max_duration_s: longer clips are rejected (memory); split long videos beforehand.
        min_confidence: face detection score threshold.
        min_face_fraction: reject a clip whose face is found in fewer frames than this fraction.
        max_multi_face_fraction: reject a clip where a second face is found in more frames than this fraction.
        box_smoothing_frames: temporal window (frames) of the box smoother.
        crop_scale: crop side = this × the face box side (the box being the union of the clip's smoothed boxes).
        crf: x264 quality of the cropped clips (lower = better; 15 is visually lossless).
        encoder_preset: x264 preset of the cropped clips (`X264_PRESETS`); at crf 15 on the synthetic crops
            `superfast` encodes ~2× faster than `medium` at the same or better PSNR (43.8 vs 43.5 dB), in files
            ~1.7× larger (README, preprocess).
        keyframe_interval_s: at most this many seconds between keyframes of the cropped clips (1.0: one a second,
            so a loader seeking to a random frame decodes at most 25 frames); null = x264's default (250 frames).
        mouth_roi_quality: JPEG quality of the mouth ROIs (method.md §1, 112 px) cut from each cropped frame before
            encoding and stored with the clip's features, so that the TAVC loader decodes a small JPEG instead of
            seeking into the clip (~3 KB per frame at 95, ~45 dB against the ROI); null = none stored (the loader
            then decodes the clips, as before issue 16).
        landmark_mode: mediapipe backend only: `per_frame` (face detection on every frame) or `tracking` (the face
            mesh follows the face, detection every `detect_interval` frames and whenever the track is lost or
            jumps; `pipeline.faces.landmarks.MediapipeBackend`).
        detect_interval: frames between face detections in `tracking` mode.
        max_memory_mb: clips whose decoded frames would need more memory are streamed in chunks (decoded twice).
        silence_threshold_db: a clip whose audio RMS level (dBFS, whole clip) is below this is silent.
        silent_audio: `reject` (reason `silent_audio`) or `keep` (a warning naming the clip and its level).
        sideways: what to do with a clip whose median head roll is beyond ±45° (a portrait video stored sideways
            without rotation metadata): `upright` turns it by the nearest multiple of 90° before cropping,
            `reject` rejects it (reason `sideways`).
        split: speaker fractions per split.
        coeffs_backend: `landmark3dmm` (default: rigid Procrustes pose + the corpus' PCA expression basis) or
            `deep3d` (Deep3DFaceRecon's BFM expression, angles and translation: what SadTalker's released networks
            read; needs `deep3d`'s files). Both write the 73-d layout of `pipeline.faces.coeffs`.
        deep3d: files of the `deep3d` backend.
    """

    backend: Literal["mediapipe", "face_alignment"] = "mediapipe"
    face_alignment_landmarks: Literal["2D", "3D"] = "2D"
    device: str = "cpu"
    face_alignment_weights: str | None = None
    workers: int = 2
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_max_retries: int = 2
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    speaker_regex: str | None = None
    min_duration_s: float = 1.2
    max_duration_s: float = 600.0
    min_confidence: float = 0.5
    min_face_fraction: float = 0.8
    max_multi_face_fraction: float = 0.2
    box_smoothing_frames: int = 9
    crop_scale: float = 1.8
    crf: int = 15
    encoder_preset: str = "superfast"
    keyframe_interval_s: float | None = 1.0
    mouth_roi_quality: int | None = 95
    landmark_mode: Literal["per_frame", "tracking"] = "tracking"
    detect_interval: int = 25
    max_memory_mb: int = 2048
    silence_threshold_db: float = -60.0
    silent_audio: Literal["reject", "keep"] = "reject"
    sideways: Literal["upright", "reject"] = "upright"
    split: SplitConfig = SplitConfig()
    coeffs_backend: Literal["landmark3dmm", "deep3d"] = "landmark3dmm"
    deep3d: Deep3DConfig = Deep3DConfig()

    def validate(self) -> None:
        if self.coeffs_backend not in ("landmark3dmm", "deep3d"):
            raise ValueError(f"coeffs_backend must be landmark3dmm | deep3d, got {self.coeffs_backend!r}")
        if self.deep3d.batch_size < 1:
            raise ValueError("deep3d.batch_size must be >= 1")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local | ray, got {self.engine!r}")
        if self.ray_max_retries < 0:
            raise ValueError("ray_max_retries must be >= 0")
        if not 0 < self.min_duration_s < self.max_duration_s:
            raise ValueError("need 0 < min_duration_s < max_duration_s")
        if not 0 <= self.min_face_fraction <= 1 or not 0 <= self.max_multi_face_fraction <= 1:
            raise ValueError("face fractions must be in [0, 1]")
        if self.crop_scale < 1:
            raise ValueError("crop_scale must be >= 1")
        if not 0 <= self.crf <= 51:
            raise ValueError("crf must be in 0..51")
        if self.encoder_preset not in media.X264_PRESETS:
            raise ValueError(f"encoder_preset must be one of {' | '.join(media.X264_PRESETS)}, "
                             f"got {self.encoder_preset!r}")
        if self.keyframe_interval_s is not None and not self.keyframe_interval_s > 0:
            raise ValueError(f"keyframe_interval_s must be > 0 or null, got {self.keyframe_interval_s}")
        if self.mouth_roi_quality is not None and not 1 <= self.mouth_roi_quality <= 100:
            raise ValueError(f"mouth_roi_quality must be in 1..100 or null, got {self.mouth_roi_quality}")
        if self.landmark_mode not in ("per_frame", "tracking"):
            raise ValueError(f"landmark_mode must be per_frame | tracking, got {self.landmark_mode!r}")
        if self.detect_interval < 1:
            raise ValueError("detect_interval must be >= 1")
        if self.box_smoothing_frames < 1:
            raise ValueError("box_smoothing_frames must be >= 1")
        if self.silent_audio not in ("reject", "keep"):
            raise ValueError(f"silent_audio must be reject | keep, got {self.silent_audio!r}")
        if self.sideways not in ("upright", "reject"):
            raise ValueError(f"sideways must be upright | reject, got {self.sideways!r}")
        if self.speaker_regex is not None:
            try:
                re.compile(self.speaker_regex)
            except re.error as err:
                raise ValueError(f"speaker_regex {self.speaker_regex!r} is not a valid regular expression: {err}") from err

    def pass1_fingerprint(self, common: CommonConfig) -> dict[str, Any]:
        """The settings pass-1 outputs depend on (a change invalidates the cache)."""
        d = to_dict(self)
        for k in ("workers", "engine", "ray_address", "ray_max_retries", "split", "extensions", "face_alignment_weights", "max_memory_mb", "speaker_regex", "coeffs_backend", "deep3d"):
            d.pop(k)
        # Switches added later leave the fingerprint as it was while they keep the earlier behaviour (caches stay
        # valid); detect_interval only matters in tracking mode.
        for k, before in (("encoder_preset", "medium"), ("keyframe_interval_s", None), ("landmark_mode", "per_frame"),
                          ("mouth_roi_quality", None)):
            if d[k] == before:
                d.pop(k)
        if self.backend != "mediapipe":
            d.pop("landmark_mode", None)
        if self.landmark_mode != "tracking" or self.backend != "mediapipe":
            d.pop("detect_interval")
        if self.coeffs_backend == "deep3d":  # the files' contents count, not where they lie
            # (the landmark backend's fingerprint stays as before, so its caches stay valid)
            d["deep3d"] = {"checkpoint": file_digest(Path(self.deep3d.checkpoint)),
                           **{name: file_digest(Path(self.deep3d.bfm_folder) / name)
                              for name in (bfm_mod.STANDARD_LANDMARKS_FILE, bfm_mod.BFM_FILE)}}
        return {"cache_version": CACHE_VERSION, "fps": common.fps, "sample_rate": common.sample_rate,
                "image_size": common.image_size, **d}

    def check_deep3d_files(self) -> None:
        """With ``coeffs_backend: deep3d``: raise `Deep3DFilesMissing` naming each missing file and its param."""
        if self.coeffs_backend != "deep3d":
            return
        missing = deep3d_mod.missing_files(self.deep3d.checkpoint, self.deep3d.bfm_folder)
        if missing:
            lines = "\n".join(f"  preprocess.deep3d.{role}: {what}" for role, what in missing)
            raise Deep3DFilesMissing(
                "coeffs_backend deep3d needs these files (SadTalker's release: checkpoints/epoch_20.pth or "
                "SadTalker_V0.0.2_256.safetensors, and checkpoints/BFM_Fitting/; README \"SadTalker's release and "
                f"Deep3DFaceRecon coefficients\"):\n{lines}")


class Deep3DFilesMissing(FileNotFoundError):
    """`coeffs_backend: deep3d` without its files; the message names each file and the param that points to it."""


class NoUsableClips(RuntimeError):
    """Nothing under the raw folder could be used (the stage must fail rather than yield an empty dataset)."""


class ClipRejected(Exception):
    """A clip that cannot be used, with a short machine-readable reason."""

    def __init__(self, path: Path | str, reason: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ClipJob:
    src: Path  # the video file
    clip_id: str  # path under the raw folder without extension
    speaker: str
    rel: str  # path under the raw folder (what reports show: independent of where the data lives)


@dataclass
class ClipOutcome:
    clip_id: str
    src: str
    status: Literal["done", "cached", "rejected"]
    reason: str = ""
    message: str = ""
    frames: int = 0


# --------------------------------------------------------------------------------------------------------------
# Discovery


def speaker_of(clip_id: str, speaker_regex: str | None = None) -> str | None:
    """The speaker of a clip id (see `PreprocessConfig.speaker_regex`); None if the regex does not match."""
    if speaker_regex is None:
        return clip_id.split("/")[0]  # the first folder, or the stem of a file directly in the raw folder
    m = re.search(speaker_regex, clip_id)
    if m is None:
        return None
    return m.group(1) if m.re.groups else m.group(0)


def discover(raw_dir: Path, extensions: Sequence[str] = VIDEO_EXTENSIONS, speaker_regex: str | None = None
             ) -> tuple[list[ClipJob], list[ClipOutcome]]:
    """Find videos under `raw_dir` (nested folders); returns jobs, and rejections for duplicate clip ids and ids
    from which `speaker_regex` cannot read a speaker."""
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not p.name.startswith("."))
    jobs: list[ClipJob] = []
    rejected: list[ClipOutcome] = []
    seen: dict[str, Path] = {}
    for p in files:
        rel = p.relative_to(raw_dir)
        clip_id = rel.with_suffix("").as_posix()
        if clip_id in seen:
            rejected.append(ClipOutcome(clip_id, rel.as_posix(), "rejected", "duplicate_id",
                                        f"same clip id as {seen[clip_id].relative_to(raw_dir).as_posix()}"))
            continue
        seen[clip_id] = p
        speaker = speaker_of(clip_id, speaker_regex)
        if speaker is None:  # no silent fallback: a wrong speaker would leak identities across splits
            rejected.append(ClipOutcome(clip_id, rel.as_posix(), "rejected", "speaker_unknown",
                                        f"{rel.as_posix()}: speaker_regex {speaker_regex!r} does not match"))
            continue
        jobs.append(ClipJob(p, clip_id, speaker, rel.as_posix()))
    return jobs, rejected


def _fingerprint(src: Path, settings: dict[str, Any]) -> str:
    blob = json.dumps({"file": file_digest(src), "settings": settings}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Pass 1: one clip


def process_clip(job: ClipJob, out_dir: Path, cfg: PreprocessConfig, common: CommonConfig, backend: Any,
                 fingerprint: str, coeff_estimator: deep3d_mod.Deep3DEstimator | None = None) -> ClipOutcome:
    """Pass 1 for one video. Raises `ClipRejected` or `media.MediaError` for unusable input.

    With `coeff_estimator` (``coeffs_backend: deep3d``), each cropped chunk also goes through Deep3DFaceRecon on its
    way to the encoder (no second decode), and the cache entry holds its coefficients."""
    src = job.src
    info = media.probe(src)
    if info.audio_sample_rate is None:
        raise ClipRejected(src, "no_audio_stream", "has no audio track")
    if info.duration is not None and info.duration > cfg.max_duration_s:
        raise ClipRejected(src, "too_long", f"lasts {info.duration:.1f} s > max_duration_s {cfg.max_duration_s}")
    if not info.has_video:
        raise media.MediaError(src, "no_video_stream", "the file has audio only")
    wav = media.read_audio(src, sample_rate=common.sample_rate)  # (S,) float32 mono
    level = audio_features.rms_dbfs(wav)
    if level < cfg.silence_threshold_db:  # before any video decoding: a silent clip teaches no lip sync
        what = (f"the audio is silent: RMS level {level:.1f} dBFS over the clip < silence_threshold_db "
                f"{cfg.silence_threshold_db:g}")
        if cfg.silent_audio == "reject":
            raise ClipRejected(src, "silent_audio", what)
        log.warning("%s: %s; kept (silent_audio: keep)", job.rel, what)

    # Short clips are decoded once and kept in memory; long ones (HDTF videos run for minutes) are decoded twice
    # in chunks — once for landmarks, once for crop + encoding — so memory stays bounded.
    est_frames = math.ceil(info.duration * common.fps) + 1 if info.duration else None
    in_memory = est_frames is not None and est_frames * info.width * info.height * 3 <= cfg.max_memory_mb * 2**20
    if in_memory:
        frames = media.read_video(src, fps=common.fps).frames  # (T, H, W, 3) uint8

        def chunks() -> Iterator[np.ndarray]:
            yield frames
    else:
        def chunks() -> Iterator[np.ndarray]:
            for part in media.iter_video_chunks(src, fps=common.fps, chunk=STREAM_CHUNK_FRAMES):
                yield part.frames  # (t, H, W, 3)

    track: FaceTrack = backend.process_stream(chunks())
    # A portrait video stored sideways without rotation metadata: turned upright by quarter turns before anything
    # else (lossless), then landmarked again, since detectors and the pose fit are made for upright faces.
    turns, roll = upright_turns(track.landmarks)
    if turns:
        what = f"the face is turned {roll:+.0f}° (median roll): the video is stored sideways without rotation metadata"
        if cfg.sideways == "reject":
            raise ClipRejected(src, "sideways", f"{what} (sideways: reject)")
        log.warning("%s: %s; turning it %d° counter-clockwise (sideways: upright)", job.rel, what, 90 * turns)
        stored_chunks = chunks

        def chunks() -> Iterator[np.ndarray]:
            for part in stored_chunks():
                yield np.ascontiguousarray(np.rot90(part, k=turns, axes=(1, 2)))  # (t, H, W, 3) -> (t, W', H', 3)

        track = backend.process_stream(chunks())
    n = track.num_frames
    duration = n / common.fps
    if duration < cfg.min_duration_s:
        raise ClipRejected(src, "too_short", f"lasts {duration:.2f} s ({n} frames at {common.fps} fps) "
                                             f"< min_duration_s {cfg.min_duration_s}")
    found = track.scores > 0  # (T,)
    face_fraction = float(found.mean())
    if face_fraction == 0:
        raise ClipRejected(src, "no_face", "no face found in any frame")
    if face_fraction < cfg.min_face_fraction:
        raise ClipRejected(src, "face_not_found", f"face found in {face_fraction:.0%} of frames "
                                                  f"< min_face_fraction {cfg.min_face_fraction:.0%}")
    with_landmarks = float(track.has_landmarks.mean())
    if with_landmarks < cfg.min_face_fraction:
        raise ClipRejected(src, "no_landmarks" if with_landmarks == 0 else "landmarks_not_found",
                           f"landmarks found in {with_landmarks:.0%} of frames < min_face_fraction "
                           f"{cfg.min_face_fraction:.0%} (the face was detected in {face_fraction:.0%})")
    multi = float((track.num_faces >= 2).mean())
    if multi > cfg.max_multi_face_fraction:
        raise ClipRejected(src, "multiple_faces", f"several faces in {multi:.0%} of frames "
                                                  f"> max_multi_face_fraction {cfg.max_multi_face_fraction:.0%}")

    h, w = (info.width, info.height) if turns % 2 else (info.height, info.width)  # of the (upright) frames
    boxes = crop_mod.smooth_boxes(track.boxes, window=cfg.box_smoothing_frames)  # (T, 4)
    crop = crop_mod.fixed_crop(boxes, (h, w), scale=cfg.crop_scale)
    size = common.image_size
    t = track.num_frames
    lms = crop_mod.interpolate_gaps(track.landmarks.reshape(t, -1)).reshape(track.landmarks.shape)  # (T, 68, 3) px
    lms = crop_mod.transform_landmarks(lms, crop, size).astype(np.float32)  # (T, 68, 3) in crop pixels
    pose = coeffs_mod.fit_pose(lms, image_size=size)

    # Audio is cut or zero-padded to exactly the video's duration, so audio feature rows and video frames share
    # one clock from 0 to T/fps (containers often carry a few extra ms of audio, e.g. AAC priming).
    n_samples = round(n * common.sample_rate / common.fps)
    wav = np.pad(wav[:n_samples], (0, max(0, n_samples - wav.shape[0])))
    feats = audio_features.compute_features(wav, common.sample_rate)

    clip_path = out_dir / "clips" / f"{job.clip_id}.mp4"
    estimates: list[deep3d_mod.Deep3DResult] = []
    roi_jpegs: list[np.ndarray] = []  # JPEG bytes of each frame's mouth ROI, cut as the frames go to the encoder

    def cropped() -> Iterator[np.ndarray]:
        done = 0
        for c in chunks():
            part = crop_mod.apply_crop(c, crop, size)  # (t, S, S, 3)
            if coeff_estimator is not None:
                estimates.append(coeff_estimator(part, lms[done:done + len(part)]))
            if cfg.mouth_roi_quality is not None:
                roi_jpegs.extend(corpus_mod.mouth_roi_jpeg(corpus_mod.mouth_roi(frame, lms[done + k]),
                                                           cfg.mouth_roi_quality) for k, frame in enumerate(part))
            done += len(part)
            yield part

    keyint = None if cfg.keyframe_interval_s is None else max(1, round(cfg.keyframe_interval_s * common.fps))
    media.write_video(clip_path, cropped(), fps=common.fps, audio=wav, sample_rate=common.sample_rate, crf=cfg.crf,
                      preset=cfg.encoder_preset, keyint=keyint)
    extra: dict[str, np.ndarray] = {}
    if cfg.mouth_roi_quality is not None:
        if len(roi_jpegs) != n:
            raise RuntimeError(f"{src}: mouth ROIs for {len(roi_jpegs)} frames, the clip has {n}")
        extra["mouth_roi_jpeg"], extra["mouth_roi_offsets"] = corpus_mod.pack_jpegs(roi_jpegs)
    if coeff_estimator is not None:
        deep = np.concatenate([e.coeffs for e in estimates]) if estimates else np.zeros((0, deep3d_mod.NUM_COEFFS))
        if len(deep) != n:
            raise RuntimeError(f"{src}: deep3d coefficients for {len(deep)} frames, the clip has {n}")
        extra |= {"deep3d": deep.astype(np.float32),
                  "deep3d_align": np.concatenate([e.align for e in estimates]).astype(np.float32),
                  "deep3d_landmark_error": np.concatenate([e.landmark_error for e in estimates]).astype(np.float32)}
    clip_bytes, clip_digest = clip_path.stat().st_size, file_digest(clip_path)  # recorded: `_cached` checks them

    meta = {
        "clip_id": job.clip_id, "speaker": job.speaker, "source": job.rel,
        "source_fps": info.fps, "source_width": w, "source_height": h, "upright_turn_deg": 90 * turns,
        "audio_level_db": round(level, 2) if math.isfinite(level) else None,
        "source_duration_s": info.duration, "source_sample_rate": info.audio_sample_rate,
        "source_channels": info.audio_channels,
        "frames": n, "duration_s": duration, "face_fraction": face_fraction, "multi_face_fraction": multi,
        "det_conf_mean": float(track.scores[found].mean()), "det_conf_min": float(track.scores[found].min()),
        "crop": dataclasses.asdict(crop),
    }
    if "deep3d_landmark_error" in extra:  # the BFM fit's quality: projected vs observed landmarks (224-px input)
        err = extra["deep3d_landmark_error"]
        meta["deep3d_landmark_error_px"] = float(np.nanmean(err)) if np.isfinite(err).any() else None
    # The cache entry is written last: its presence (with a matching fingerprint) means the clip is complete.
    save_npz(out_dir / "cache" / f"{job.clip_id}.npz",
             fingerprint=np.array(fingerprint), meta=np.array(json.dumps(meta, sort_keys=True)),
             clip_bytes=np.array(clip_bytes, dtype=np.int64), clip_digest=np.array(clip_digest),
             landmarks=lms, boxes=track.boxes.astype(np.float32), scores=track.scores.astype(np.float32),
             rotation=pose.rotation.astype(np.float32), translation=pose.translation.astype(np.float32),
             scale=pose.scale.astype(np.float32), aligned=pose.aligned.astype(np.float32),
             wav=wav.astype(np.float32), mel=feats.mel, mfcc=feats.mfcc, fbank=feats.fbank, **extra)
    return ClipOutcome(job.clip_id, job.rel, "done", frames=n)


def upright_turns(landmarks: np.ndarray, limit_deg: float = SIDEWAYS_ROLL_DEG) -> tuple[int, float]:
    """Counter-clockwise quarter turns (0..3, ``np.rot90``'s k) that make a clip's face upright, and its median roll.

    Roll is the angle of the line from landmark 36 (outer corner of the eye on the image's left) to 45, in image
    coordinates (y down): 0 for an upright face, +90 for a picture turned 90° clockwise. The median is taken on
    the circle (medians of sine and cosine), so upside-down faces near ±180° do not average to 0.

    Args:
        landmarks: (T, 68, 2+) pixel landmarks, NaN rows where none.
        limit_deg: |median roll| up to this is upright (0 turns).

    Returns:
        (turns, roll in degrees); (0, 0.0) when no frame has landmarks.
    """
    eyes = landmarks[:, [36, 45], :2]  # (T, 2, 2)
    ok = np.isfinite(eyes).all(axis=(1, 2))
    if not ok.any():
        return 0, 0.0
    d = eyes[ok, 1] - eyes[ok, 0]  # (T', 2) from the left-hand eye corner to the right-hand one
    angle = np.arctan2(d[:, 1], d[:, 0])  # (T',)
    roll = math.degrees(math.atan2(float(np.median(np.sin(angle))), float(np.median(np.cos(angle)))))
    if abs(roll) <= limit_deg:
        return 0, roll
    return round(roll / 90.0) % 4, roll


def _cached(out_dir: Path, job: ClipJob, fingerprint: str) -> bool:
    """Whether the clip's cache entry and cropped clip can be trusted for `fingerprint`.

    A cache entry is verified before it is trusted: its zip structure and CRCs (an integrity read), its members,
    and the cropped clip's size and content digest recorded in it. A damaged entry or clip (cut short by a full
    disk or a crash outside the atomic write, bytes changed) is reported by name, deleted and recomputed.
    """
    cache = out_dir / "cache" / f"{job.clip_id}.npz"
    clip = out_dir / "clips" / f"{job.clip_id}.mp4"
    if not cache.is_file():
        clip.unlink(missing_ok=True)  # a clip without its cache entry was never finished
        return False
    damage = verify_npz(cache, ("fingerprint",))
    if damage is None:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return False  # another file version or other settings: recomputed, nothing damaged
            missing = [m for m in CACHE_MEMBERS if m not in z.files]
            size, digest = (int(z["clip_bytes"]), str(z["clip_digest"])) if not missing else (0, "")
        if missing:
            damage = f"member(s) {', '.join(missing)} missing"
        elif not clip.is_file():
            damage = f"its cropped clip {clip} is missing"
        elif clip.stat().st_size != size:
            damage = f"its cropped clip {clip} has {clip.stat().st_size} bytes, {size} were written"
        elif file_digest(clip) != digest:
            damage = f"its cropped clip {clip} differs from the one written (content digest)"
        else:
            return True
    log.warning("cache entry of %s is damaged (%s): discarding it and processing the clip again", job.rel, damage)
    cache.unlink(missing_ok=True)
    clip.unlink(missing_ok=True)
    return False


def _rejection_cache_path(out_dir: Path, clip_id: str) -> Path:
    return out_dir / "cache" / f"{clip_id}.rejected.json"


# Worker-process state: one landmark backend per process, created once.
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PreprocessConfig, common: CommonConfig, out_dir: Path, weights_dir: str | None,
                 single_thread: bool) -> None:
    if single_thread:  # a spawned worker process: one of several, each single-threaded
        import cv2
        import torch

        from pipeline.native_logs import filter_native_stderr

        filter_native_stderr()
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    _WORKER["cfg"] = cfg
    _WORKER["common"] = common
    _WORKER["out_dir"] = out_dir
    _WORKER["backend"] = make_backend(cfg.backend, min_confidence=cfg.min_confidence, weights_dir=weights_dir,
                                      landmarks_type=cfg.face_alignment_landmarks, device=cfg.device,
                                      mode=cfg.landmark_mode, detect_interval=cfg.detect_interval)
    _WORKER["deep3d"] = (deep3d_mod.Deep3DEstimator.from_files(cfg.deep3d.checkpoint, cfg.deep3d.bfm_folder,
                                                                batch_size=cfg.deep3d.batch_size, device=cfg.device)
                         if cfg.coeffs_backend == "deep3d" else None)


def worker_context() -> mp.context.BaseContext:
    """The start method of preprocessing's worker processes.

    ``forkserver`` where the platform has it: a clean server process (started once per run, no threads of ours)
    imports this module and its heavy dependencies (torch, mediapipe, cv2, decord) once, and each worker is forked
    from it already initialised, instead of every spawned worker importing them again (~1.6 s each on a 2-core
    CPU, as long as a worker's share of a dozen clips). The server never runs models, so no thread pool is forked.
    ``spawn`` elsewhere (Windows). ``TAVCE_WORKER_START=spawn`` forces spawn (benchmarks compare the two).
    """
    method = os.environ.get("TAVCE_WORKER_START", "")
    if not method:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["pipeline.preprocess", "torch", "mediapipe", "cv2", "decord"])
    return ctx


def run_in_pool(items: Sequence[Any], workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...],
                fn: Callable[[Any], Any], on_result: Callable[[Any], None], on_crash: Callable[[Any], Any]) -> None:
    """Run `fn` over `items` in `workers` worker processes, surviving workers that die.

    forkserver or spawn (`worker_context`), never a plain fork: mediapipe/torch/decord threads of this process
    would not survive it; a `ProcessPoolExecutor`, because a
    worker that dies (a native crash on a malformed file) then raises `BrokenProcessPool` instead of hanging.
    After such a crash the items not finished yet run one process each, so the culprit is found: `on_crash(item)`
    gives its result. Results go to `on_result` as they complete (any order).
    """
    pending = list(range(len(items)))
    isolate = False
    while pending:
        batch = pending[:1] if isolate else pending
        finished: set[int] = set()
        with ProcessPoolExecutor(1 if isolate else workers, mp_context=worker_context(),
                                 initializer=initializer, initargs=initargs) as pool:
            futures = {pool.submit(fn, items[i]): i for i in batch}
            try:
                for fut in as_completed(futures):
                    on_result(fut.result())
                    finished.add(futures[fut])
            except BrokenProcessPool:
                if isolate:  # the one item of this pool killed its worker
                    on_result(on_crash(items[batch[0]]))
                    finished.add(batch[0])
                else:
                    log.warning("a worker process died; running the %d unfinished clip(s) one process each to "
                                "find the one that crashes it", len(batch) - len(finished))
                    isolate = True
        pending = [i for i in pending if i not in finished]


def _ray_task(initargs: tuple[Any, ...], item: tuple[ClipJob, str]) -> ClipOutcome:
    """One clip in a Ray worker process: the worker's landmark backend is created once and reused."""
    if _WORKER.get("initargs") != initargs:
        _init_worker(*initargs)
        _WORKER["initargs"] = initargs
    return _run_job(item)


def run_on_ray(items: Sequence[Any], fn: Callable[..., Any], args: tuple[Any, ...],
               on_result: Callable[[Any], None], on_crash: Callable[[Any, str], Any], *,
               address: str | None, num_cpus: int, max_retries: int) -> None:
    """Run `fn(*args, item)` as one Ray task per item; a task whose worker dies is retried, then given up.

    Args:
        address: the cluster to attach to; None starts a local Ray instance with `num_cpus` CPUs for this call
            (and stops it afterwards). A process already attached to Ray (`ray.init` done) is used as it is.
        max_retries: reruns of a task whose worker process died (Ray's `max_retries`; exceptions inside `fn`
            are not retried: `fn` returns its own failures as results).
        on_crash: `on_crash(item, message)` gives the result for an item whose retries are exhausted.
    """
    import ray
    from ray.exceptions import RayError

    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        task = ray.remote(num_cpus=1, max_retries=max_retries)(fn)
        refs = {task.remote(*args, item): item for item in items}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            item = refs.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayError as err:  # the worker (or its node) died on every try
                log.debug("ray task for %r failed: %s", item, err)
                result = on_crash(item, f"{type(err).__name__} after {max_retries} retries")
            on_result(result)
    finally:
        if started:
            ray.shutdown()


def _run_job(args: tuple[ClipJob, str]) -> ClipOutcome:
    job, fingerprint = args
    cfg, common, out_dir = _WORKER["cfg"], _WORKER["common"], _WORKER["out_dir"]
    rej_path = _rejection_cache_path(out_dir, job.clip_id)
    try:
        outcome = process_clip(job, out_dir, cfg, common, _WORKER["backend"], fingerprint, _WORKER.get("deep3d"))
        rej_path.unlink(missing_ok=True)  # rejected under earlier settings, accepted now
        return outcome
    except (ClipRejected, media.MediaError) as err:
        reason, message = err.reason, str(err)
    except Exception as err:  # noqa: BLE001 - one broken clip must never stop the corpus; the reason is kept
        reason = f"error:{type(err).__name__}"
        message = f"{job.src}: {err}"
        log.debug("clip %s failed:\n%s", job.src, traceback.format_exc())
    message = message.replace(str(job.src), job.rel)  # reports name files relative to the raw folder
    if reason.startswith("error:"):
        rej_path.unlink(missing_ok=True)  # unexpected failures (a bug, a full disk) are retried by the next run
    else:
        write_json(rej_path, {"fingerprint": fingerprint, "reason": reason, "message": message})
    return ClipOutcome(job.clip_id, job.rel, "rejected", reason, message)


def _cached_outcome(out_dir: Path, job: ClipJob, fingerprint: str) -> ClipOutcome | None:
    if _cached(out_dir, job, fingerprint):
        return ClipOutcome(job.clip_id, job.rel, "cached")
    rej = _rejection_cache_path(out_dir, job.clip_id)
    if rej.is_file():
        try:
            data = json.loads(rej.read_text())
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") == fingerprint:
            return ClipOutcome(job.clip_id, job.rel, "rejected", data["reason"], data["message"])
    return None


# --------------------------------------------------------------------------------------------------------------
# Pass 2: corpus


def assign_splits(speakers: Sequence[str], split: SplitConfig, seed: int) -> dict[str, str]:
    """Speaker -> 'train' | 'val' | 'test', a seeded permutation of the sorted speakers.

    With at least 3 speakers, val and test each get at least one speaker when their fraction is > 0, and
    train keeps at least one. With fewer, everything is train (a warning says so).
    """
    spk = sorted(set(speakers))
    n = len(spk)
    if n < 3:
        if n:
            log.warning("only %d speaker(s): every clip goes to the train split", n)
        return {s: "train" for s in spk}
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(split.test * n)) if split.test > 0 else 0
    n_val = max(1, round(split.val * n)) if split.val > 0 else 0
    while n_test + n_val > n - 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for rank, i in enumerate(order):
        out[spk[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


@dataclass
class PreprocessSummary:
    clips_in: int
    clips_out: int
    processed: int
    cached: int
    rejected: dict[str, int]
    frames_processed: int
    seconds_pass1: float
    seconds_total: float
    face_fraction_mean: float
    splits: dict[str, int]

    def metrics(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rejected_total"] = sum(self.rejected.values())
        # Throughput of the clips processed in this run (null when every clip came from the cache).
        d["throughput_fps"] = self.frames_processed / self.seconds_pass1 if self.frames_processed else None
        return d


def _finalize(out_dir: Path, jobs: Sequence[ClipJob], ok_ids: set[str], cfg: PreprocessConfig,
              common: CommonConfig) -> tuple[list[dict[str, Any]], Any]:
    """Pass 2: split, expression basis, coefficients, feature files, manifest rows."""
    import pandas as pd

    ok_jobs = [j for j in jobs if j.clip_id in ok_ids]
    splits = assign_splits([j.speaker for j in ok_jobs], cfg.split, common.seed)
    cache_path = {j.clip_id: out_dir / "cache" / f"{j.clip_id}.npz" for j in ok_jobs}
    metas = {cid: json.loads(str(_load_member(p, "meta"))) for cid, p in cache_path.items()}

    # Expression basis from the train split. Caches are read one member at a time and, on large corpora, train
    # frames are taken with a fixed stride, so memory stays bounded (a VoxCeleb2-size corpus has ~1e8 frames).
    train = [j for j in ok_jobs if splits[j.speaker] == "train"]
    if not train:
        raise RuntimeError("no usable training clips: cannot fit the expression basis")
    stride = max(1, math.ceil(sum(metas[j.clip_id]["frames"] for j in train) / BASIS_MAX_FRAMES))
    train_res = [coeffs_mod.expression_residuals(_load_member(cache_path[j.clip_id], "aligned"))[::stride]
                 for j in train]  # (T_i / stride, 204) each
    basis = coeffs_mod.ExpressionBasis.fit(np.concatenate(train_res), coeffs_mod.NUM_EXPRESSION, seed=common.seed,
                                           max_samples=BASIS_MAX_FRAMES)
    del train_res
    basis.save(out_dir / "expression_basis.npz")

    rows = []
    for j in ok_jobs:
        c = load_npz(cache_path[j.clip_id])
        meta = metas[j.clip_id]
        res = coeffs_mod.expression_residuals(c["aligned"])  # (T, 204)
        coeffs = coeffs_mod.coefficients(basis.project(res), c["rotation"], c["translation"], c["scale"],
                                         crop_center=_crop_center(meta))  # (T, 73)
        extra = {k: c[k] for k in corpus_mod.STORED_ROI_KEYS if k in c}  # the TAVC loader's mouth ROIs
        if cfg.coeffs_backend == "deep3d":  # SadTalker's exp, angle, trans in 0-69; scale and crop centre as above
            coeffs[:, coeffs_mod.MOTION] = deep3d_mod.motion_coefficients(c["deep3d"])
            extra["deep3d"] = c["deep3d"]  # all 257 (id, tex, gamma too)
        feat_path = out_dir / "features" / f"{j.clip_id}.npz"
        save_npz(feat_path, coeffs=coeffs.astype(np.float32), landmarks=c["landmarks"], aligned=c["aligned"],
                 mel=c["mel"], mfcc=c["mfcc"], fbank=c["fbank"], wav=c["wav"], scores=c["scores"],
                 fps=np.array(common.fps), sample_rate=np.array(common.sample_rate), **extra)
        crop = meta["crop"]
        rows.append({
            "clip_id": j.clip_id, "speaker": j.speaker, "split": splits[j.speaker],
            "clip_path": f"clips/{j.clip_id}.mp4", "features_path": f"features/{j.clip_id}.npz",
            "source": meta["source"], "frames": meta["frames"], "duration_s": meta["duration_s"],
            "fps": common.fps, "sample_rate": common.sample_rate, "image_size": common.image_size,
            "source_fps": meta["source_fps"], "source_width": meta["source_width"],
            "source_height": meta["source_height"], "source_sample_rate": meta["source_sample_rate"],
            "source_channels": meta["source_channels"], "face_fraction": meta["face_fraction"],
            "multi_face_fraction": meta["multi_face_fraction"], "det_conf_mean": meta["det_conf_mean"],
            "det_conf_min": meta["det_conf_min"], "crop_x0": crop["x0"], "crop_y0": crop["y0"],
            "crop_size": crop["size"], "upright_turn_deg": meta["upright_turn_deg"],
            "audio_level_db": meta["audio_level_db"],
        })
    manifest = pd.DataFrame(rows).sort_values("clip_id").reset_index(drop=True) if rows else pd.DataFrame()
    return rows, manifest


def _load_member(path: Path, name: str) -> np.ndarray:
    """One array of an .npz, without reading the others."""
    with np.load(path, allow_pickle=False) as z:
        return z[name]


def _crop_center(meta: dict[str, Any]) -> tuple[float, float]:
    crop = meta["crop"]
    w, h = meta["source_width"], meta["source_height"]
    return ((crop["x0"] + crop["size"] / 2) / w, (crop["y0"] + crop["size"] / 2) / h)


def _remove_stale(out_dir: Path, keep_ids: set[str]) -> int:
    """Delete outputs of clips whose raw video is gone, so the folder equals a clean run's."""
    removed = 0
    for sub, suffixes in (("clips", (".mp4",)), ("features", (".npz",)), ("cache", (".npz", ".rejected.json"))):
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(folder).as_posix()
            cid = next((rel[: -len(s)] for s in suffixes if rel.endswith(s)), None)
            if cid is None or cid not in keep_ids:
                f.unlink()
                removed += 1
        for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
    return removed


def run_preprocess(raw_dir: Path, out_dir: Path, cfg: PreprocessConfig, common: CommonConfig, *,
                   weights_dir: str | None = None, progress: bool = True,
                   on_clip: Callable[[ClipOutcome], None] | None = None) -> PreprocessSummary:
    """Run both passes over every video under `raw_dir`, writing into `out_dir`.

    Args:
        raw_dir: folder of raw videos (nested folders allowed).
        out_dir: output folder (clips/, features/, cache/, manifest.parquet, rejected.csv, expression_basis.npz).
        weights_dir: folder with face_alignment weights (only for that backend).
        progress: show a progress bar.
        on_clip: called with each clip's outcome as it completes.
    """
    import pandas as pd
    from tqdm import tqdm

    t_start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw video folder not found: {raw_dir}")
    if cfg.backend == "face_alignment":  # fail before any work (a worker that cannot start would stall the pool)
        check_face_alignment_weights(weights_dir, FACE_ALIGNMENT_FILES_3D if cfg.face_alignment_landmarks == "3D"
                                     else FACE_ALIGNMENT_FILES_2D)
    cfg.check_deep3d_files()  # likewise, for coeffs_backend: deep3d
    # Fail before any decoding when an output folder cannot be written (one message naming it).
    check_writable(out_dir, *(out_dir / sub for sub in ("clips", "features", "cache")))
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tmp = remove_stale_temps(out_dir)
    if n_tmp:
        log.info("removed %d temporary file(s) left by an interrupted run", n_tmp)

    jobs, outcomes = discover(raw_dir, cfg.extensions, cfg.speaker_regex)
    n_found = len(jobs) + len(outcomes)
    settings = cfg.pass1_fingerprint(common)
    todo: list[tuple[ClipJob, str]] = []
    for job in jobs:
        fp = _fingerprint(job.src, settings)
        cached = _cached_outcome(out_dir, job, fp)
        if cached is None:
            todo.append((job, fp))
        else:
            outcomes.append(cached)
    log.info("%d video(s) under %s: %d to process, %d cached", len(jobs), raw_dir, len(todo), len(jobs) - len(todo))

    t1 = time.perf_counter()
    new: list[ClipOutcome] = []
    bar = tqdm(total=len(todo), desc="preprocess", unit="clip", disable=not progress or not todo)
    workers = min(cfg.workers, max(1, len(todo)))
    ray_engine = cfg.engine == "ray"
    init_args = (cfg, common, out_dir, weights_dir, workers > 1 or ray_engine)
    try:
        if workers == 1 and not ray_engine:
            _init_worker(*init_args)
            try:
                for item in todo:
                    new.append(_run_job(item))
                    _report(new[-1], bar, on_clip)
            finally:
                backend = _WORKER.pop("backend", None)
                if backend is not None:
                    backend.close()
        elif todo:
            def crashed(item: tuple[ClipJob, str], detail: str = "") -> ClipOutcome:
                job, fingerprint = item
                message = (f"{job.rel}: the worker process died while processing this clip (a native crash in a "
                           "decoder or the face detector" + (f"; {detail}" if detail else "") + ")")
                write_json(_rejection_cache_path(out_dir, job.clip_id),
                           {"fingerprint": fingerprint, "reason": "worker_crash", "message": message})
                return ClipOutcome(job.clip_id, job.rel, "rejected", "worker_crash", message)

            def finished(outcome: ClipOutcome) -> None:
                new.append(outcome)
                _report(outcome, bar, on_clip)

            if ray_engine:  # clips as Ray tasks; outputs go to out_dir, which every node must see
                run_on_ray(todo, _ray_task, (init_args,), finished, crashed, address=cfg.ray_address,
                           num_cpus=workers, max_retries=cfg.ray_max_retries)
            else:
                run_in_pool(todo, workers, _init_worker, init_args, _run_job, finished, crashed)
    finally:
        bar.close()
    seconds_pass1 = time.perf_counter() - t1
    outcomes.extend(new)

    ok_ids = {o.clip_id for o in outcomes if o.status in ("done", "cached")}
    all_ids = {j.clip_id for j in jobs}
    n_removed = _remove_stale(out_dir, all_ids)
    if n_removed:
        log.info("removed %d output file(s) of videos no longer under %s", n_removed, raw_dir)
    # Rejected clips must not keep outputs from an earlier successful run (a rejected duplicate id keeps the
    # accepted file's outputs), and accepted ones no rejection record from earlier settings.
    for o in outcomes:
        if o.status == "rejected" and o.clip_id not in ok_ids:
            for p in (out_dir / "clips" / f"{o.clip_id}.mp4", out_dir / "features" / f"{o.clip_id}.npz",
                      out_dir / "cache" / f"{o.clip_id}.npz"):
                p.unlink(missing_ok=True)
    for cid in ok_ids:
        _rejection_cache_path(out_dir, cid).unlink(missing_ok=True)

    rows, manifest = _finalize(out_dir, jobs, ok_ids, cfg, common) if ok_ids else ([], pd.DataFrame())
    if rows:
        with atomic_path(out_dir / "manifest.parquet") as tmp:
            manifest.to_parquet(tmp, index=False)
    else:  # no manifest rather than an empty one (or an earlier run's, whose clips are gone now)
        (out_dir / "manifest.parquet").unlink(missing_ok=True)
        (out_dir / "expression_basis.npz").unlink(missing_ok=True)
    rejected = sorted((o for o in outcomes if o.status == "rejected"), key=lambda o: o.clip_id)
    rej_df = pd.DataFrame([{"clip_id": o.clip_id, "source": o.src, "reason": o.reason,
                            "message": _relative_message(o.message, raw_dir)} for o in rejected],
                          columns=["clip_id", "source", "reason", "message"])
    with atomic_path(out_dir / "rejected.csv") as tmp:
        rej_df.to_csv(tmp, index=False)
    for o in rejected:
        log.warning("rejected %s [%s]: %s", o.clip_id, o.reason, _relative_message(o.message, raw_dir))

    if not rows:
        reasons = dict(Counter(o.reason for o in rejected))
        raise NoUsableClips(f"no usable clips under {raw_dir}: {n_found} video(s) found"
                            + (f", all rejected {reasons} (see {out_dir / 'rejected.csv'})" if n_found else
                               f" (extensions {', '.join(cfg.extensions)})"))
    done = [o for o in new if o.status == "done"]
    return PreprocessSummary(
        clips_in=n_found,
        clips_out=len(rows),
        processed=len(done),
        cached=sum(1 for o in outcomes if o.status == "cached"),
        rejected=dict(sorted(Counter(o.reason for o in rejected).items())),
        frames_processed=sum(o.frames for o in done),
        seconds_pass1=seconds_pass1,
        seconds_total=time.perf_counter() - t_start,
        face_fraction_mean=float(np.mean([r["face_fraction"] for r in rows])) if rows else 0.0,
        splits=dict(sorted(Counter(r["split"] for r in rows).items())),
    )


def _relative_message(message: str, raw_dir: Path) -> str:
    """Messages name files relative to the raw folder, so reports do not depend on where the data lives."""
    return message.replace(str(raw_dir.resolve()) + os.sep, "").replace(str(raw_dir) + os.sep, "")


def _report(outcome: ClipOutcome, bar: Any, on_clip: Callable[[ClipOutcome], None] | None) -> None:
    bar.update(1)
    if outcome.status == "rejected":
        bar.set_postfix_str(f"rejected {outcome.clip_id}: {outcome.reason}", refresh=False)
    if on_clip is not None:
        on_clip(outcome)
