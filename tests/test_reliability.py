"""Reliability of preprocessing on inputs it has never seen (issue 17): unwritable output folders, damaged caches and
clips, an empty raw folder, silent and sideways videos, non-ASCII names. Every file here is real: ffmpeg-made media,
truncated or corrupted zips and mp4s, a folder path below a regular file (which even root cannot create)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import CommonConfig
from pipeline.geometry import DEG_PER_RAD
from pipeline.io import NotWritable, load_npz
from pipeline.preprocess import NoUsableClips, PreprocessConfig, run_preprocess
from tests import mediagen

COMMON = CommonConfig(seed=0, fps=25, sample_rate=16000, image_size=128)
CFG = PreprocessConfig(workers=1)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _unwritable(tmp_path: Path, name: str) -> Path:
    """A folder that cannot be created by anyone, root included: its parent is a regular file."""
    blocker = tmp_path / f"{name}_is_a_file"
    blocker.write_text("not a folder\n")
    return blocker / name


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A raw folder with one talking-head clip, and its preprocessed output (the reference a repaired run must equal)."""
    raw = tmp_path_factory.mktemp("raw")
    mediagen.write_video(raw / "s0" / "c.mp4", mediagen.face_frames(40))
    ref = raw.parent / (raw.name + "_ref")
    run_preprocess(raw, ref, CFG, COMMON, progress=False)
    return raw, ref


# ----------------------------------------------------------------------------------------------------------------
# 1. Output folders that cannot be written: one message naming the folder, before any decoding
# ----------------------------------------------------------------------------------------------------------------
def test_unwritable_output_folders_fail_before_any_work(one_clip: tuple[Path, Path], tmp_path: Path) -> None:
    from pipeline.preprocess_report import preprocess_and_report
    from stages import preprocess as preprocess_stage
    from stages import synth as synth_stage
    from stages import synth_check as synth_check_stage
    from stages import train_syncnet as syncnet_stage

    raw, _ = one_clip
    blocked_out, blocked_rep = _unwritable(tmp_path, "out"), _unwritable(tmp_path, "reports")
    with pytest.raises(NotWritable, match=f"output folder {re.escape(str(blocked_out))} is not writable"):
        run_preprocess(raw, blocked_out, CFG, COMMON, progress=False)
    out = tmp_path / "out"
    with pytest.raises(NotWritable, match=f"output folder {re.escape(str(blocked_rep))} is not writable"):
        preprocess_and_report(raw, out, blocked_rep, CFG, COMMON, progress=False)
    assert not [p for p in out.rglob("*") if p.is_file()]  # no clip decoded, nothing written
    # The stages say it in one line (no traceback), before hashing inputs or loading data.
    with pytest.raises(SystemExit, match=f"^preprocess: output folder {re.escape(str(blocked_rep))} is not writable"):
        preprocess_stage.main(["--raw", str(raw), "--out", str(out), "--reports", str(blocked_rep), "--no-track"])
    with pytest.raises(SystemExit, match=f"^train_syncnet: output folder {re.escape(str(blocked_out))} is not writable"):
        syncnet_stage.main(["--processed", str(tmp_path / "none"), "--out", str(blocked_out), "--reports",
                            str(tmp_path / "rep"), "--no-track"])
    with pytest.raises(SystemExit, match=f"^synth: output folder {re.escape(str(blocked_out))} is not writable"):
        synth_stage.main(["--out", str(blocked_out), "--metrics", str(tmp_path / "m.json"), "--no-track"])
    with pytest.raises(SystemExit, match=f"^synth_check: output folder {re.escape(str(blocked_rep))} is not writable"):
        synth_check_stage.main(["--raw", str(raw), "--processed", str(tmp_path / "none"), "--reports",
                                str(blocked_rep), "--no-track"])


# ----------------------------------------------------------------------------------------------------------------
# 2-3. Damaged cache entries and cropped clips: reported by name, discarded, recomputed; the result equals a clean run
# ----------------------------------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target, damage", [("cache/s0/c.npz", _truncate), ("cache/s0/c.npz", _flip_middle),
                                            ("clips/s0/c.mp4", _truncate)],
                         ids=["cache_truncated", "cache_bytes_changed", "clip_truncated"])
def test_damaged_cache_or_clip_is_discarded_and_recomputed(one_clip: tuple[Path, Path], tmp_path: Path, target: str,
                                                           damage, caplog: pytest.LogCaptureFixture) -> None:
    raw, ref = one_clip
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    damage(out / target)
    with caplog.at_level(logging.WARNING, logger="pipeline.preprocess"):
        summary = run_preprocess(raw, out, CFG, COMMON, progress=False)
    assert (summary.processed, summary.cached, summary.clips_out) == (1, 0, 1)
    warning = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert warning.startswith("cache entry of s0/c.mp4 is damaged (")
    assert _tree_digest(out) == _tree_digest(ref)


# ----------------------------------------------------------------------------------------------------------------
# 4. No usable clip: no manifest (neither an empty one nor an earlier run's)
# ----------------------------------------------------------------------------------------------------------------
def test_no_manifest_when_no_clip_is_usable(one_clip: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableClips, match="0 video"):
        run_preprocess(tmp_path / "empty", tmp_path / "out", CFG, COMMON, progress=False)
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    _, ref = one_clip
    shutil.copytree(ref, tmp_path / "earlier")  # an earlier run's outputs; every video is gone now
    with pytest.raises(NoUsableClips):
        run_preprocess(tmp_path / "empty", tmp_path / "earlier", CFG, COMMON, progress=False)
    assert not (tmp_path / "earlier" / "manifest.parquet").exists()
    assert not [p for p in (tmp_path / "earlier").rglob("*.npz")]


# ----------------------------------------------------------------------------------------------------------------
# 5. Silent audio and sideways video
# ----------------------------------------------------------------------------------------------------------------
def test_silent_clip_is_rejected_with_its_level_or_kept_on_request(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    raw = tmp_path / "raw"
    mediagen.write_video(raw / "quiet" / "c.mp4", mediagen.face_frames(40), silent=True)
    with pytest.raises(NoUsableClips, match=r"\{'silent_audio': 1\}"):
        run_preprocess(raw, tmp_path / "out", CFG, COMMON, progress=False)
    rej = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert rej.reason.tolist() == ["silent_audio"]
    assert rej.message[0] == ("quiet/c.mp4: the audio is silent: RMS level -inf dBFS over the clip < "
                              "silence_threshold_db -60")
    keep = dataclasses.replace(CFG, silent_audio="keep")
    with caplog.at_level(logging.WARNING, logger="pipeline.preprocess"):
        summary = run_preprocess(raw, tmp_path / "kept", keep, COMMON, progress=False)
    assert summary.clips_out == 1
    assert "quiet/c.mp4: the audio is silent: RMS level -inf dBFS" in caplog.text and "kept" in caplog.text
    assert pd.isna(pd.read_parquet(tmp_path / "kept" / "manifest.parquet").audio_level_db[0])


def test_sideways_portrait_video_is_turned_upright_or_rejected(tmp_path: Path) -> None:
    """A video stored turned 90° clockwise without rotation metadata: the face's roll is ~+90°. It is turned upright
    before cropping (its crop then shows an upright head: roll ~0), or rejected as `sideways` on request."""
    raw = tmp_path / "raw"
    frames = np.ascontiguousarray(np.rot90(mediagen.face_frames(40), k=-1, axes=(1, 2)))  # (T, W, H, 3) clockwise
    mediagen.write_video(raw / "phone" / "c.mp4", frames)
    summary = run_preprocess(raw, tmp_path / "out", CFG, COMMON, progress=False)
    assert summary.clips_out == 1
    row = pd.read_parquet(tmp_path / "out" / "manifest.parquet").iloc[0]
    assert row.upright_turn_deg == 90
    roll = load_npz(tmp_path / "out" / row.features_path)["coeffs"][:, 66] * DEG_PER_RAD  # (T,) degrees
    assert abs(float(np.median(roll))) < 15
    with pytest.raises(NoUsableClips, match=r"\{'sideways': 1\}"):
        run_preprocess(raw, tmp_path / "rejected", dataclasses.replace(CFG, sideways="reject"), COMMON, progress=False)
    message = pd.read_csv(tmp_path / "rejected" / "rejected.csv").message[0]
    assert re.match(r"phone/c\.mp4: the face is turned \+(8\d|9\d)° \(median roll\): the video is stored sideways",
                    message), message


# ----------------------------------------------------------------------------------------------------------------
# 6. Non-ASCII clip names on the contact sheet
# ----------------------------------------------------------------------------------------------------------------
def test_contact_sheet_renders_non_ascii_names() -> None:
    """Distinct characters must render distinctly: OpenCV's Hershey fonts print every non-ASCII character as '?'
    and a font without the glyphs prints the same empty box for all of them."""
    from pipeline.viz import contact_sheet

    tile = [np.zeros((64, 64, 3), np.uint8)]
    sheet = {name: contact_sheet(tile, [name]) for name in ("clip_é_日本", "clip_?_??", "clip_e_本日", "clip_é_本日",
                                                               "Дмитрий", "Дмитрии")}
    assert not np.array_equal(sheet["clip_é_日本"], sheet["clip_?_??"])
    assert not np.array_equal(sheet["clip_é_日本"], sheet["clip_é_本日"])  # 日 and 本 drawn as themselves
    assert not np.array_equal(sheet["clip_é_本日"], sheet["clip_e_本日"])  # é is not e
    assert not np.array_equal(sheet["Дмитрий"], sheet["Дмитрии"])
    caption = sheet["clip_é_日本"][64:]  # (16, 64, 3) the caption strip
    assert caption.min() < 100  # dark text on white


# ----------------------------------------------------------------------------------------------------------------
# kill -9 at random points: the rerun's outputs equal an uninterrupted run's
# ----------------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **sections: dict) -> Path:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, over in sections.items():
        params[name].update(over)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 180) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds (polled every 2 ms); fails if it ends first."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_preprocess_killed_at_random_points_resumes_to_a_clean_run(tmp_path: Path) -> None:
    """SIGKILL at seeded random points (while a clip is encoded, after a cache entry is written) then a rerun: the
    output folder equals an uninterrupted run's, byte for byte, with no temporary file left."""
    import subprocess

    raw = tmp_path / "raw"
    n_clips = 4
    for i in range(n_clips):
        mediagen.write_video(raw / f"s{i}" / "c.mp4", mediagen.face_frames(40 + 5 * i, amplitude=4.0 + i))
    pfile = _params(tmp_path, common={"image_size": 128}, preprocess={"workers": 1})

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "stages.preprocess", "--raw", str(raw), "--out", str(out), "--params",
                str(pfile), "--reports", str(tmp_path / f"rep_{out.name}"), "--no-track"]

    clean = tmp_path / "clean"
    subprocess.run(cmd(clean), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    rng = np.random.default_rng(17)
    # Kill points drawn at random among real moments of the run: while the k-th clip is being encoded (its temporary
    # mp4 exists), or right after the k-th cache entry was written (k before the last clip); two kills into the same
    # folder, the second resuming the first.
    for _ in range(2):
        before = len(list((out / "cache").rglob("*.npz"))) if (out / "cache").is_dir() else 0
        k, encoding = int(rng.integers(1, n_clips - before)), bool(rng.integers(0, 2))

        def ready(k: int = k, encoding: bool = encoding, before: int = before) -> bool:
            done = len(list((out / "cache").rglob("*.npz"))) - before if (out / "cache").is_dir() else 0
            if encoding:
                return done == k - 1 and bool(list((out / "clips").rglob(".tmp*.mp4")))
            return done >= k

        _kill_when(cmd(out), ready)
        assert not (out / "manifest.parquet").exists()
    subprocess.run(cmd(out), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _tree_digest(out) == _tree_digest(clean)
    assert not list(out.rglob(".tmp*"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_training_stage_killed_resumes_to_the_same_model(processed_corpus: Path, tmp_path: Path) -> None:
    """`train_syncnet` killed with SIGKILL right after a seeded random one of its first checkpoints, then rerun: the
    model and the report equal an uninterrupted run's."""
    import json
    import subprocess

    import torch

    tiny = {"model": {"image_size": 64, "face_region": "lower", "audio_channels": [8, 8, 8, 8, 8, 16],
                      "lip_channels": [8, 8, 8, 8, 8, 16], "fc_hidden": 16, "embed_dim": 16},
            "steps": 80, "batch_size": 8, "eval_max_shift": 2, "vshift": 6, "log_every": 5, "eval_every": 0,
            "checkpoint_every": 10}
    pfile = _params(tmp_path, train_syncnet=tiny)

    def cmd(name: str) -> list[str]:
        return [sys.executable, "-m", "stages.train_syncnet", "--processed", str(processed_corpus), "--out",
                str(tmp_path / name), "--reports", str(tmp_path / f"rep_{name}"), "--params", str(pfile),
                "--no-track", "--no-progress"]

    subprocess.run(cmd("clean"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    k = int(np.random.default_rng(17).integers(1, 4))  # killed right after the k-th checkpoint is written
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    seen: set[tuple[int, int]] = set()

    def ready() -> bool:
        try:
            st = ckpt.stat()  # each checkpoint is a new file renamed into place (inodes may be reused: + mtime)
        except FileNotFoundError:
            return False
        seen.add((st.st_ino, st.st_mtime_ns))
        return len(seen) >= k

    _kill_when(cmd("killed"), ready)
    killed_at = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"]
    assert 10 <= killed_at < 80  # killed mid-training: the rerun resumes
    subprocess.run(cmd("killed"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = torch.load(tmp_path / "clean" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 80 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (json.loads((tmp_path / "rep_clean" / "metrics.json").read_text())
            == json.loads((tmp_path / "rep_killed" / "metrics.json").read_text()))
    assert not list((tmp_path / "killed").rglob(".tmp*"))
