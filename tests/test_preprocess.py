"""Preprocessing stage: bad inputs, resampling, incremental and interrupted reruns, outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import CommonConfig
from pipeline.io import load_npz
from pipeline.preprocess import PreprocessConfig, SplitConfig, assign_splits, discover, run_preprocess
from tests import mediagen

ROOT = Path(__file__).resolve().parents[1]
COMMON = CommonConfig(seed=0, fps=25, sample_rate=16000, image_size=128)
CFG = PreprocessConfig(workers=1, min_duration_s=1.2)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_assign_splits_disjoint_and_seeded() -> None:
    spk = [f"s{i}" for i in range(8)]
    a = assign_splits(spk, SplitConfig(), seed=0)
    assert a == assign_splits(list(reversed(spk)), SplitConfig(), seed=0)
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 1, "test": 1}
    assert set(assign_splits(["a", "b"], SplitConfig(), 0).values()) == {"train"}
    three = assign_splits(["a", "b", "c"], SplitConfig(), 0)
    assert sorted(three.values()) == ["test", "train", "val"]


def test_speaker_regex_for_flat_layouts(tmp_path: Path) -> None:
    """HDTF-style flat files: the regex groups one person's videos into one speaker; a non-match is rejected."""
    for name in ["WDA_BarackObama_000.mp4", "WDA_BarackObama_001.mp4", "RD_Radio1_000.mp4", "other.mp4"]:
        (tmp_path / name).write_bytes(b"x")
    jobs, rejected = discover(tmp_path, speaker_regex=r"^(?:.*/)?[A-Z]+_(.+)_\d+$")
    assert [(j.clip_id, j.speaker) for j in jobs] == [("RD_Radio1_000", "Radio1"),
                                                      ("WDA_BarackObama_000", "BarackObama"),
                                                      ("WDA_BarackObama_001", "BarackObama")]
    assert [(r.clip_id, r.reason) for r in rejected] == [("other", "speaker_unknown")]


def test_no_usable_clip_fails_the_stage(tmp_path: Path) -> None:
    from pipeline.preprocess import NoUsableClips

    mediagen.write_testsrc(tmp_path / "raw" / "s0" / "a.mp4")
    with pytest.raises(NoUsableClips, match=r"1 video\(s\) found, all rejected \{'no_face': 1\}"):
        run_preprocess(tmp_path / "raw", tmp_path / "out", CFG, COMMON, progress=False)
    assert "no_face" in (tmp_path / "out" / "rejected.csv").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableClips, match="0 video"):
        run_preprocess(tmp_path / "empty", tmp_path / "out2", CFG, COMMON, progress=False)


def test_discover_ids_speakers_and_duplicates(tmp_path: Path) -> None:
    for rel in ["id1/v1/c1.mp4", "id1/v1/c1.mkv", "id2/x.webm", "top.mov", "id2/notes.txt", "id2/.hidden.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    jobs, dup = discover(tmp_path)
    assert [(j.clip_id, j.speaker) for j in jobs] == [("id1/v1/c1", "id1"), ("id2/x", "id2"), ("top", "top")]
    assert [d.reason for d in dup] == ["duplicate_id"]


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One corpus mixing good and bad inputs, preprocessed with 2 worker processes."""
    raw = tmp_path_factory.mktemp("raw")
    out = raw.parent / (raw.name + "_out")
    good = mediagen.write_video(raw / "good" / "a.mp4", mediagen.face_frames(50))
    mediagen.truncate(good, raw / "truncated" / "a.mp4", 0.4)
    mediagen.write_audio_only(raw / "audio_only" / "a.mp4")
    mediagen.write_video(raw / "silent" / "a.mp4", mediagen.face_frames(50), audio=False)
    mediagen.write_testsrc(raw / "noface" / "a.mp4")
    mediagen.write_video(raw / "twofaces" / "a.mp4", mediagen.face_frames(50, two_faces=True))
    mediagen.write_video(raw / "oneframe" / "a.mp4", mediagen.face_frames(1))
    mediagen.write_video(raw / "stereo8k" / "a.mkv", mediagen.face_frames(50), sample_rate=8000, channels=2)
    mediagen.write_video(raw / "fps60" / "a.mp4", mediagen.face_frames(120), fps=60)
    mediagen.write_video(raw / "unicode" / "clip_é_日本.mp4", mediagen.face_frames(50))
    mediagen.write_video(raw / "webm" / "a.webm", mediagen.face_frames(50, size=192))
    (raw / "notvideo").mkdir()
    (raw / "notvideo" / "a.mp4").write_text("this is not a video\n")
    cfg = PreprocessConfig(workers=2, min_duration_s=1.2)
    summary = run_preprocess(raw, out, cfg, COMMON, progress=False)
    return raw, out, summary.metrics()


def test_bad_inputs_rejected_with_reasons(bad_input_run: tuple[Path, Path, dict]) -> None:
    raw, out, metrics = bad_input_run
    rej = pd.read_csv(out / "rejected.csv")
    reasons = dict(zip(rej.clip_id, rej.reason))
    assert reasons.pop("truncated/a") in ("corrupt", "decode_error")
    assert reasons.pop("notvideo/a") in ("unreadable", "corrupt")
    assert reasons == {"audio_only/a": "no_video_stream", "silent/a": "no_audio_stream", "noface/a": "no_face",
                       "twofaces/a": "multiple_faces", "oneframe/a": "too_short"}
    for msg in rej.message:  # messages name the file and say why
        assert "a.mp4" in msg and len(msg) > 12
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest.clip_id) == ["fps60/a", "good/a", "stereo8k/a", "unicode/clip_é_日本", "webm/a"]
    assert metrics["clips_in"] == 12 and metrics["clips_out"] == 5 and metrics["rejected_total"] == 7


def test_outputs_resampled_and_consistent(bad_input_run: tuple[Path, Path, dict]) -> None:
    from pipeline import media

    raw, out, _ = bad_input_run
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("clip_id")
    fps60 = manifest.loc["fps60/a"]
    assert fps60.source_fps == pytest.approx(60, abs=0.1)
    assert abs(int(fps60.frames) - 50) <= 1  # 120 frames at 60 fps = 2 s = 50 frames at 25 fps
    st = manifest.loc["stereo8k/a"]
    assert (st.source_sample_rate, st.source_channels) == (8000, 2)
    for cid, row in manifest.iterrows():
        f = load_npz(out / row.features_path)
        t = int(row.frames)
        assert f["coeffs"].shape == (t, 73) and np.isfinite(f["coeffs"]).all()
        assert f["landmarks"].shape == (t, 68, 3)
        assert f["wav"].shape[0] == t * 640  # 16 kHz audio cut/padded to the frames
        assert f["mel"].shape == (1 + t * 640 // 200, 80)
        assert f["mfcc"].shape[1] == 13 and f["fbank"].shape[1] == 26
        assert (f["landmarks"][..., :2] >= -5).all() and (f["landmarks"][..., :2] <= 133).all()
        clip = media.read_video(out / row.clip_path)
        assert clip.frames.shape[1:] == (128, 128, 3) and abs(len(clip) - t) <= 1
        assert 0.9 <= row.face_fraction <= 1.0 and row.split in ("train", "val", "test")
    assert set(manifest.groupby("speaker").split.nunique()) == {1}
    import decord  # the crops have one keyframe a second (keyframe_interval_s 1.0): cheap random seeks

    vr = decord.VideoReader(str(out / manifest.loc["good/a"].clip_path))
    assert len(vr) == int(manifest.loc["good/a"].frames)
    assert np.diff(np.r_[vr.get_key_indices(), len(vr)]).max() <= 25
    basis = load_npz(out / "expression_basis.npz")
    assert any(v.shape[0] == 64 for v in basis.values() if v.ndim == 2)


def test_write_reports_on_a_preprocessed_corpus(bad_input_run: tuple[Path, Path, dict], tmp_path: Path) -> None:
    import json

    from pipeline import media
    from pipeline.preprocess_report import write_reports

    _, out, metrics = bad_input_run
    rep = tmp_path / "rep"
    write_reports(out, rep, metrics)
    assert json.loads((rep / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (rep / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = pd.read_parquet(out / "manifest.parquet")
    sample = manifest[manifest.split == "test"].iloc[0] if (manifest.split == "test").any() else manifest.iloc[0]
    video = media.read_video(rep / "sample_landmarks.mp4")
    assert abs(len(video) - int(sample.frames)) <= 1 and video.frames.shape[1:] == (128, 128, 3)
    assert (rep / "sample_landmarks.gif").read_bytes()[:4] == b"GIF8"
    write_reports(tmp_path / "no_outputs", tmp_path / "rep2", {"clips_out": 0})  # no manifest: metrics only
    assert sorted(p.name for p in (tmp_path / "rep2").iterdir()) == ["metrics.json"]


def test_preprocess_and_report_fails_before_writing_reports(tmp_path: Path) -> None:
    from pipeline.preprocess import NoUsableClips
    from pipeline.preprocess_report import preprocess_and_report

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableClips):
        preprocess_and_report(tmp_path / "empty", tmp_path / "out", tmp_path / "rep", CFG, COMMON, progress=False)
    assert not (tmp_path / "rep").exists()


def _make_corpus(raw: Path, speakers: list[str]) -> None:
    for i, spk in enumerate(speakers):
        frames = mediagen.face_frames(40 + 5 * i, amplitude=4.0 + i)
        mediagen.write_video(raw / spk / "c.mp4", frames)


@pytest.mark.slow
def test_incremental_rerun_equals_clean_run(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _make_corpus(raw, ["s0", "s1", "s2"])
    inc = tmp_path / "inc"
    first = run_preprocess(raw, inc, CFG, COMMON, progress=False)
    assert first.processed == 3
    _make_corpus(raw, ["s0", "s1", "s2", "s3"])  # rewrites identical files for s0..s2, adds s3
    (raw / "s1" / "c.mp4").unlink()
    mediagen.write_video(raw / "s1" / "c.mp4", mediagen.face_frames(44, amplitude=2.0))  # changed content
    second = run_preprocess(raw, inc, CFG, COMMON, progress=False)
    assert (second.processed, second.cached) == (2, 2)
    shutil.rmtree(raw / "s2")  # a removed video disappears from the outputs
    third = run_preprocess(raw, inc, CFG, COMMON, progress=False)
    assert (third.processed, third.cached) == (0, 3)
    strict = dataclasses.replace(CFG, min_duration_s=1.7)  # s0 (40 frames = 1.6 s) is now too short
    fourth = run_preprocess(raw, inc, strict, COMMON, progress=False)
    assert fourth.rejected == {"too_short": 1} and fourth.clips_out == 2
    fifth = run_preprocess(raw, inc, CFG, COMMON, progress=False)  # back: s0 accepted again
    assert fifth.clips_out == 3 and fifth.rejected == {}
    clean = tmp_path / "clean"
    run_preprocess(raw, clean, CFG, COMMON, progress=False)
    assert _tree_digest(inc) == _tree_digest(clean)


@pytest.mark.slow
def test_killed_run_resumes_without_corrupt_outputs(tmp_path: Path) -> None:
    """SIGKILL in the middle of the stage, then rerun: the result equals an uninterrupted run."""
    raw = tmp_path / "raw"
    _make_corpus(raw, ["s0", "s1", "s2", "s3"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["common"]["image_size"] = 128
    params["preprocess"]["workers"] = 1
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stages.preprocess", "--raw", str(raw), "--out", str(out), "--params", str(pfile),
           "--reports", str(tmp_path / "rep"), "--no-track"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "cache").glob("*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next clip
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # finished already: the rerun below must still agree with a clean run
        pass
    proc.wait()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clean = tmp_path / "clean"
    subprocess.run([*cmd[:6], str(clean), *cmd[7:]], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _tree_digest(out) == _tree_digest(clean)
    assert not [p for p in out.rglob(".tmp*")]


def test_streamed_long_clip_equals_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip too big for `max_memory_mb` is decoded in chunks, twice; the outputs are the same."""
    import pipeline.preprocess as pp

    raw = tmp_path / "raw"
    _make_corpus(raw, ["s0"])
    run_preprocess(raw, tmp_path / "mem", CFG, COMMON, progress=False)
    monkeypatch.setattr(pp, "STREAM_CHUNK_FRAMES", 16)  # 40 frames -> 3 chunks
    streamed = PreprocessConfig(workers=1, max_memory_mb=0)
    run_preprocess(raw, tmp_path / "stream", streamed, COMMON, progress=False)
    a, b = load_npz(tmp_path / "mem/features/s0/c.npz"), load_npz(tmp_path / "stream/features/s0/c.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "mem/clips/s0/c.mp4").read_bytes() == (tmp_path / "stream/clips/s0/c.mp4").read_bytes()


@pytest.mark.timeout(60)
def test_missing_face_alignment_weights_fail_fast(tmp_path: Path) -> None:
    """The face_alignment backend without its weights stops the stage at once, naming the files and folder."""
    raw = tmp_path / "raw"
    _make_corpus(raw, ["s0"])
    weights = tmp_path / "no_weights"
    weights.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["preprocess"].update(backend="face_alignment", face_alignment_weights=str(weights), workers=2)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    res = subprocess.run([sys.executable, "-m", "stages.preprocess", "--raw", str(raw), "--out", str(tmp_path / "o"),
                          "--params", str(pfile), "--no-track"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("preprocess: face_alignment weights missing in " + str(weights))
    assert "s3fd-619a316812.pth" in last and "2DFAN4-11f355bf06.pth.tar" in last


def test_missing_raw_folder_is_a_message(tmp_path: Path) -> None:
    from stages import preprocess as stage

    with pytest.raises(SystemExit, match="raw video folder not found"):
        stage.main(["--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-track"])


def _noop_init() -> None:
    pass


def _square_or_die(x: int) -> int:
    if x == 3:
        os._exit(1)  # a native crash in a worker
    return x * x


@pytest.mark.timeout(120)
def test_worker_crash_is_isolated_and_recorded() -> None:
    """A worker dying on one item does not hang or stop the run: the others finish, the culprit is named."""
    from pipeline.preprocess import run_in_pool

    results: list[int] = []
    run_in_pool(list(range(6)), 2, _noop_init, (), _square_or_die, results.append, lambda item: -item)
    assert sorted(results) == [-3, 0, 1, 4, 16, 25]


def test_speed_switches_validated_and_old_settings_keep_the_cache_fingerprint() -> None:
    """Issue 16 item 4's switches: validated by name; at their earlier behaviour they leave the pass-1
    fingerprint as it was (existing caches stay valid), and any other value changes it."""
    for bad in (dict(encoder_preset="fastest"), dict(keyframe_interval_s=0.0), dict(landmark_mode="sometimes"),
                dict(detect_interval=0), dict(mouth_roi_quality=0), dict(mouth_roi_quality=101)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(CFG, **bad).validate()
    old = dataclasses.replace(CFG, encoder_preset="medium", keyframe_interval_s=None, landmark_mode="per_frame",
                              mouth_roi_quality=None)
    fp = old.pass1_fingerprint(COMMON)
    assert not {"encoder_preset", "keyframe_interval_s", "landmark_mode", "detect_interval",
                "mouth_roi_quality"} & set(fp)
    assert dataclasses.replace(old, detect_interval=5).pass1_fingerprint(COMMON) == fp  # unused per frame
    for new in (dict(encoder_preset="superfast"), dict(keyframe_interval_s=1.0), dict(landmark_mode="tracking"),
                dict(mouth_roi_quality=95)):
        assert dataclasses.replace(old, **new).pass1_fingerprint(COMMON) != fp
    tracking = dataclasses.replace(old, landmark_mode="tracking")
    assert dataclasses.replace(tracking, detect_interval=5).pass1_fingerprint(COMMON) != tracking.pass1_fingerprint(COMMON)


def test_worker_context_is_forkserver_with_preload_or_spawn_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers never start by a plain fork: forkserver (preloaded) where the platform has it, spawn on request."""
    import multiprocessing as mp

    from pipeline.preprocess import worker_context

    monkeypatch.delenv("TAVCE_WORKER_START", raising=False)
    expected = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    assert worker_context().get_start_method() == expected
    monkeypatch.setenv("TAVCE_WORKER_START", "spawn")
    assert worker_context().get_start_method() == "spawn"
    results: list[int] = []  # a pool from the spawn context still runs
    from pipeline.preprocess import run_in_pool
    run_in_pool([1, 2], 2, _noop_init, (), _square_or_die, results.append, lambda item: -item)
    assert sorted(results) == [1, 4]
