"""Speech synthesis with per-phoneme timing from libespeak-ng, through ctypes.

The espeak-ng command line can print phonemes but not their times (``--pho`` needs mbrola), so this module talks
to the shared library directly: ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ..., espeakINITIALIZE_PHONEME_EVENTS)``
plus ``espeak_SetSynthCallback``. In synchronous mode ``espeak_Synth`` calls the callback repeatedly with a buffer
of 16-bit samples and a list of events terminated by ``espeakEVENT_LIST_TERMINATED``; events of type
``espeakEVENT_PHONEME`` carry the phoneme mnemonic in ``id.string`` and the position of the phoneme's start in
the generated audio (``audio_position``, ms, and ``sample``, the sample index). The struct layouts below follow
``/usr/include/espeak-ng/speak_lib.h`` (API revision 12, espeak-ng 1.51).

espeak keeps global state and is not thread-safe: the library is initialised once per process (lazily, on the
first call) and every synthesis runs under one lock. Worker processes each initialise their own copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

# --- speak_lib.h constants ---------------------------------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_espeakINITIALIZE_PHONEME_EVENTS = 0x0001
_espeakEVENT_LIST_TERMINATED = 0
_espeakEVENT_WORD = 1
_espeakEVENT_END = 5
_espeakEVENT_MSG_TERMINATED = 6
_espeakEVENT_PHONEME = 7
_espeakCHARS_UTF8 = 1
_POS_CHARACTER = 1
# espeak_PARAMETER values
_espeakRATE = 1
_espeakVOLUME = 2
_espeakPITCH = 3
_espeakRANGE = 4
_espeakWORDGAP = 7
_EE_OK = 0

ESPEAK_SAMPLE_RATE_HZ = 22050  # espeak-ng's native output rate; checked against espeak_Initialize's return value
_BUFFER_MS = 100  # length of the audio buffers handed to the callback
_INT16_FULL_SCALE = 32768.0

LIBRARY_NAME = "libespeak-ng.so.1"

# Phoneme mnemonics espeak emits for silences/pauses (word/clause boundaries); they map to the rest viseme.
PAUSE_PHONEMES = frozenset({"_", "_:", "_!", "_|", "_^_", "_#", "||", "|", ""})


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h): the enum ``type`` is an int-sized field."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded or refused a request."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """espeak-ng voice settings for one speaker.

    Attributes:
        name: voice with optional variant, e.g. ``en-us+f3`` or ``en-gb+m2`` (``espeak_SetVoiceByName``).
        pitch: base pitch, 0–100 (50 = the voice's normal).
        pitch_range: pitch range (intonation), 0–100 (0 = monotone, 50 = normal).
        rate_wpm: speaking rate, words per minute (espeak accepts 80–450).
        word_gap_10ms: extra pause between words, units of 10 ms.
    """

    name: str
    pitch: int = 50
    pitch_range: int = 50
    rate_wpm: int = 160
    word_gap_10ms: int = 0


@dataclasses.dataclass(frozen=True)
class Phoneme:
    """One phoneme (espeak mnemonic) with its interval in the synthesized audio, seconds."""

    symbol: str
    start_s: float
    end_s: float

    @property
    def centre_s(self) -> float:
        return 0.5 * (self.start_s + self.end_s)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """Synthesized speech: mono float32 samples in [-1, 1] at `sample_rate`, the phoneme intervals and words."""

    audio: np.ndarray  # (N,) float32
    sample_rate: int
    phonemes: tuple[Phoneme, ...]
    text: str
    voice: Voice

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


class _Espeak:
    """The process-wide libespeak-ng handle (initialised once; calls serialised by a lock)."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or LIBRARY_NAME
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as err:
            raise EspeakError(f"cannot load {path} (install the espeak-ng package, which ships "
                              f"{LIBRARY_NAME})") from err
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _espeakINITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({path}: is espeak-ng-data installed?)")
        self.sample_rate = int(rate)
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str, int, int]] = []  # (type, phoneme, audio_position ms, sample)
        # Keep a reference to the ctypes callback for the life of the process (espeak holds the raw pointer).
        self._callback = _SynthCallback(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav: Any, n_samples: int, events: Any) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events[i].type != _espeakEVENT_LIST_TERMINATED:
            ev = events[i]
            symbol = ev.id.string.decode("utf-8", "replace") if ev.type == _espeakEVENT_PHONEME else ""
            self._events.append((int(ev.type), symbol, int(ev.audio_position), int(ev.sample)))
            i += 1
        return 0

    def _set(self, param: int, value: int, what: str) -> None:
        if self.lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
            raise EspeakError(f"espeak_SetParameter({what}={value}) failed")

    def synth(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, str, int, int]]]:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise EspeakError(f"espeak-ng has no voice {voice.name!r}")
            # Set every parameter on every call: espeak keeps them between messages.
            self._set(_espeakRATE, voice.rate_wpm, "rate")
            self._set(_espeakVOLUME, 100, "volume")
            self._set(_espeakPITCH, voice.pitch, "pitch")
            self._set(_espeakRANGE, voice.pitch_range, "range")
            self._set(_espeakWORDGAP, voice.word_gap_10ms, "wordgap")
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _espeakCHARS_UTF8, None, None)
            if err != _EE_OK:
                raise EspeakError(f"espeak_Synth failed with code {err} for text {text!r}")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events = self._events
            self._chunks, self._events = [], []
        return audio, events


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Espeak:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Espeak()
        return _ENGINE


def synthesize(text: str, voice: Voice) -> Utterance:
    """Speak `text` with `voice`; return the audio and the phoneme intervals (espeak phoneme events).

    Each phoneme starts at its event's sample position and ends where the next phoneme (or the end-of-clause /
    end-of-message event, or the audio) starts, so the intervals are contiguous, monotonic and cover the speech.

    Raises:
        EspeakError: the library is missing, the voice is unknown or synthesis failed.
    """
    eng = _engine()
    pcm, events = eng.synth(text, voice)
    sr = eng.sample_rate
    n = len(pcm)
    audio = (pcm.astype(np.float32) / _INT16_FULL_SCALE).astype(np.float32)

    # espeak reports a word-initial plosive at its release; the closure silence before it lies between the
    # WORD event and the phoneme event. A phoneme that follows a WORD event therefore starts at that event.
    starts: list[tuple[str, int]] = []
    boundaries: list[int] = []  # sample positions where a phoneme ends without a following phoneme
    word_start: int | None = None
    for ev_type, symbol, pos_ms, sample in events:
        # `sample` is the exact sample index; fall back to the ms position if a build leaves it 0.
        pos = sample if sample > 0 or pos_ms == 0 else round(pos_ms * sr / 1000)
        pos = min(max(pos, 0), n)
        if ev_type == _espeakEVENT_PHONEME:
            if word_start is not None and (not starts or starts[-1][1] < word_start) and symbol not in PAUSE_PHONEMES:
                pos = min(pos, word_start)
            word_start = None
            starts.append((symbol, pos))
        elif ev_type == _espeakEVENT_WORD:
            word_start = pos
        elif ev_type in (_espeakEVENT_END, _espeakEVENT_MSG_TERMINATED):
            boundaries.append(pos)

    phonemes: list[Phoneme] = []
    for i, (symbol, pos) in enumerate(starts):
        nxt = starts[i + 1][1] if i + 1 < len(starts) else n
        later = [b for b in boundaries if pos < b < nxt]
        end = min(later) if later else nxt
        if end <= pos:
            continue  # zero-length (e.g. a pause event at the same position as the next phoneme)
        phonemes.append(Phoneme(symbol, pos / sr, end / sr))
    return Utterance(audio=audio, sample_rate=sr, phonemes=tuple(phonemes), text=text, voice=voice)


WORDS = (
    "people", "paper", "maybe", "number", "problem", "power", "member", "public", "moment", "simple", "bob",
    "map", "my", "me", "be", "by", "but", "big", "book", "boat", "bring", "mother", "brother", "morning", "market",
    "music", "picture", "player", "perhaps", "point", "put", "pay", "peace", "pool", "pump", "bump", "bubble", "maple",
    "baby", "ball", "blue", "black", "box", "bread", "mom", "moon", "mouse", "might", "must", "much", "more", "most",
    "open", "small", "warm", "arm", "home", "time", "name", "game", "same", "come", "some", "from", "him", "them",
    "the", "a", "an", "and", "of", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "they",
    "at", "one", "have", "this", "had", "not", "what", "all", "were", "when", "we", "there", "can", "said", "each",
    "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "these",
    "so", "would", "make", "like", "into", "look", "two", "way", "could", "see", "long", "day", "did", "get",
    "now", "find", "water", "call", "who", "oil", "sit", "down", "side", "been", "first", "word", "cool", "food",
    "good", "school", "true", "through", "blue", "new", "you", "few", "who", "zoo", "shoe", "go", "show", "no",
    "slow", "know", "road", "cheese", "sea", "tea", "eat", "need", "keep", "feel", "free", "street", "key",
    "father", "car", "far", "start", "heart", "hot", "top", "stop", "shop", "job", "drop", "happy", "apple", "cat",
    "hand", "back", "last", "fast", "chair", "house", "window", "garden", "yellow", "orange", "river", "summer",
)


def random_text(rng: np.random.Generator, n_words: int = 60) -> list[str]:
    """A seeded word sequence from `WORDS`, with commas/periods every few words (phrase pauses)."""
    words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=n_words)]
    out, since = [], 0
    for w in words:
        since += 1
        if since >= 4 and rng.random() < 0.25:
            w += "," if rng.random() < 0.6 else "."
            since = 0
        out.append(w)
    return out


def _sentence(words: list[str]) -> str:
    text = " ".join(words).rstrip(",.")
    parts = [p.strip() for p in text.split(".")]
    return ". ".join(p[:1].upper() + p[1:] for p in parts if p) + "."


@dataclasses.dataclass(frozen=True)
class ClipAudio:
    """The clip's speech: utterance placed after `lead_s` of silence and padded to a whole number of frames."""

    utterance: Utterance
    audio: np.ndarray  # (N,) float32 at utterance.sample_rate
    lead_s: float
    n_frames: int


def clip_speech(seed: tuple[int, ...], voice: Voice, min_s: float, max_s: float, fps: int) -> ClipAudio:
    """Synthesize a random text whose clip (with silences) lasts between `min_s` and `max_s` when possible.

    `seed` (a SeedSequence entropy tuple) fixes the text, target length and silences.

    Words are added/removed from a fixed seeded sequence until the clip is the longest one not above the
    target `max_s` drawn in [min_s, max_s]; a clip shorter than `min_s` is padded with trailing silence.
    """
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    target = float(rng.uniform(min_s, max_s))
    lead = float(rng.uniform(0.12, 0.3))
    tail = float(rng.uniform(0.1, 0.25))
    words = random_text(rng)

    def speak(n: int) -> Utterance:
        return synthesize(_sentence(words[:n]), voice)

    n = max(1, int(round((target - lead - tail) * voice.rate_wpm / 60.0 * 0.9)))
    utt = speak(n)
    if lead + utt.duration_s + tail > target:
        while n > 1 and lead + utt.duration_s + tail > target:
            n -= 1
            utt = speak(n)
    else:
        while n < len(words):
            nxt = speak(n + 1)
            if lead + nxt.duration_s + tail > target:
                break
            n, utt = n + 1, nxt
    if lead + utt.duration_s + tail < min_s and n < len(words):
        # Rather one word more (if it still fits under max_s) than a long padded silence.
        nxt = speak(n + 1)
        if lead + nxt.duration_s + tail <= max_s:
            utt = nxt
    total = max(lead + utt.duration_s + tail, min_s)
    n_frames = int(math.ceil(total * fps - 1e-9))
    sr = utt.sample_rate
    n_samples = int(round(n_frames * sr / fps))
    audio = np.zeros(n_samples, np.float32)
    i0 = int(round(lead * sr))
    seg = utt.audio[: max(0, n_samples - i0)]
    audio[i0:i0 + len(seg)] = seg
    return ClipAudio(utterance=utt, audio=audio, lead_s=i0 / sr, n_frames=n_frames)


def clip_speech_isolated(seed: tuple[int, ...], voice: Voice, min_s: float, max_s: float, fps: int) -> ClipAudio:
    """`clip_speech` in a fresh Python process, so the result does not depend on this process's history.

    espeak-ng carries a little state from one message to the next (a few samples / ~1 ms of phoneme timing
    differ when the same text is spoken after another one), and it cannot be re-initialised in-process
    (``espeak_Terminate`` + ``espeak_Initialize`` hangs in 1.51). A clip's speech therefore runs in a
    short-lived child interpreter that initialises espeak once: same seed → same samples, bit for bit.
    The child only imports this module (numpy + ctypes, ~0.2 s); arguments and result travel as pickles.

    Raises:
        EspeakError: the child failed (its stderr is in the message).
    """
    root = str(Path(__file__).resolve().parents[2])  # the folder that contains the `pipeline` package
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "from pipeline.synth.tts import _clip_speech_child; _clip_speech_child()")
    proc = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((seed, voice, min_s, max_s, fps)),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise EspeakError(f"speech synthesis child failed for seed {seed}, voice {voice.name!r}: "
                          f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
    return pickle.loads(proc.stdout)


def _clip_speech_child() -> None:
    """Entry point of the child interpreter: pickled args on stdin → pickled `ClipAudio` on stdout."""
    args = pickle.loads(sys.stdin.buffer.read())
    result = clip_speech(*args)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
