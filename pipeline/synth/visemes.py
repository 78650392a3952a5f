"""Phoneme → viseme mapping and coarticulated mouth trajectories for the synthetic corpus.

Each espeak-ng phoneme mnemonic maps to a viseme class (closed p/b/m, labiodental f/v, rounded o/u/w…, spread
i/e…, open a…, mid @/V, other consonants, rest for pauses). A class has an articulatory target
(`MouthShape`: jaw/lip opening, lip width, rounding/protrusion). Trajectories are built like a simple
dominance model (Cohen & Massaro 1993, simplified): piecewise-constant targets on a fine time grid, blended with a
Gaussian kernel weighted by each segment's dominance (consonants other than bilabials take on the shape of
neighbouring vowels), shifted slightly earlier (lips anticipate the sound), and then the bilabial closures are
enforced as hard constraints so that p/b/m really close the lips at their time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.synth.tts import PAUSE_PHONEMES, Phoneme

GRID_HZ = 200  # time resolution of the trajectory computation (5 ms)
SMOOTH_SIGMA_S = 0.030  # Gaussian blending kernel (coarticulation), seconds
ANTICIPATION_S = 0.020  # lips lead the acoustic event by this much
CLOSURE_RAMP_S = 0.040  # lips move from open to closed (and back) for a bilabial over this time

VISEME_CLASSES = ("rest", "closed", "labiodental", "rounded", "spread", "open", "mid", "consonant")


@dataclasses.dataclass(frozen=True)
class MouthShape:
    """Articulatory target of a viseme.

    Attributes:
        open: lip/jaw opening, 0 (lips together) … 1 (wide open).
        width: mouth width relative to the speaker's rest width (rounded < 1 < spread).
        round: rounding/protrusion, 0 … 1.
        dominance: weight in the coarticulation blend (how strongly the segment imposes its shape).
    """

    open: float
    width: float
    round: float
    dominance: float


VISEME_TARGETS: dict[str, MouthShape] = {
    "rest": MouthShape(open=0.02, width=1.00, round=0.0, dominance=0.6),
    "closed": MouthShape(open=0.00, width=0.98, round=0.0, dominance=1.0),
    "labiodental": MouthShape(open=0.10, width=1.00, round=0.0, dominance=0.8),
    "rounded": MouthShape(open=0.38, width=0.72, round=1.0, dominance=1.0),
    "spread": MouthShape(open=0.38, width=1.18, round=0.0, dominance=1.0),
    "open": MouthShape(open=0.95, width=1.06, round=0.0, dominance=1.0),
    "mid": MouthShape(open=0.62, width=1.00, round=0.1, dominance=0.9),
    "consonant": MouthShape(open=0.25, width=1.04, round=0.0, dominance=0.35),
}

# espeak-ng English mnemonics (phsource/ph_english*), stress and length marks stripped before the lookup.
_CLOSED = {"p", "b", "m"}
_LABIODENTAL = {"f", "v"}
_ROUNDED = {"w", "u", "u:", "U", "U@", "0", "O", "O:", "O@", "OI", "o", "o@", "oU", "@U", "aU@", "S", "Z", "tS",
            "dZ", "r", "r-", "W", "u@"}
_SPREAD = {"i", "i:", "I", "I2", "I#", "i@", "i@3", "e", "E", "eI", "e@", "E2", "E3", "j", "IR"}
_OPEN = {"a", "a#", "A", "A:", "A@", "aI", "aI@", "aI3", "aU", "a:", "&"}
_MID = {"@", "@2", "@5", "@L", "3", "3:", "V", "VR", "@r", "o#"}


def viseme_class(symbol: str) -> str:
    """Viseme class (one of `VISEME_CLASSES`) of an espeak-ng phoneme mnemonic."""
    if symbol in PAUSE_PHONEMES or symbol.startswith("_"):
        return "rest"
    s = symbol.strip("'\",%=")
    for table, name in ((_CLOSED, "closed"), (_LABIODENTAL, "labiodental"), (_ROUNDED, "rounded"),
                        (_SPREAD, "spread"), (_OPEN, "open"), (_MID, "mid")):
        if s in table:
            return name
    # Unlisted vowels: classify by their first character; everything else is a (non-labial) consonant.
    head = s[:1]
    if head in ("a", "A"):
        return "open"
    if head in ("o", "O", "u", "U", "w"):
        return "rounded"
    if head in ("i", "I", "e", "E"):
        return "spread"
    if head in ("@", "3", "V"):
        return "mid"
    return "consonant"


@dataclasses.dataclass(frozen=True)
class MouthTrack:
    """Per-frame mouth articulation (arrays of shape (T,)) and the viseme class active at each frame."""

    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    viseme: tuple[str, ...]


def _gaussian_kernel(sigma_samples: float) -> np.ndarray:
    half = max(1, int(np.ceil(3.0 * sigma_samples)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_samples) ** 2)
    return k / k.sum()


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def mouth_track(phonemes: tuple[Phoneme, ...] | list[Phoneme], frame_times_s: np.ndarray,
                open_gain: float = 1.0) -> MouthTrack:
    """Coarticulated mouth trajectory sampled at `frame_times_s` (seconds, (T,)).

    Args:
        phonemes: contiguous phoneme intervals (times in seconds on the same clock as `frame_times_s`).
        frame_times_s: (T,) sample times, e.g. video frame centres.
        open_gain: per-speaker articulation amplitude (scales the opening of open visemes).
    Returns:
        `MouthTrack` with opening in [0, 1]; it is exactly 0 at the centre of every p/b/m.
    """
    frame_times_s = np.asarray(frame_times_s, dtype=np.float64)
    t_end = max(float(frame_times_s.max(initial=0.0)), max((p.end_s for p in phonemes), default=0.0)) + 0.5
    n = int(np.ceil(t_end * GRID_HZ)) + 1
    grid = np.arange(n) / GRID_HZ  # (N,)
    rest = VISEME_TARGETS["rest"]
    targets = np.tile(np.array([rest.open, rest.width, rest.round]), (n, 1))  # (N, 3)
    dominance = np.full(n, rest.dominance)
    closure = np.zeros(n)  # 1 where a bilabial holds the lips shut
    for ph in phonemes:
        cls = viseme_class(ph.symbol)
        shape = VISEME_TARGETS[cls]
        i0, i1 = int(round(ph.start_s * GRID_HZ)), max(int(round(ph.end_s * GRID_HZ)), int(round(ph.start_s * GRID_HZ)) + 1)
        targets[i0:i1] = (min(1.0, shape.open * (open_gain if shape.open > 0.3 else 1.0)), shape.width, shape.round)
        dominance[i0:i1] = shape.dominance
        if cls == "closed":
            # Closed from the phoneme start (reached by an anticipatory ramp) until shortly before its end.
            ramp = CLOSURE_RAMP_S
            hold_end = max(ph.start_s + 0.5 * (ph.end_s - ph.start_s), ph.end_s - 0.25 * ramp)
            up = _smoothstep((grid - (ph.start_s - ramp)) / ramp)
            down = 1.0 - _smoothstep((grid - hold_end) / ramp)
            closure = np.maximum(closure, np.minimum(up, down))

    kernel = _gaussian_kernel(SMOOTH_SIGMA_S * GRID_HZ)
    pad = len(kernel) // 2
    w = np.pad(dominance, pad, mode="edge")
    num = np.stack([np.convolve(np.pad(targets[:, c], pad, mode="edge") * w, kernel, mode="valid") for c in range(3)], 1)
    den = np.convolve(w, kernel, mode="valid")[:, None]
    smooth = num / den  # (N, 3)
    smooth[:, 0] *= 1.0 - closure

    # Anticipation: the articulation at time t is what the blended targets prescribe at t + ANTICIPATION_S.
    query = frame_times_s + ANTICIPATION_S
    out = [np.interp(query, grid, smooth[:, c]) for c in range(3)]
    closed_now = np.interp(frame_times_s, grid, closure)
    opening = np.clip(out[0], 0.0, 1.0) * (1.0 - closed_now)

    starts = np.array([p.start_s for p in phonemes]) if phonemes else np.zeros(0)
    classes = []
    for t in frame_times_s:
        k = int(np.searchsorted(starts, t, side="right")) - 1
        classes.append(viseme_class(phonemes[k].symbol) if 0 <= k < len(phonemes) and t < phonemes[k].end_s else "rest")
    return MouthTrack(open=opening.astype(np.float64), width=out[1], round=np.clip(out[2], 0.0, 1.0),
                      viseme=tuple(classes))
