"""Synthetic corpus generation: plan speakers and clips from a seed, render each clip, write mp4 + truth sidecar.

Layout written under `out_dir`:
    <speaker>/<clip>.mp4         H.264 (yuv420p) + AAC, `fps` frames per second, audio at the speaker's rate
    <speaker>/<clip>.truth.json  ground truth: per-frame mouth opening / pose / blink, phonemes, voice, text

Everything derives from `seed` through `numpy.random.SeedSequence` keyed by (seed, domain, speaker[, clip]), so a
speaker's identity and voice do not change when the corpus is scaled up, and a rerun is identical (the truth json
byte for byte; the mp4 too with x264 ``-threads 1`` and bit-exact muxing). Files are written atomically.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import media
from pipeline.io import atomic_path, remove_stale_temps
from pipeline.synth.face import FaceRenderer, sample_appearance
from pipeline.synth.motion import MotionStyle, blink_track, head_motion
from pipeline.synth.tts import Voice, clip_speech_isolated
from pipeline.synth.visemes import mouth_track, viseme_class

DEG = math.pi / 180.0
_SPEAKER_DOMAIN = 1
_CLIP_DOMAIN = 2
_FLOAT_DECIMALS = 5  # rounding in the truth json (keeps it byte-stable and small)
SYNTH_AUDIO_BITRATE = "96k"  # AAC bitrate of the raw synthetic clips

# espeak-ng voice files that exist in Debian's espeak-ng 1.51 (``espeak-ng --voices=en``) and variants (``!v``).
BASE_VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
               "en-gb-x-gbcwmd")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")

@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """`synth` section of params.yaml: size and look of the synthetic talking-head corpus.

    Attributes:
        speakers: number of identities (each with its own face, voice and framing).
        clips_per_speaker: clips per identity.
        min_duration_s, max_duration_s: clip length range (speech plus short leading/trailing silence).
        fps: video frame rate of the raw clips (the preprocessing stage resamples to common.fps anyway).
        frame_sizes: candidate (W, H) frame sizes in pixels, one drawn per speaker (even numbers, for yuv420p).
        audio_rates: candidate audio sample rates (Hz) of the written clips, one drawn per speaker
            (real data comes at various rates; espeak synthesises at 22.05 kHz and ffmpeg resamples).
        crf: x264 constant rate factor (lower = higher quality).
        max_yaw_deg, max_pitch_deg, max_roll_deg: soft limits of the head rotation.
        motion_scale: multiplies every speaker's head-motion amplitude (0 = frozen head).
        workers: parallel worker processes (each runs its own espeak instance).
    """

    speakers: int = 8
    clips_per_speaker: int = 4
    min_duration_s: float = 3.0
    max_duration_s: float = 5.0
    fps: int = 25
    frame_sizes: tuple[tuple[int, int], ...] = ((256, 256), (288, 256), (256, 288), (240, 240))
    audio_rates: tuple[int, ...] = (16000, 22050, 44100)
    crf: int = 18
    max_yaw_deg: float = 25.0
    max_pitch_deg: float = 15.0
    max_roll_deg: float = 10.0
    motion_scale: float = 1.0
    workers: int = 2

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if self.speakers < 1 or self.clips_per_speaker < 1:
            raise ValueError("speakers and clips_per_speaker must be >= 1")
        if not 0.5 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(f"need 0.5 <= min_duration_s <= max_duration_s, got {self.min_duration_s}, "
                             f"{self.max_duration_s}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps {self.fps} out of range 1..120")
        if not self.frame_sizes:
            raise ValueError("frame_sizes is empty")
        for size in self.frame_sizes:
            if len(size) != 2:
                raise ValueError(f"frame_sizes: {list(size)} must be a [width, height] pair")
            w, h = size
            if w < 64 or h < 64 or w % 2 or h % 2:
                raise ValueError(f"frame_sizes: {w}x{h} must be even and at least 64x64")
        if not self.audio_rates or any(r < 8000 or r > 96000 for r in self.audio_rates):
            raise ValueError(f"audio_rates {self.audio_rates} must be non-empty, 8000..96000 Hz")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf {self.crf} out of range 0..51")
        if not (0 < self.max_yaw_deg <= 45 and 0 < self.max_pitch_deg <= 30 and 0 < self.max_roll_deg <= 30):
            raise ValueError("max_yaw_deg/max_pitch_deg/max_roll_deg must be in (0, 45]/(0, 30]/(0, 30]")
        if self.motion_scale < 0:
            raise ValueError("motion_scale must be >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")


@dataclasses.dataclass(frozen=True)
class SpeakerSpec:
    """Everything that identifies one synthetic speaker (drawn from the seed)."""

    speaker_id: str
    voice: Voice
    frame_size: tuple[int, int]
    audio_rate: int
    open_gain: float
    motion: MotionStyle
    appearance_seed: int


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """One clip to render (picklable, handed to worker processes)."""

    speaker: SpeakerSpec
    clip_id: str
    clip_seed: tuple[int, ...]
    min_duration_s: float
    max_duration_s: float
    fps: int
    crf: int
    max_abs_rad: tuple[float, float, float]
    out_dir: str


def speaker_spec(cfg: SynthConfig, seed: int, index: int) -> SpeakerSpec:
    """The `index`-th speaker of the corpus for `seed` (independent of the corpus size)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPEAKER_DOMAIN, index]))
    female = bool(rng.integers(2))
    variant = (FEMALE_VARIANTS if female else MALE_VARIANTS)[int(rng.integers(5 if female else 7))]
    voice = Voice(
        name=f"{BASE_VOICES[int(rng.integers(len(BASE_VOICES)))]}+{variant}",
        pitch=int(rng.integers(35, 71)),
        pitch_range=int(rng.integers(35, 86)),
        rate_wpm=int(rng.integers(140, 191)),
        word_gap_10ms=int(rng.integers(0, 3)),
    )
    w, h = cfg.frame_sizes[int(rng.integers(len(cfg.frame_sizes)))]
    motion = MotionStyle(
        yaw_amp=cfg.motion_scale * float(rng.uniform(5, 14)) * DEG,
        pitch_amp=cfg.motion_scale * float(rng.uniform(3, 8)) * DEG,
        roll_amp=cfg.motion_scale * float(rng.uniform(2, 5)) * DEG,
        prosody_gain=float(rng.uniform(0.3, 0.7)),
        translate_amp=cfg.motion_scale * float(rng.uniform(0.01, 0.04)),
    )
    return SpeakerSpec(
        speaker_id=f"spk{index:03d}",
        voice=voice,
        frame_size=(int(w), int(h)),
        audio_rate=int(cfg.audio_rates[int(rng.integers(len(cfg.audio_rates)))]),
        open_gain=float(rng.uniform(0.8, 1.15)),
        motion=motion,
        appearance_seed=int(rng.integers(2**31)),
    )


def plan_corpus(cfg: SynthConfig, out_dir: Path, seed: int) -> list[ClipJob]:
    """All clip jobs of the corpus, in a fixed order."""
    jobs = []
    lim = (cfg.max_yaw_deg * DEG, cfg.max_pitch_deg * DEG, cfg.max_roll_deg * DEG)
    for s in range(cfg.speakers):
        spk = speaker_spec(cfg, seed, s)
        for c in range(cfg.clips_per_speaker):
            jobs.append(ClipJob(speaker=spk, clip_id=f"clip{c:03d}", clip_seed=(seed, _CLIP_DOMAIN, s, c),
                                min_duration_s=cfg.min_duration_s, max_duration_s=cfg.max_duration_s, fps=cfg.fps,
                                crf=cfg.crf, max_abs_rad=lim, out_dir=str(out_dir)))
    return jobs


def _round(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_round(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (float, np.floating)):
        v = round(float(x), _FLOAT_DECIMALS)
        return 0.0 if v == 0 else v  # no "-0.0"
    return x


def render_clip(job: ClipJob) -> dict[str, Any]:
    """Render one clip: speech, visemes, motion, frames → `<out>/<speaker>/<clip>.mp4` and `.truth.json`.

    Returns:
        {"speaker", "clip", "frames", "seconds"} for the corpus summary.
    Raises:
        RuntimeError: ffmpeg failed (the message names the clip and carries ffmpeg's stderr).
    """
    spk = job.speaker
    speech = clip_speech_isolated((*job.clip_seed, 0), spk.voice, job.min_duration_s, job.max_duration_s, job.fps)
    rng = np.random.default_rng(np.random.SeedSequence([*job.clip_seed, 1]))  # motion and blinks
    sr = speech.utterance.sample_rate
    T = speech.n_frames
    times = np.arange(T) / job.fps  # frame k is shown at k / fps
    phonemes = [dataclasses.replace(p, start_s=p.start_s + speech.lead_s, end_s=p.end_s + speech.lead_s)
                for p in speech.utterance.phonemes]
    mouth = mouth_track(phonemes, times, open_gain=spk.open_gain)
    motion = head_motion(rng, speech.audio, sr, T, job.fps, spk.motion, job.max_abs_rad)
    blink = blink_track(rng, T, job.fps)
    app = sample_appearance(np.random.default_rng(spk.appearance_seed), spk.frame_size)
    renderer = FaceRenderer(app)

    folder = Path(job.out_dir) / spk.speaker_id
    folder.mkdir(parents=True, exist_ok=True)
    mp4 = folder / f"{job.clip_id}.mp4"
    w, h = spk.frame_size
    mouth_open, points = [], {}

    def frames() -> Iterator[np.ndarray]:
        """Render frame by frame, streamed to the encoder (collects the per-frame truth on the way)."""
        for k in range(T):
            frame, truth = renderer.render(motion.yaw[k], motion.pitch[k], motion.roll[k],
                                           tuple(motion.translation[k]), mouth.open[k], mouth.width[k],
                                           mouth.round[k], blink[k])
            mouth_open.append(truth.mouth_open)
            for name, xy in truth.points_px.items():
                points.setdefault(name, []).append(xy)
            yield frame[None]  # (1, H, W, 3)

    # H.264 yuv420p + AAC at the speaker's audio rate; single-threaded and bit-exact, so reruns are identical.
    media.write_video(mp4, frames(), fps=job.fps, audio=speech.audio, sample_rate=sr, crf=job.crf,
                      audio_rate=spk.audio_rate, audio_bitrate=SYNTH_AUDIO_BITRATE)

    truth_doc = {
        "speaker": spk.speaker_id,
        "clip": job.clip_id,
        "fps": job.fps,
        "frame_size": [w, h],
        "n_frames": T,
        "duration_s": T / job.fps,
        "audio_sample_rate": spk.audio_rate,
        "tts_sample_rate": sr,
        "text": speech.utterance.text,
        "voice": dataclasses.asdict(spk.voice),
        "speech_start_s": speech.lead_s,
        "phonemes": [{"symbol": p.symbol, "start_s": p.start_s, "end_s": p.end_s, "viseme": viseme_class(p.symbol)}
                     for p in phonemes],
        "frames": {
            "time_s": times,
            "mouth_open": np.array(mouth_open),
            "mouth_width": mouth.width,
            "mouth_round": mouth.round,
            "viseme": list(mouth.viseme),
            "yaw": motion.yaw,
            "pitch": motion.pitch,
            "roll": motion.roll,
            "translation": motion.translation,
            "blink": blink,
        },
        "points_px": points,
        "appearance": dataclasses.asdict(app),
        "conventions": {
            "angles": "radians; R = pipeline.geometry.rotation_matrix(yaw, pitch, roll) = Rx(pitch) Ry(yaw) Rz(roll); "
                      "x right, y down, z away from the camera; yaw > 0 turns the nose towards image-left",
            "mouth_open": "inner-lip gap / face height (brow line to chin), pose-independent",
            "blink": "eyelid closure 0 (open) .. 1 (closed), averaged over the frame interval",
            "time": "frame k is shown at k / fps seconds; phoneme times are on the same clock",
            "points_px": "projected model points in pixels; eye_r is the subject's right eye (image left)",
        },
    }
    with atomic_path(folder / f"{job.clip_id}.truth.json") as tmp:
        tmp.write_text(json.dumps(_round(truth_doc), indent=1, sort_keys=True) + "\n")
    return {"speaker": spk.speaker_id, "clip": job.clip_id, "frames": T, "seconds": T / job.fps}


def _init_worker() -> None:
    import cv2  # one thread per worker process; the pool provides the parallelism
    cv2.setNumThreads(1)


def generate_corpus(cfg: SynthConfig, out_dir: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Generate the whole synthetic corpus under `out_dir` (see the module docstring for the layout).

    Returns:
        summary for metrics: clips, speakers, frames, seconds (of video), wall_s, realtime_factor.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    jobs = plan_corpus(cfg, out_dir, seed)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="synth", unit="clip")
    try:
        if cfg.workers == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(render_clip(job))
                if bar:
                    bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")  # fresh processes: one espeak instance each
            with concurrent.futures.ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=ctx,
                                                        initializer=_init_worker) as pool:
                futures = [pool.submit(render_clip, job) for job in jobs]
                for fut in concurrent.futures.as_completed(futures):
                    fut.result()
                    if bar:
                        bar.update(1)
                results = [f.result() for f in futures]
    finally:
        if bar:
            bar.close()
    wall = time.perf_counter() - t0
    seconds = float(sum(r["seconds"] for r in results))
    return {
        "clips": len(results),
        "speakers": cfg.speakers,
        "frames": int(sum(r["frames"] for r in results)),
        "seconds": round(seconds, 3),
        "wall_s": round(wall, 3),
        "realtime_factor": round(seconds / wall, 3) if wall > 0 else None,
    }


__all__ = ["SynthConfig", "SpeakerSpec", "ClipJob", "generate_corpus", "plan_corpus", "render_clip",
           "speaker_spec"]
