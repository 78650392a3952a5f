"""pipeline.audio against its reference implementations (librosa for the Wav2Lip mel, python_speech_features for
the SyncNet MFCC and the MS-Sync log filterbank), plus the window/alignment conventions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pytest
import python_speech_features as psf
import scipy.io.wavfile
import scipy.signal

from pipeline import audio as A

SR = A.SAMPLE_RATE


# ---------------------------------------------------------------------------------------------------------------
# Reference implementations (the original recipes, written with the original libraries)
# ---------------------------------------------------------------------------------------------------------------
def reference_wav2lip_mel(wav: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """Wav2Lip audio.melspectrogram with librosa 0.7 semantics (reflect padding), transposed to (M, 80)."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    spec = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(stft))) - 20
    return np.clip(8 * ((spec + 100) / 100) - 4, -4, 4).T


def sadtalker_mel_windows(mel: np.ndarray, num_frames: int, fps: int = 25) -> np.ndarray:
    """SadTalker's generate_batch/get_data loop, verbatim apart from names."""
    out = []
    for i in range(num_frames):
        start_frame_num = i - 2
        start_idx = int(80.0 * (start_frame_num / float(fps)))
        seq = [min(max(item, 0), mel.shape[0] - 1) for item in range(start_idx, start_idx + 16)]
        out.append(mel[seq, :].T)
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------------------------
# Test signals
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(3 * SR) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def chirp() -> np.ndarray:
    t = np.arange(2 * SR) / SR
    return (0.5 * scipy.signal.chirp(t, f0=50, t1=2.0, f1=7900, method="logarithmic")).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A real utterance from espeak-ng (22.05 kHz) resampled to 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = Path(tmp_path_factory.mktemp("speech")) / "utt.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True)
    rate, data = scipy.io.wavfile.read(path)
    wav = data.astype(np.float64) / 32768.0
    wav = scipy.signal.resample_poly(wav, SR, rate) if rate != SR else wav
    return wav.astype(np.float32)


SIGNALS = ["noise", "chirp", "speech"]


# ---------------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------------
def test_derived_constants() -> None:
    assert A.MEL_FRAMES_PER_SECOND == 80
    assert A.MFCC_FRAMES_PER_SECOND == 100
    assert A.PSF_WIN_LENGTH == 400 and A.PSF_HOP_LENGTH == 160
    assert A.MFCC_ROWS_PER_VIDEO_FRAME * A.MFCC_WINDOW_VIDEO_FRAMES == 20
    assert A.MEL_AMP_FLOOR == pytest.approx(1e-5)
    assert A.MEL_WINDOW_FRAMES / A.MEL_FRAMES_PER_SECOND == pytest.approx(5 / A.FPS)  # 0.2 s = 5 video frames


# ---------------------------------------------------------------------------------------------------------------
# Wav2Lip mel
# ---------------------------------------------------------------------------------------------------------------
def test_slaney_filterbank_matches_librosa() -> None:
    ours = A.slaney_mel_filterbank()
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert ours.shape == ref.shape == (80, 401)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", SIGNALS)
def test_wav2lip_mel_matches_reference(name: str, request: pytest.FixtureRequest) -> None:
    wav = request.getfixturevalue(name)
    mel = A.wav2lip_mel(wav)
    assert mel.dtype == np.float32
    assert mel.shape == (1 + wav.size // A.MEL_HOP_LENGTH, A.N_MELS)
    np.testing.assert_allclose(mel, reference_wav2lip_mel(wav), atol=1e-4, rtol=0)
    assert mel.min() >= -4 and mel.max() <= 4


@pytest.mark.parametrize("n_samples", [1, 7, 399, 400, 401, 1601])
def test_wav2lip_mel_short_signals(n_samples: int, noise: np.ndarray) -> None:
    wav = noise[:n_samples]
    with pytest.warns(UserWarning) if n_samples < 800 else _no_warning():  # librosa warns n_fft > len
        ref = reference_wav2lip_mel(wav)
    np.testing.assert_allclose(A.wav2lip_mel(wav), ref, atol=1e-4, rtol=0)


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_wav2lip_mel_uses_reflect_not_constant_padding(speech: np.ndarray) -> None:
    """The decision documented in wav2lip_mel: librosa>=0.10's default zero padding changes the edge frames."""
    constant = reference_wav2lip_mel(speech[4000:], pad_mode="constant")
    reflect = reference_wav2lip_mel(speech[4000:], pad_mode="reflect")
    ours = A.wav2lip_mel(speech[4000:])
    assert np.abs(constant[0] - reflect[0]).max() > 1e-2  # the choice matters at the edges ...
    np.testing.assert_allclose(constant[3:-3], reflect[3:-3], atol=1e-4)  # ... and only there
    np.testing.assert_allclose(ours, reflect, atol=1e-4)


def test_wav2lip_mel_rejects_other_rates_and_bad_input(noise: np.ndarray) -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        A.wav2lip_mel(noise, sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        A.wav2lip_mel(np.stack([noise, noise]))
    with pytest.raises(ValueError, match="non-empty"):
        A.wav2lip_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="float"):
        A.wav2lip_mel(np.zeros(100, np.int16))


# ---------------------------------------------------------------------------------------------------------------
# Mel windows
# ---------------------------------------------------------------------------------------------------------------
def test_mel_window_start_known_values() -> None:
    # int() truncates toward zero: frame 0 -> int(-6.4) = -6, frame 1 -> int(-3.2) = -3
    assert [A.mel_window_start(k) for k in range(8)] == [-6, -3, 0, 3, 6, 9, 12, 16]
    assert A.mel_window_start(27) == 80  # one second after the offset: 80 mel frames


def test_mel_window_start_matches_sadtalker_and_exact_arithmetic() -> None:
    for k in range(20_000):
        n = 80 * (k - 2)
        exact = n // 25 if n >= 0 else -((-n) // 25)  # truncation of the exact rational
        assert A.mel_window_start(k) == int(80.0 * ((k - 2) / float(25))) == exact


def test_mel_windows_match_sadtalker_including_edges(speech: np.ndarray) -> None:
    mel = A.wav2lip_mel(speech)
    n_video = int(speech.size / SR * A.FPS)
    ours = A.mel_windows(mel, range(n_video))
    assert ours.shape == (n_video, A.N_MELS, A.MEL_WINDOW_FRAMES)
    np.testing.assert_array_equal(ours, sadtalker_mel_windows(mel, n_video))
    # first frame: rows -6..9 clamped -> row 0 repeated 7 times, then rows 1..9
    np.testing.assert_array_equal(ours[0, :, :7], np.repeat(mel[0][:, None], 7, axis=1))
    np.testing.assert_array_equal(ours[0, :, 7:], mel[1:10].T)
    # frames past the end repeat the last row
    late = A.mel_windows(mel, [n_video + 10])
    np.testing.assert_array_equal(late[0], np.repeat(mel[-1][:, None], 16, axis=1))


def test_mel_windows_clip_shorter_than_a_window() -> None:
    mel = np.arange(5 * 80, dtype=np.float32).reshape(5, 80)  # 5 mel frames < 16
    windows = A.mel_windows(mel, range(3))
    assert windows.shape == (3, 80, 16)
    np.testing.assert_array_equal(windows, sadtalker_mel_windows(mel, 3))
    assert set(np.unique(windows[:, 0, :])) <= {0.0, 80.0, 160.0, 240.0, 320.0}


# ---------------------------------------------------------------------------------------------------------------
# python_speech_features MFCC / log filterbank
# ---------------------------------------------------------------------------------------------------------------
def test_psf_filterbank_matches_reference() -> None:
    for rate in (16000, 8000, 22050):
        np.testing.assert_allclose(A.psf_filterbank(rate), psf.get_filterbanks(26, 512, rate), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SIGNALS)
@pytest.mark.parametrize("rate", [16000, 8000])
def test_mfcc_and_logfbank_match_psf(name: str, rate: int, request: pytest.FixtureRequest) -> None:
    wav = request.getfixturevalue(name)
    if rate != SR:
        wav = scipy.signal.resample_poly(wav, rate, SR).astype(np.float32)
    ref_mfcc = psf.mfcc(wav, rate)  # exactly syncnet_python's call (all defaults)
    ref_fbank = psf.logfbank(wav, rate, winlen=0.025, winstep=0.01, nfilt=26, nfft=512)  # MS-Sync
    ours_mfcc = A.syncnet_mfcc(wav, rate)
    ours_fbank = A.log_filterbank(wav, rate)
    assert ours_mfcc.shape == ref_mfcc.shape and ours_mfcc.shape[1] == A.N_MFCC
    assert ours_fbank.shape == ref_fbank.shape and ours_fbank.shape[1] == A.N_FILTERBANK
    np.testing.assert_allclose(ours_mfcc, ref_mfcc, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours_fbank, ref_fbank, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_samples", [1, 100, 400, 401, 560, 561])
def test_mfcc_framing_edges(n_samples: int, noise: np.ndarray) -> None:
    """psf's framing: 1 frame up to 400 samples, then 1 + ceil((S - 400) / 160), last frame zero-padded."""
    wav = noise[:n_samples]
    ours = A.syncnet_mfcc(wav)
    expected_frames = 1 if n_samples <= 400 else 1 + int(np.ceil((n_samples - 400) / 160))
    assert ours.shape == (expected_frames, 13)
    np.testing.assert_allclose(ours, psf.mfcc(wav, SR), rtol=1e-5, atol=1e-4)


def test_mfcc_of_silence_matches_psf_eps_handling() -> None:
    wav = np.zeros(SR // 2, np.float32)
    np.testing.assert_allclose(A.syncnet_mfcc(wav), psf.mfcc(wav, SR), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(A.log_filterbank(wav), psf.logfbank(wav, SR), rtol=1e-5, atol=1e-4)


def test_mfcc_window_convention() -> None:
    feat = np.arange(30 * 13, dtype=np.float32).reshape(30, 13)  # 30 rows = 0.3 s = 7.5 video frames
    win = A.mfcc_window(feat, 1)
    assert win.shape == (20, 13)
    np.testing.assert_array_equal(win, feat[4:24])  # frames [1, 6) <-> rows [4, 24)
    np.testing.assert_array_equal(A.mfcc_window(feat, 0), feat[:20])
    end = A.mfcc_window(feat, 5)  # rows 20..39, clamped to 29
    np.testing.assert_array_equal(end[:10], feat[20:30])
    np.testing.assert_array_equal(end[10:], np.repeat(feat[29:30], 10, axis=0))
    start = A.mfcc_window(feat, -1)  # rows -4..15
    np.testing.assert_array_equal(start[:4], np.repeat(feat[:1], 4, axis=0))
    with pytest.raises(ValueError, match="fps"):
        A.mfcc_window(feat, 0, fps=30)


# ---------------------------------------------------------------------------------------------------------------
# compute_features
# ---------------------------------------------------------------------------------------------------------------
def test_compute_features_equals_the_parts(speech: np.ndarray) -> None:
    feats = A.compute_features(speech)
    np.testing.assert_array_equal(feats.mel, A.wav2lip_mel(speech))
    np.testing.assert_array_equal(feats.mfcc, A.syncnet_mfcc(speech))
    np.testing.assert_array_equal(feats.fbank, A.log_filterbank(speech))
    assert feats.duration == pytest.approx(speech.size / SR)
    # both streams cover the clip at their rates
    assert abs(feats.mel.shape[0] / A.MEL_FRAMES_PER_SECOND - feats.duration) < 0.02
    assert abs(feats.mfcc.shape[0] / A.MFCC_FRAMES_PER_SECOND - feats.duration) < 0.02
    assert all(a.dtype == np.float32 for a in (feats.mel, feats.mfcc, feats.fbank))


def test_int16_pcm_input_mirrors_syncnet_python(speech: np.ndarray) -> None:
    """syncnet_python passes int16 PCM to psf.mfcc: same result as ours on int16, and only c0 shifts vs float."""
    pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_allclose(A.syncnet_mfcc(pcm), psf.mfcc(pcm, SR), rtol=1e-5, atol=1e-4)
    from_float = A.syncnet_mfcc(pcm.astype(np.float32) / A.INT16_FULL_SCALE)
    from_pcm = A.syncnet_mfcc(pcm)
    sound = from_float[:, 0] > np.log(np.finfo(float).eps) + 1  # frames of exact digital silence excepted
    assert sound.sum() > 100
    np.testing.assert_allclose(from_pcm[sound, 1:], from_float[sound, 1:], atol=1e-3)
    np.testing.assert_allclose(from_pcm[sound, 0] - from_float[sound, 0], A.INT16_LOG_ENERGY_OFFSET, atol=1e-3)


def test_syncnet_input_equals_syncnet_python_including_silence(speech: np.ndarray, tmp_path: Path) -> None:
    """The SyncNet input of a float waveform equals syncnet_python's own path, computed independently: ffmpeg writes
    the float audio as a pcm_s16le wav (its own float->int16 conversion), scipy reads it, psf.mfcc. The signal has
    exact digital silence (c0 = ln eps there in both paths), sub-LSB noise and speech."""
    from pipeline.data.syncnet import syncnet_audio

    quiet = (np.random.default_rng(1).standard_normal(SR // 2) * 0.2 / A.INT16_FULL_SCALE).astype(np.float32)
    wav = np.concatenate([np.zeros(SR // 2, np.float32), quiet, 0.8 * speech, np.zeros(SR // 4, np.float32)])
    raw, wav_file = tmp_path / "audio.f32le", tmp_path / "audio.wav"
    wav.astype("<f4").tofile(raw)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "f32le", "-ar", str(SR), "-ac", "1",
                    "-i", str(raw), "-c:a", "pcm_s16le", str(wav_file)], check=True)
    rate, pcm = scipy.io.wavfile.read(wav_file)
    assert rate == SR and pcm.dtype == np.int16
    np.testing.assert_array_equal(A.int16_pcm(wav), pcm)
    reference = psf.mfcc(pcm, rate)  # syncnet_python: wavfile.read -> python_speech_features.mfcc, defaults
    ours = syncnet_audio(wav)
    silent = reference[:, 0] < np.log(np.finfo(float).eps) + 1e-6  # frames of exact digital silence
    assert silent.sum() > 50  # the leading/trailing silence and the sub-LSB noise, which rounds to zeros
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seconds", [0.02, 2.0, 7.3])
def test_wav2lip_mel_in_blocks_equals_the_whole_computation(seconds: float) -> None:
    """Long audio is computed in blocks of mel frames (bounded memory): any block size gives the same mel,
    including the reflect-padded edges and the pre-emphasis carried across block borders."""
    rng = np.random.default_rng(3)
    wav = (rng.normal(size=int(seconds * A.SAMPLE_RATE)) * 0.2).astype(np.float32)
    whole = A.wav2lip_mel(wav, block_frames=10**9)
    for block in (1, 7, 64, 4096):
        np.testing.assert_allclose(A.wav2lip_mel(wav, block_frames=block), whole, atol=1e-5, rtol=0)
    if wav.size > 4 * A.MEL_N_FFT:
        np.testing.assert_allclose(whole, reference_wav2lip_mel(wav), atol=1e-4, rtol=0)


def test_mel_windows_lazy_equals_the_stacked_array(speech: np.ndarray) -> None:
    mel = A.wav2lip_mel(speech)
    T = len(speech) * A.FPS // A.SAMPLE_RATE
    stacked = A.mel_windows(mel, range(T))[:, None]  # (T, 1, 80, 16)
    lazy = A.MelWindows(mel, T)
    assert len(lazy) == T and lazy.shape == stacked.shape
    np.testing.assert_array_equal(lazy[:], stacked)
    np.testing.assert_array_equal(lazy[3:11], stacked[3:11])
    np.testing.assert_array_equal(lazy[T - 2:T + 5], stacked[T - 2:])  # slices past the end stop at T, as arrays do
    idx = np.array([0, 0, 5, T - 1])
    np.testing.assert_array_equal(lazy[idx], stacked[idx])
    np.testing.assert_array_equal(lazy[-1], stacked[-1])
    np.testing.assert_array_equal(np.asarray(lazy), stacked)
    with pytest.raises(ValueError, match="frames"):
        A.MelWindows(mel, 0)
