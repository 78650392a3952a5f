"""Stage `evaluate` (stages/evaluate.py, pipeline/evaluate_run.py) end to end on a tiny processed corpus and tiny
models the test builds: two datasets from one params section, the three systems, the report files, and every table
header naming its extractor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import media
from pipeline.checkpoint import save_checkpoint
from pipeline.config import to_dict
from pipeline.io import save_npz
from pipeline.models.audio2coeff import Audio2Coeff
from pipeline.models.renderer.renderer import Renderer
from pipeline.models.tavc import TAVC
from stages import evaluate as stage
from tests.mediagen import astronaut
from tests.test_audio2coeff import TINY as TINY_A2C, random_basis
from tests.test_renderer_train import TINY, TINY_TAVC
from tests.test_tavce_train import TINY_MAPPING

ROOT = Path(__file__).resolve().parents[1]
SIDE = 64
TINY_64 = dataclasses.replace(TINY, image_size=SIDE, motion_source="coefficients", mapping=TINY_MAPPING)
FRAMES = 30


def _corpus(folder: Path) -> None:
    """A processed corpus of two test clips: a face crop of the astronaut moving, speech-like audio."""
    face = cv2.resize(np.ascontiguousarray(astronaut(512)[0:256, 110:366]), (256, 256))
    rows = []
    for k in range(2):
        frames = np.stack([np.roll(face, int(3 * np.sin(t / 3 + k)), axis=1) for t in range(FRAMES)])
        t = np.arange(FRAMES * 640) / 16000
        wav = (0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * (3 + k) * t)) * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
        cid = f"spk9/clip{k}"
        media.write_video(folder / "clips" / f"spk9_clip{k}.mp4", frames, audio=wav)
        save_npz(folder / "features" / f"spk9_clip{k}.npz", wav=wav, coeffs=np.zeros((FRAMES, 73), np.float32))
        rows.append({"clip_id": cid, "speaker": "spk9", "split": "test", "clip_path": f"clips/spk9_clip{k}.mp4",
                     "features_path": f"features/spk9_clip{k}.npz", "frames": FRAMES})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    for name, kind, model, cfg in (("train", "renderer", Renderer(TINY_64), TINY_64),
                                   ("audio2coeff", "audio2coeff", Audio2Coeff(TINY_A2C), TINY_A2C),
                                   ("tavc", "tavc", TAVC(TINY_TAVC), TINY_TAVC)):
        save_checkpoint(root / "models" / name / "checkpoint.pt", kind=kind, config={"model": to_dict(cfg)},
                        model=model, optimizer=None, step=1)
    _corpus(root / "data/processed")
    random_basis().save(root / "data/processed/expression_basis.npz")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ev = params["evaluate"]
    ev["datasets"] = [{"name": "first", "processed": str(root / "data/processed")},
                      {"name": "second", "processed": str(root / "data/processed")}]
    ev.update(max_clips=2, max_frames=20)
    ev["metrics"]["frame_stride"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage.main(["--models", str(root / "models"), "--out", str(root / "reports"), "--params",
                       str(root / "params.yaml"), "--no-progress", "--no-track"]) == 0
    return root


@pytest.mark.slow
def test_stage_writes_the_table_for_every_dataset(run: Path) -> None:
    reports = run / "reports"
    for name in ("metrics.json", "table.md", "clips.csv", "metrics.png", "comparison.mp4", "comparison.gif"):
        assert (reports / name).is_file(), name
    metrics = json.loads((reports / "metrics.json").read_text())
    assert set(metrics["results"]) == {"first", "second"}
    first = metrics["results"]["first"]
    assert set(first) == {"ground truth", "static source frame", "ours"}
    gt, static = first["ground truth"], first["static source frame"]
    assert gt["clips"] == 2 and static["clips"] == 2
    assert "fid" not in gt and static["fid"] >= 0  # the reference row has no FID against itself
    assert static["tavc_similarity"] == pytest.approx(0.0, abs=1e-6)  # a still frame has no visual change
    assert static["csim"] > 0.97  # the source frame itself
    assert metrics["extractors"]["csim"] == "dlib_resnet_v1" and metrics["extractors"]["tavc"] == "tavc_tavce"
    assert "lse" not in metrics["extractors"]  # no SyncNet checkpoint in this run: LSE is left out, not faked
    table = (reports / "table.md").read_text()
    assert "| first | ground truth | 2 |" in table and "| second | ours |" in table
    assert "CSIM[dlib_resnet_v1]" in table and "TAVC sim[tavc_tavce]" in table
    for system in ("ground_truth", "static", "ours"):
        assert len(list((reports / "videos/first" / system).glob("*.mp4"))) == 2
    gen = media.read_video(reports / "videos/first/ours/spk9_clip0.mp4").frames
    assert gen.shape == (20, SIDE, SIDE, 3)
