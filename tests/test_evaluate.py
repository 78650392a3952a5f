"""`tavce evaluate` / pipeline.evaluate on folders of videos the test makes: degraded copies of reference clips move
the metrics the expected way, every number is labelled with its extractor, and a bad file is reported by name while
the others are still scored. The audio-shift check needs trained sync networks: it uses the pipeline run's
``models/`` and test clips when they exist (read only), and is skipped otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import media
from pipeline.evaluate import (EvaluateError, MetricsConfig, SyncModels, column_header, evaluate_folders,
                               markdown_table, match_folders)
from pipeline.synth.face import FaceRenderer, sample_appearance
from stages import tavce as cli
from tests.mediagen import face_frames

ROOT = Path(__file__).resolve().parents[1]
SIDE = 128
T = 20


def _wav(n_frames: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n_frames * 640) / 16000
    return (0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed)) * np.sin(2 * np.pi * 150 * t)).astype(np.float32)


def _clips() -> dict[str, np.ndarray]:
    """Two reference clips: the astronaut moving sideways and a synthetic face turning its head."""
    astro = np.stack([cv2.resize(f, (SIDE, SIDE), interpolation=cv2.INTER_AREA) for f in face_frames(T)])
    r = FaceRenderer(sample_appearance(np.random.default_rng(3), (SIDE, SIDE)))
    synth = np.stack([r.render(0.15 * np.sin(t / 4), 0.0, 0.0)[0] for t in range(T)])
    return {"astronaut": astro, "synthetic": synth}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, frames in _clips().items():
        wav = _wav(T)
        media.write_video(root / "ref" / f"{name}.mp4", frames, audio=wav)
        media.write_video(root / "copy" / f"{name}.mp4", frames, audio=wav)
        blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in frames])
        media.write_video(root / "blur" / f"{name}.mp4", blurred, audio=wav)
    # bad files beside good ones
    (root / "blur" / "corrupt.mp4").write_bytes(b"not a video at all")
    media.write_video(root / "blur" / "noface.mp4", np.full((T, SIDE, SIDE, 3), 90, np.uint8), audio=_wav(T))
    media.write_video(root / "blur" / "orphan.mp4", _clips()["astronaut"], audio=_wav(T))
    for stem in ("corrupt", "noface"):
        media.write_video(root / "ref" / f"{stem}.mp4", _clips()["astronaut"], audio=_wav(T))
    return root


def test_match_folders_pairs_by_stem_and_reports_orphans(folders: Path) -> None:
    pairs, errors = match_folders(folders / "blur", folders / "ref")
    assert sorted(p.name for p in pairs) == ["astronaut", "corrupt", "noface", "synthetic"]
    assert [Path(e["file"]).name for e in errors] == ["orphan.mp4"] and "no reference video" in errors[0]["reason"]
    with pytest.raises(EvaluateError, match="nowhere: no such generated folder"):
        match_folders(folders / "nowhere", folders / "ref")


def test_blur_raises_fid_and_lowers_csim_and_bad_files_are_named(folders: Path, tmp_path: Path) -> None:
    cfg = MetricsConfig(frame_stride=2)
    same = evaluate_folders(folders / "copy", folders / "ref", tmp_path / "copy", cfg=cfg, progress=False)
    blur = evaluate_folders(folders / "blur", folders / "ref", tmp_path / "blur", cfg=cfg, progress=False)
    s, b = same["results"]["videos"]["generated"], blur["results"]["videos"]["generated"]
    assert s["clips"] == 2 and b["clips"] == 2  # the two good files are scored despite the three bad ones
    assert b["fid"] > s["fid"] + 0.02 and b["kid"] > s["kid"]
    assert b["csim"] < s["csim"] - 0.005
    assert s["lmd_mouth"] < 0.5 < b["lmd_mouth"]  # an unchanged copy: landmarks identical up to re-encoding
    reasons = {Path(e["file"]).name: e["reason"] for e in blur["errors"]}
    assert set(reasons) == {"corrupt.mp4", "noface.mp4", "orphan.mp4"}
    assert "corrupt.mp4: cannot read it as a video" in reasons["corrupt.mp4"]
    assert "noface.mp4: no face found" in reasons["noface.mp4"]
    assert blur["extractors"]["fid"] == "dlib_resnet_v1" and blur["extractors"]["csim"] == "dlib_resnet_v1"
    table = (tmp_path / "blur" / "table.md").read_text()
    assert "FID[dlib_resnet_v1]" in table and "CSIM[dlib_resnet_v1]" in table and "LMD mouth[dlib_68_ibug]" in table
    assert "| FID ↓" not in table  # never unqualified without pytorch-fid's Inception
    assert (tmp_path / "blur" / "clips.csv").read_text().count("\n") == 3
    assert (tmp_path / "blur" / "errors.csv").is_file() and (tmp_path / "blur" / "metrics.png").stat().st_size > 1000


def test_no_audio_is_an_error_naming_the_file_when_a_sync_metric_needs_it(folders: Path, tmp_path: Path) -> None:
    import torch

    from pipeline.checkpoint import save_checkpoint
    from pipeline.config import to_dict
    from pipeline.models.tavc import TAVC
    from tests.test_renderer_train import TINY_TAVC

    gen = tmp_path / "gen"
    media.write_video(gen / "astronaut.mp4", _clips()["astronaut"])  # no audio stream
    media.write_video(gen / "synthetic.mp4", _clips()["synthetic"], audio=_wav(T))
    cfg = MetricsConfig(frame_stride=4)
    plain = evaluate_folders(gen, folders / "ref", tmp_path / "plain", cfg=cfg, progress=False)
    assert plain["results"]["videos"]["generated"]["clips"] == 2  # FID/CSIM/LMD do not need the audio
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tavc.pt", kind="tavc", config={"model": to_dict(TINY_TAVC)}, model=TAVC(TINY_TAVC),
                    optimizer=None, step=1)
    out = evaluate_folders(gen, folders / "ref", tmp_path / "out", cfg=cfg, progress=False,
                           models=SyncModels(tavc=str(tmp_path / "tavc.pt")))
    assert out["results"]["videos"]["generated"]["clips"] == 1 and out["extractors"]["tavc"] == "tavc_tavce"
    assert 0 <= out["results"]["videos"]["generated"]["tavc_similarity"] <= 1
    (err,) = out["errors"]
    assert err["file"].endswith("astronaut.mp4") and "astronaut.mp4: no usable audio" in err["reason"]


def test_table_headers_name_the_extractor() -> None:
    names = {"fid": "inception_v3_fid", "csim": "arcface", "lse": "syncnet_v2"}
    assert column_header("fid", names) == "FID ↓"
    assert column_header("csim", names) == "CSIM[arcface] ↑"
    assert column_header("lse_c", names) == "LSE-C[syncnet_v2] ↑"
    table = markdown_table({"hdtf": {"ours": {"clips": 2, "fid": 7.7, "lse_c": 7.4}}}, names)
    assert "| hdtf | ours | 2 | 7.700 | 7.400 |" in table


def test_cli_scores_a_folder_and_exits_1_when_some_files_fail(folders: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["evaluate", "--generated", str(folders / "blur"), "--reference", str(folders / "ref"), "--out",
                   str(tmp_path / "cli"), "--models", str(tmp_path / "no_models"), "--frame-stride", "4", "--quiet",
                   "--name", "blurred"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "| videos | blurred | 2 |" in out and "corrupt.mp4: not scored" in err
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["results"]["videos"]["blurred"]["clips"] == 2
    assert cli.main(["evaluate", "--generated", str(tmp_path / "none"), "--reference", str(folders / "ref"),
                     "--out", str(tmp_path / "x")]) == 2
    assert "no such generated folder" in capsys.readouterr().err


_HAVE_RUN = all((ROOT / p).is_file() for p in ("models/syncnet/checkpoint.pt", "models/syncers/checkpoint.pt",
                                               "models/tavc/checkpoint.pt", "data/processed/manifest.parquet"))


@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_RUN, reason="needs a pipeline run's models/ and data/processed (dvc repro)")
def test_audio_shift_raises_the_av_offset_with_the_trained_sync_networks(tmp_path: Path) -> None:
    """Test-speaker clips of the pipeline run (read only): their audio delayed by 6 frames raises SyncNet's |AV off|
    and the rigid syncers' |AV-Off|; the ground truth passes the SyncNet domain check."""
    from pipeline.data.corpus import load_clips

    clips = load_clips(ROOT / "data/processed", ["test"])[:2]
    for c in clips:
        v = media.read_video(c.video).frames[:75]
        a = media.read_audio(c.video)[:75 * 640]
        small = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in v])
        stem = c.clip_id.replace("/", "_")
        media.write_video(tmp_path / "ref" / f"{stem}.mp4", small, audio=a)
        media.write_video(tmp_path / "shift" / f"{stem}.mp4", small,
                          audio=np.concatenate([np.zeros(6 * 640, np.float32), a])[:len(a)])
    models = SyncModels(*(str(ROOT / f"models/{n}/checkpoint.pt") for n in ("syncnet", "syncers", "tavc")))
    cfg = MetricsConfig(frame_stride=5)
    ref = evaluate_folders(tmp_path / "ref", tmp_path / "ref", tmp_path / "o1", cfg=cfg, models=models,
                           progress=False)
    shift = evaluate_folders(tmp_path / "shift", tmp_path / "ref", tmp_path / "o2", cfg=cfg, models=models,
                             progress=False)
    r, s = ref["results"]["videos"]["generated"], shift["results"]["videos"]["generated"]
    assert s["abs_offset"] >= r["abs_offset"] + 3
    assert s["rigid_abs_offset_200ms"] > r["rigid_abs_offset_200ms"]
    assert ref["sync_domain_check"]["status"] == "in_domain"
    assert ref["extractors"]["lse"] == "syncnet_tavce"
