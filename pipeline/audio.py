"""Audio features of method.md §1.1, computed from a 16 kHz mono waveform with numpy only.

Three features, each a re-implementation of the recipe that public pretrained networks were trained on, tested
against the reference implementation (librosa / python_speech_features) in ``tests/test_audio.py``:

- :func:`wav2lip_mel` — the Wav2Lip/SadTalker mel spectrogram (renderer, Audio2Coeff, TAVC audio encoder), 80 Hz.
- :func:`syncnet_mfcc` — ``python_speech_features.mfcc`` with its defaults, as syncnet_python uses it, 100 Hz.
- :func:`log_filterbank` — ``python_speech_features.logfbank`` (MS-Sync's "26-d MFCC"), 100 Hz.

All arrays are time-major: ``(T, C)`` with T frames and C coefficients. Alignment to 25 fps video:
:func:`mel_window_start` / :func:`mel_windows` (SadTalker) and :func:`mfcc_window` (syncnet_python).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Constants. Sample counts are derived from seconds or from each other; nothing is retyped.
# ---------------------------------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz, every stage works on 16 kHz mono float32
FPS = 25  # video frames per second, every stage works on 25 fps video
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]; shared by the mel and the psf features

# Wav2Lip / SadTalker mel (hparams.py of Wav2Lip)
MEL_N_FFT = 800  # samples (50 ms at 16 kHz)
MEL_HOP_LENGTH = 200  # samples (12.5 ms)
MEL_WIN_LENGTH = MEL_N_FFT  # samples, periodic Hann window
N_MELS = 80  # mel bands
MEL_FMIN = 55.0  # Hz
MEL_FMAX = 7600.0  # Hz
MEL_REF_LEVEL_DB = 20.0  # dB subtracted after amplitude -> dB
MEL_MIN_LEVEL_DB = -100.0  # dB, floor of the normalisation range
MEL_AMP_FLOOR = 10.0 ** (MEL_MIN_LEVEL_DB / 20.0)  # linear amplitude 1e-5, floor before log10
MEL_MAX_ABS_VALUE = 4.0  # normalised mels lie in [-4, 4] (symmetric_mels)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // MEL_HOP_LENGTH  # 80
MEL_WINDOW_FRAMES = 16  # mel frames per video-frame window (0.2 s = 5 video frames)
MEL_WINDOW_OFFSET_FRAMES = 2  # video frames: the window of frame k starts at video frame k - 2 (SadTalker)

# python_speech_features (syncnet_python MFCC and MS-Sync log filterbank)
PSF_WIN_SECONDS = 0.025  # s, psf winlen
PSF_HOP_SECONDS = 0.01  # s, psf winstep
PSF_WIN_LENGTH = round(PSF_WIN_SECONDS * SAMPLE_RATE)  # 400 samples at 16 kHz
PSF_HOP_LENGTH = round(PSF_HOP_SECONDS * SAMPLE_RATE)  # 160 samples at 16 kHz
PSF_N_FFT = 512  # psf nfft (the smallest power of two >= 400)
N_FILTERBANK = 26  # psf nfilt: mel filters of the filterbank / log filterbank
N_MFCC = 13  # psf numcep
MFCC_CEPLIFTER = 22  # psf ceplifter
MFCC_FRAMES_PER_SECOND = SAMPLE_RATE // PSF_HOP_LENGTH  # 100
MFCC_WINDOW_VIDEO_FRAMES = 5  # SyncNet pairs 5 video frames ...
MFCC_ROWS_PER_VIDEO_FRAME = MFCC_FRAMES_PER_SECOND // FPS  # ... with 4 MFCC rows per frame = 20 rows

INT16_FULL_SCALE = 32768  # int16 PCM units per float unit
INT16_LOG_ENERGY_OFFSET = 2.0 * math.log(INT16_FULL_SCALE)  # MFCC c0 of int16 PCM minus c0 of float audio

_EPS = np.finfo(float).eps  # psf replaces exact zeros by float64 eps before taking the log


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------
def _as_waveform(wav: np.ndarray, allow_int: bool = False) -> np.ndarray:
    """Validate a mono waveform (S,), S >= 1. Float input is returned as is; int PCM only when ``allow_int``."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (S,), got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError("expected a non-empty waveform, got 0 samples")
    kinds = "fi" if allow_int else "f"
    if wav.dtype.kind not in kinds:
        expected = "a float or int PCM" if allow_int else "a float"
        raise ValueError(f"expected {expected} waveform, got dtype {wav.dtype}")
    return wav


def preemphasis(wav: np.ndarray, coeff: float = PREEMPHASIS) -> np.ndarray:
    """``y[0] = x[0]; y[n] = x[n] - coeff * x[n-1]``.

    Identical to Wav2Lip's ``scipy.signal.lfilter([1, -coeff], [1], x)`` (zero initial state) and to
    ``python_speech_features.sigproc.preemphasis``.
    """
    out = np.empty(wav.shape, dtype=np.result_type(wav, coeff))  # float32 stays float32, int -> float64
    out[0] = wav[0]
    np.subtract(wav[1:], coeff * wav[:-1], out=out[1:])
    return out


def _frames(signal: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Strided view (T, frame_length) of frames starting at multiples of hop_length; no padding."""
    return np.lib.stride_tricks.sliding_window_view(signal, frame_length)[::hop_length]  # (T, L)


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level of a float waveform in dB relative to full scale (1.0); ``-inf`` for digital silence."""
    w = _as_waveform(wav)
    block = 1 << 20  # float64 squares of one block at a time (minutes of audio: no 8-byte copy of the whole)
    total = sum(float(np.sum(np.square(w[i:i + block], dtype=np.float64))) for i in range(0, w.size, block))
    power = total / w.size
    return 10.0 * math.log10(power) if power > 0 else -math.inf


# ---------------------------------------------------------------------------------------------------------------
# Wav2Lip / SadTalker mel spectrogram
# ---------------------------------------------------------------------------------------------------------------
def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, lin)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=4)
def slaney_mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = MEL_N_FFT,
    n_mels: int = N_MELS,
    fmin: float = MEL_FMIN,
    fmax: float = MEL_FMAX,
) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, (n_mels, n_fft // 2 + 1) float64, read-only.

    Equals ``librosa.filters.mel(sr, n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (htk=False, norm='slaney'),
    which Wav2Lip's ``_build_mel_basis`` calls; librosa returns float32, this keeps float64.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    mel_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))  # (n_mels+2,)
    fdiff = np.diff(mel_hz)  # (n_mels+1,)
    ramps = mel_hz[:, None] - fft_hz[None, :]  # (n_mels+2, F)
    lower = -ramps[:-2] / fdiff[:-1, None]  # (n_mels, F)
    upper = ramps[2:] / fdiff[1:, None]  # (n_mels, F)
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, F)
    weights *= (2.0 / (mel_hz[2 : n_mels + 2] - mel_hz[:n_mels]))[:, None]  # Slaney area normalisation
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=4)
def _periodic_hann(length: int) -> np.ndarray:
    """``scipy.signal.get_window('hann', length, fftbins=True)``, the window librosa.stft uses."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)
    window.setflags(write=False)
    return window


def wav2lip_mel(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, block_frames: int = 4096) -> np.ndarray:
    """Normalised log-mel spectrogram exactly as Wav2Lip's ``audio.melspectrogram`` (used by SadTalker).

    Recipe: pre-emphasis 0.97 -> |STFT| (n_fft 800, hop 200, periodic Hann 800, centred) -> Slaney mel (80 bands,
    55-7600 Hz) -> ``20 log10(max(1e-5, x)) - 20`` -> ``clip(8 (S + 100) / 100 - 4, -4, 4)``.

    Centring pads ``n_fft // 2`` samples on each side with **reflect** padding: Wav2Lip was written against
    librosa 0.7, whose ``stft`` defaulted to ``pad_mode='reflect'``; librosa >= 0.10 defaults to zero padding, which
    changes the first and last few frames. Public pretrained encoders saw reflect padding, so we keep it.

    Args:
        wav: mono waveform (S,), float, nominally in [-1, 1].
        sample_rate: must be 16 kHz — n_fft/hop are sample counts tuned for it; resample first (media.read_audio).
        block_frames: mel frames computed at a time (4096 = 51 s): the result does not depend on it, the peak
            memory does (~13 KB per frame of a block instead of per frame of the whole recording).

    Returns:
        (M, 80) float32, time-major, M = 1 + S // 200 (80 frames per second), values in [-4, 4].
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wav2lip_mel needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample it first")
    wav = _as_waveform(wav)
    pad = MEL_N_FFT // 2
    n_mel = 1 + len(wav) // MEL_HOP_LENGTH
    if n_mel <= block_frames:
        # lfilter computes in float64 whatever the input dtype, so we do too.
        # For S <= 400 samples np.pad reflects repeatedly; librosa 0.7 called np.pad the same way.
        padded = np.pad(preemphasis(wav.astype(np.float64)), pad, mode="reflect")  # (S + n_fft,)
        return _normalised_mel(_frames(padded, MEL_N_FFT, MEL_HOP_LENGTH), sample_rate)
    # Long audio: the same arithmetic on blocks of `block_frames` mel frames, so the float64 frames and spectra
    # (~13 KB per mel frame) never exist for the whole recording at once (minutes of audio: hundreds of MB).
    # Each block gathers its stretch of the reflect-padded, pre-emphasised signal from the float input directly.
    S = len(wav)  # > 400 here, so a single reflection covers the padding
    blocks = []
    for m0 in range(0, n_mel, block_frames):
        m1 = min(n_mel, m0 + block_frames)
        j = np.arange(m0 * MEL_HOP_LENGTH, (m1 - 1) * MEL_HOP_LENGTH + MEL_N_FFT) - pad  # signal index of each sample
        j = np.abs(j)  # reflect at the start (np.pad "reflect": no repeated edge sample)
        j = np.where(j > S - 1, 2 * (S - 1) - j, j)  # and at the end
        y = wav[j].astype(np.float64)
        prev = j > 0
        y[prev] -= PREEMPHASIS * wav[j[prev] - 1].astype(np.float64)  # preemphasis() on the gathered samples
        blocks.append(_normalised_mel(_frames(y, MEL_N_FFT, MEL_HOP_LENGTH), sample_rate))
    return np.concatenate(blocks)


def _normalised_mel(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """(M, n_fft) float64 frames of the padded, pre-emphasised signal -> (M, 80) float32 normalised log-mel."""
    # win_length == n_fft, so no window centring/zero padding inside the frame is needed
    magnitude = np.abs(np.fft.rfft(frames * _periodic_hann(MEL_WIN_LENGTH), axis=1))  # (M, F)
    mel = magnitude @ slaney_mel_filterbank(sample_rate).T  # (M, 80)
    db = 20.0 * np.log10(np.maximum(MEL_AMP_FLOOR, mel)) - MEL_REF_LEVEL_DB  # (M, 80)
    scale = 2.0 * MEL_MAX_ABS_VALUE
    normalised = scale * ((db - MEL_MIN_LEVEL_DB) / -MEL_MIN_LEVEL_DB) - MEL_MAX_ABS_VALUE
    return np.clip(normalised, -MEL_MAX_ABS_VALUE, MEL_MAX_ABS_VALUE).astype(np.float32)


def mel_window_start(frame_index: int, fps: int = FPS) -> int:
    """First mel frame of the 16-frame window paired with video frame ``frame_index`` (SadTalker ``get_data``).

    ``int(80 * ((k - 2) / fps))`` — Python's ``int`` truncates toward zero, so frames 0 and 1 start at -6 and -3
    (not -7, -4): we keep SadTalker's arithmetic exactly, including its operation order, because pretrained
    Audio2Coeff/renderer weights were trained with it. Negative starts are edge-padded by :func:`mel_windows`.
    """
    return int(MEL_FRAMES_PER_SECOND * ((frame_index - MEL_WINDOW_OFFSET_FRAMES) / float(fps)))


def mel_windows(mel: np.ndarray, frame_indices: np.ndarray | list[int] | range, fps: int = FPS) -> np.ndarray:
    """Stack the mel windows of the given video frames, (N, 80, 16) float32 (frequency-major, as the encoders take).

    Window k covers mel rows ``mel_window_start(k) + [0, 16)``; rows outside ``[0, M-1]`` are clamped to the first
    or last row (SadTalker's edge padding), so clip starts/ends and clips shorter than a window still give full
    windows.

    Args:
        mel: (M, 80) output of :func:`wav2lip_mel`.
        frame_indices: video frame indices k (any ints; typically ``range(n_video_frames)``).
        fps: video frame rate of the indices.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[0] == 0:
        raise ValueError(f"expected a non-empty (M, n_mels) mel spectrogram, got shape {mel.shape}")
    starts = np.array([mel_window_start(int(k), fps) for k in frame_indices], dtype=np.int64)  # (N,)
    rows = starts[:, None] + np.arange(MEL_WINDOW_FRAMES)[None, :]  # (N, 16)
    rows = np.clip(rows, 0, mel.shape[0] - 1)
    return np.ascontiguousarray(mel[rows].transpose(0, 2, 1), dtype=np.float32)  # (N, 16, 80) -> (N, 80, 16)


class MelWindows:
    """The (T, 1, 80, 16) mel windows of video frames 0..T-1, made on demand from the (M, 80) mel.

    Behaves like the stacked array ``mel_windows(mel, range(T))[:, None]`` for ``len``, ``shape`` and indexing
    (an int, a slice or an index array gives the same values), while holding only the mel: 1.3 KB per video frame
    instead of 5 KB, which is what long inputs to ``tavce animate`` keep in memory.
    """

    def __init__(self, mel: np.ndarray, frames: int, fps: int = FPS) -> None:
        mel = np.asarray(mel, np.float32)
        if mel.ndim != 2 or mel.shape[0] == 0:
            raise ValueError(f"expected a non-empty (M, n_mels) mel spectrogram, got shape {mel.shape}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.mel, self.frames, self.fps = mel, int(frames), fps

    def __len__(self) -> int:
        return self.frames

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, 1, self.mel.shape[1], MEL_WINDOW_FRAMES)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        idx = np.arange(self.frames)[index]
        out = mel_windows(self.mel, np.atleast_1d(idx), self.fps)[:, None]  # (N, 1, 80, 16)
        return out[0] if np.ndim(idx) == 0 else out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


# ---------------------------------------------------------------------------------------------------------------
# python_speech_features: filterbank energies, log filterbank, MFCC
# ---------------------------------------------------------------------------------------------------------------
def _round_half_up(x: float) -> int:
    """psf's ``sigproc.round_half_up`` (Decimal quantize), used for frame lengths in samples."""
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz_to_mel_htk(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def psf_filterbank(
    sample_rate: int = SAMPLE_RATE, n_filters: int = N_FILTERBANK, n_fft: int = PSF_N_FFT
) -> np.ndarray:
    """psf's ``get_filterbanks``: HTK-mel triangles on FFT bins floored as ``floor((nfft+1) f / sr)``, unnormalised.

    Returns (n_filters, n_fft // 2 + 1) float64, read-only. Low edge 0 Hz, high edge sr / 2 (psf defaults).
    """
    mel_points = np.linspace(_hz_to_mel_htk(0.0), _hz_to_mel_htk(sample_rate / 2), n_filters + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz_htk(mel_points) / sample_rate)  # (n_filters+2,) float, as in psf
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    bank.setflags(write=False)
    return bank


def _psf_fbank(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """psf's ``fbank``: (filterbank energies (N, 26), frame energies (N,)), float64, zeros replaced by eps.

    Framing: 25 ms frames every 10 ms from sample 0, no centring; N = 1 + ceil((S - L) / hop) (1 if S <= L) and
    the signal is zero-padded so the last frame is complete. Rectangular window, power spectrum |rfft_512|^2 / 512.
    """
    # Pre-emphasis in the input's precision, as psf does (numpy promotion: float32 stays float32, int16 PCM -> float64),
    # so float32 and int16 inputs reproduce psf exactly; everything after it is float64, as in psf.
    signal = preemphasis(_as_waveform(wav, allow_int=True)).astype(np.float64)
    frame_length = _round_half_up(PSF_WIN_SECONDS * sample_rate)
    hop_length = _round_half_up(PSF_HOP_SECONDS * sample_rate)
    n_frames = 1 if signal.size <= frame_length else 1 + math.ceil((signal.size - frame_length) / hop_length)
    padded_length = (n_frames - 1) * hop_length + frame_length
    signal = np.pad(signal, (0, padded_length - signal.size))
    frames = _frames(signal, frame_length, hop_length)  # (N, L)
    if frame_length > PSF_N_FFT:
        # psf warns and truncates (rfft with n < L crops the frame); we do the same, since the references do.
        frames = frames[:, :PSF_N_FFT]
    power = np.abs(np.fft.rfft(frames, PSF_N_FFT, axis=1)) ** 2 / PSF_N_FFT  # (N, 257)
    energy = power.sum(axis=1)  # (N,)
    energy = np.where(energy == 0, _EPS, energy)
    feat = power @ psf_filterbank(sample_rate).T  # (N, 26)
    feat = np.where(feat == 0, _EPS, feat)
    return feat, energy


def log_filterbank(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """MS-Sync audio feature: ``python_speech_features.logfbank(wav, sr, winlen=0.025, winstep=0.01, nfilt=26,
    nfft=512)``, (N, 26) float32 at 100 frames per second.

    Framing and filterbank are shared with :func:`syncnet_mfcc` (same psf recipe). int16 PCM input adds
    :data:`INT16_LOG_ENERGY_OFFSET` to every value compared with float input.
    """
    feat, _ = _psf_fbank(wav, sample_rate)
    return np.log(feat).astype(np.float32)


@lru_cache(maxsize=2)
def _dct2_ortho_lifted(n_in: int = N_FILTERBANK, n_out: int = N_MFCC, lifter: int = MFCC_CEPLIFTER) -> np.ndarray:
    """(n_in, n_out) matrix = orthonormal DCT-II (scipy ``dct(type=2, norm='ortho')``) then psf's sinusoidal lifter."""
    n = np.arange(n_in)
    k = np.arange(n_out)
    basis = np.cos(np.pi * k[None, :] * (2 * n[:, None] + 1) / (2 * n_in))  # (n_in, n_out)
    basis *= np.where(k == 0, math.sqrt(1.0 / n_in), math.sqrt(2.0 / n_in))[None, :]
    if lifter > 0:
        basis *= (1.0 + (lifter / 2.0) * np.sin(np.pi * k / lifter))[None, :]
    basis.setflags(write=False)
    return basis


def syncnet_mfcc(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """SyncNet audio feature: ``python_speech_features.mfcc(wav, sr)`` with its defaults, as syncnet_python calls it.

    25 ms / 10 ms frames, 26 HTK-mel filters, nfft 512, pre-emphasis 0.97, DCT-II (ortho) to 13 cepstra,
    ceplifter 22, and coefficient 0 replaced by the log frame energy (appendEnergy).

    Scale: syncnet_python reads the wav with ``scipy.io.wavfile`` and passes **int16 PCM**, so its features are
    those of ``32768 * wav``. Since a gain only adds a constant to every log filterbank energy, and the DCT maps a
    constant to coefficient 0 alone, which appendEnergy overwrites, the two differ only in column 0, by
    ``2 ln 32768 = 20.79`` (exactly :data:`INT16_LOG_ENERGY_OFFSET`, except frames of exact digital silence).
    Pass int16 PCM here (:func:`syncnet_input_mfcc` does) to feed pretrained ``syncnet_v2`` weights.

    Args:
        wav: (S,) float waveform, or int PCM to mirror syncnet_python exactly.
        sample_rate: Hz; frame lengths are 25 ms / 10 ms at that rate (nfft stays 512, as in psf).

    Returns:
        (N, 13) float32 at 100 frames per second (syncnet_python transposes this to (13, N)).
    """
    feat, energy = _psf_fbank(wav, sample_rate)
    return _cepstra(np.log(feat), energy).astype(np.float32)


def int16_pcm(wav: np.ndarray) -> np.ndarray:
    """Float waveform (S,) -> int16 PCM (S,) exactly as ffmpeg converts float samples to s16 (libswresample:
    ``av_clip_int16(lrintf(x * 32768))``, round half to even), i.e. the ``pcm_s16le`` wav syncnet_python reads."""
    w = _as_waveform(wav).astype(np.float64)  # x * 32768 is exact in float32 and float64 (a power of two)
    return np.clip(np.rint(w * INT16_FULL_SCALE), -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)


def syncnet_input_mfcc(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The MFCC syncnet_python feeds SyncNet for a float waveform: :func:`syncnet_mfcc` of its int16 PCM.

    Not the float MFCC plus :data:`INT16_LOG_ENERGY_OFFSET`: on frames of digital silence psf floors the frame
    energy at ``eps`` whatever the scale, so c0 is ``ln eps`` (-36.04) in both paths and adding the offset would
    put it 20.79 too high; and samples under half an int16 step become exact zeros only in the int16 path.

    Returns:
        (N, 13) float32 at 100 frames per second, int16 scale (what ``syncnet_v2`` weights expect).
    """
    return syncnet_mfcc(int16_pcm(wav), sample_rate)


def _cepstra(log_feat: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """psf's MFCC from log filterbank energies (N, 26) and frame energies (N,): DCT + lifter, c0 = log energy."""
    cepstra = log_feat @ _dct2_ortho_lifted()  # (N, 26) @ (26, 13) -> (N, 13)
    cepstra[:, 0] = np.log(energy)
    return cepstra


def mfcc_window(
    feat: np.ndarray, frame_index: int, n_frames: int = MFCC_WINDOW_VIDEO_FRAMES, fps: int = FPS
) -> np.ndarray:
    """MFCC (or log-filterbank) rows paired with ``n_frames`` video frames starting at ``frame_index``.

    Convention (syncnet_python ``evaluate``): video frames ``[k, k + 5)`` pair with feature rows
    ``[4k, 4k + 20)`` — 100 Hz features, 4 rows per 25 fps frame, both streams starting at t = 0, no offset.
    Rows outside ``[0, N-1]`` are clamped to the first/last row (edge padding), so every window is full.

    Args:
        feat: (N, C) output of :func:`syncnet_mfcc` or :func:`log_filterbank`.
        frame_index: first video frame k of the window (may be negative or past the end; rows are clamped).
        n_frames: video frames in the window (SyncNet: 5).
        fps: video frame rate; 100 Hz must be an integer multiple of it.

    Returns:
        (n_frames * 100 / fps, C) float32, e.g. (20, 13).
    """
    if MFCC_FRAMES_PER_SECOND % fps:
        raise ValueError(f"fps {fps} does not divide the feature rate {MFCC_FRAMES_PER_SECOND} Hz")
    feat = np.asarray(feat)
    if feat.ndim != 2 or feat.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C) feature array, got shape {feat.shape}")
    rows_per_frame = MFCC_FRAMES_PER_SECOND // fps
    rows = frame_index * rows_per_frame + np.arange(n_frames * rows_per_frame)  # (20,)
    return np.ascontiguousarray(feat[np.clip(rows, 0, feat.shape[0] - 1)], dtype=np.float32)  # (20, C)


# ---------------------------------------------------------------------------------------------------------------
# All three at once (preprocessing)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFeatures:
    """The three method.md §1.1 audio features of one clip, time-major float32.

    Attributes:
        mel: (M, 80) Wav2Lip mel, 80 Hz, in [-4, 4].
        mfcc: (N, 13) SyncNet MFCC, 100 Hz.
        fbank: (N, 26) MS-Sync log filterbank, 100 Hz.
        sample_rate: Hz of the waveform they were computed from (16 kHz).
        n_samples: length of that waveform.
    """

    mel: np.ndarray
    mfcc: np.ndarray
    fbank: np.ndarray
    sample_rate: int
    n_samples: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.n_samples / self.sample_rate


def compute_features(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> AudioFeatures:
    """Compute mel, MFCC and log filterbank of a 16 kHz mono waveform (one shared filterbank pass for the last two)."""
    wav = _as_waveform(wav)
    mel = wav2lip_mel(wav, sample_rate)
    feat, energy = _psf_fbank(wav, sample_rate)
    log_feat = np.log(feat)  # (N, 26)
    mfcc = _cepstra(log_feat, energy)  # (N, 13)
    return AudioFeatures(
        mel=mel,
        mfcc=mfcc.astype(np.float32),
        fbank=log_feat.astype(np.float32),
        sample_rate=sample_rate,
        n_samples=int(wav.size),
    )
