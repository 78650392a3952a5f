"""Head motion and blinks for the synthetic corpus.

Head rotation (yaw, pitch, roll) = a per-clip offset + slow random drift (Gaussian-filtered noise) + a prosody
term driven by the synthesized speech: the energy envelope drives nods (pitch) and the pitch (F0) contour drives
yaw/roll, both smoothed to slow time scales (talking heads move with the phrase, not with each phoneme). Angles are
soft-limited with tanh to the configured maxima. Blinks are a renewal process (random intervals) with a ~150 ms
closure profile.
"""

from __future__ import annotations

import dataclasses

import numpy as np

F0_MIN_HZ = 60.0
F0_MAX_HZ = 420.0
F0_WINDOW_S = 0.040  # autocorrelation window
VOICING_THRESHOLD = 0.45  # normalised autocorrelation peak above which a frame counts as voiced
SILENCE_DB = -35.0  # frames this far below the clip's loudest frame are unvoiced

DRIFT_SIGMA_S = 0.9  # time scale of the random drift
PROSODY_SIGMA_S = 0.25  # smoothing of the prosody envelopes before they drive the head
BLINK_MEAN_INTERVAL_S = 3.2
BLINK_MIN_INTERVAL_S = 0.8
BLINK_CLOSE_S = 0.05  # lid travel down
BLINK_HOLD_S = 0.04  # fully closed
BLINK_OPEN_S = 0.07  # lid travel up (≈ 160 ms in all)


@dataclasses.dataclass(frozen=True)
class MotionStyle:
    """Per-speaker motion habits: amplitudes in radians (before the soft limit) and the prosody coupling."""

    yaw_amp: float
    pitch_amp: float
    roll_amp: float
    prosody_gain: float  # 0 = drift only, 1 = mostly prosody-driven
    translate_amp: float  # fraction of the head size


@dataclasses.dataclass(frozen=True)
class HeadMotion:
    """Per-frame rigid head motion: angles in radians ((T,) each), translation as a fraction of head size (T, 2)."""

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    translation: np.ndarray


def _smooth(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing with edge padding (same length)."""
    if sigma_frames <= 0:
        return x.copy()
    half = max(1, int(np.ceil(3 * sigma_frames)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_frames) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(x, half, mode="edge"), k, mode="valid")


def _standardise(x: np.ndarray) -> np.ndarray:
    s = x.std()
    return (x - x.mean()) / s if s > 1e-9 else np.zeros_like(x)


def prosody_envelopes(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Energy (dB) and F0 (semitones re the clip median; 0 where unvoiced) per video frame.

    F0 is the lag of the normalised autocorrelation peak within [F0_MIN_HZ, F0_MAX_HZ] (a plain autocorrelation
    pitch tracker, enough for espeak's clean speech).

    Returns:
        energy_db (T,), f0_semitones (T,)
    """
    win = int(round(F0_WINDOW_S * sample_rate))
    hop = sample_rate / fps
    padded = np.pad(audio.astype(np.float64), (win, win))
    lag_lo, lag_hi = int(sample_rate / F0_MAX_HZ), int(sample_rate / F0_MIN_HZ)
    energy = np.empty(n_frames)
    f0 = np.zeros(n_frames)
    frames = np.stack([padded[int(round((k + 0.5) * hop)) + win // 2: int(round((k + 0.5) * hop)) + win // 2 + win]
                       for k in range(n_frames)])  # (T, win)
    frames = frames - frames.mean(1, keepdims=True)
    energy[:] = 10 * np.log10(np.mean(frames ** 2, 1) + 1e-10)
    nfft = 1 << int(np.ceil(np.log2(2 * win)))
    spec = np.fft.rfft(frames * np.hanning(win), nfft, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, nfft, axis=1)[:, :lag_hi + 1]  # (T, lags)
    ac0 = ac[:, :1] + 1e-12
    norm = ac[:, lag_lo:lag_hi + 1] / ac0
    best = norm.argmax(1)
    peak = norm[np.arange(n_frames), best]
    voiced = (peak > VOICING_THRESHOLD) & (energy > energy.max() + SILENCE_DB)
    hz = sample_rate / (best + lag_lo)
    if voiced.any():
        semis = 12 * np.log2(hz / np.median(hz[voiced]))
        f0[voiced] = semis[voiced]
    return energy, f0


def head_motion(rng: np.random.Generator, audio: np.ndarray, sample_rate: int, n_frames: int, fps: float,
                style: MotionStyle, max_abs_rad: tuple[float, float, float]) -> HeadMotion:
    """Head rotation and translation for one clip (method.md §1: yaw/pitch/roll in radians, project convention).

    Args:
        rng: the clip's random generator.
        audio: (N,) float waveform the head "speaks".
        max_abs_rad: soft limits (yaw, pitch, roll) in radians.
    """
    energy_db, f0 = prosody_envelopes(audio, sample_rate, n_frames, fps)
    loud = np.clip((energy_db - (energy_db.max() - 40.0)) / 40.0, 0.0, 1.0)  # 0 silent … 1 loudest
    # Nods follow emphasis: the smoothed energy *rise* tips the head down briefly (positive pitch = look down).
    emph = _standardise(_smooth(np.maximum(np.gradient(_smooth(loud, 1.0)), 0.0), PROSODY_SIGMA_S * fps))
    intonation = _standardise(_smooth(f0, PROSODY_SIGMA_S * fps))

    def drift() -> np.ndarray:
        pad = int(4 * DRIFT_SIGMA_S * fps)
        noise = rng.standard_normal(n_frames + 2 * pad)
        return _standardise(_smooth(noise, DRIFT_SIGMA_S * fps)[pad:pad + n_frames]) if n_frames > 1 else np.zeros(n_frames)

    g = style.prosody_gain
    offsets = rng.uniform(-0.35, 0.35, 3)  # per-clip resting pose, in units of each amplitude
    yaw = style.yaw_amp * (offsets[0] + (1 - g) * drift() + g * 0.6 * intonation)
    pitch = style.pitch_amp * (offsets[1] + (1 - g) * drift() + g * emph)
    roll = style.roll_amp * (offsets[2] + (1 - g) * drift() + g * 0.4 * intonation)
    lim = np.asarray(max_abs_rad, dtype=np.float64)
    angles = [lim[i] * np.tanh(a / lim[i]) for i, a in enumerate((yaw, pitch, roll))]
    translation = style.translate_amp * np.stack([drift(), drift()], 1)  # (T, 2)
    return HeadMotion(yaw=angles[0], pitch=angles[1], roll=angles[2], translation=translation)


def blink_track(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """Eyelid closure per frame, 0 (open) … 1 (closed): blinks at random intervals, ~160 ms each.

    The closure is the blink profile averaged over each frame's exposure (5 sub-samples), so a blink shorter
    than a frame still shows as a partial closure.
    """
    duration = n_frames / fps
    onsets = []
    t = rng.uniform(0.2, BLINK_MEAN_INTERVAL_S)
    while t < duration:
        onsets.append(t)
        t += BLINK_MIN_INTERVAL_S + rng.exponential(BLINK_MEAN_INTERVAL_S - BLINK_MIN_INTERVAL_S)
    sub = (np.arange(n_frames)[:, None] + (np.arange(5)[None, :] + 0.5) / 5) / fps  # (T, 5) seconds
    closure = np.zeros_like(sub)
    for t0 in onsets:
        d = sub - t0
        down = np.clip(d / BLINK_CLOSE_S, 0, 1)
        up = 1 - np.clip((d - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S, 0, 1)
        closure = np.maximum(closure, np.where(d < 0, 0.0, np.minimum(down, up)))
    return closure.mean(1)
