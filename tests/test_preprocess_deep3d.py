"""The preprocess stage with ``coeffs_backend: deep3d`` (issue 18): `python -m stages.preprocess` on a tiny clip with
test-made Deep3DFaceRecon/BFM files writes coefficients in the standard 73-d layout; without the files it stops at
once naming each file and its param; the landmark backend's fingerprint (its cache) is unchanged by the new keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import CommonConfig
from pipeline.faces import deep3d
from pipeline.io import load_npz
from pipeline.preprocess import Deep3DConfig, PreprocessConfig
from tests import mediagen
from tests.deep3d_files import random_recon_net, write_bfm_folder, write_recon_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **preprocess) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["common"]["image_size"] = 128
    params["preprocess"].update(workers=1, **preprocess)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    return pfile


def _stage(raw: Path, out: Path, pfile: Path, reports: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.preprocess", "--raw", str(raw), "--out", str(out),
                           "--params", str(pfile), "--reports", str(reports), "--no-track"],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stage_writes_deep3d_coefficients_in_the_standard_layout(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    mediagen.write_video(raw / "s0" / "c.mp4", mediagen.face_frames(36, amplitude=4.0))
    ckpt = write_recon_checkpoint(tmp_path / "ckpt" / "epoch_20.pth", random_recon_net(seed=1))
    bfm_folder = write_bfm_folder(tmp_path / "ckpt" / "BFM_Fitting")
    pfile = _params(tmp_path, coeffs_backend="deep3d",
                    deep3d={"checkpoint": str(ckpt), "bfm_folder": str(bfm_folder), "batch_size": 8})
    out = tmp_path / "out"
    res = _stage(raw, out, pfile, tmp_path / "rep")
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest.clip_id.tolist() == ["s0/c"]
    f = load_npz(out / "features/s0/c.npz")
    T = int(manifest.frames[0])
    c, full = f["coeffs"], f["deep3d"]
    assert c.shape == (T, 73) and full.shape == (T, 257)
    assert np.isfinite(c).all() and np.isfinite(full).all()
    np.testing.assert_array_equal(c[:, :70], deep3d.motion_coefficients(full))  # SadTalker's exp, angle, trans
    np.testing.assert_array_equal(c[:, :64], full[:, 80:144])
    assert (c[:, 70] > 0).all() and ((c[:, 71:73] > 0) & (c[:, 71:73] < 1)).all()  # scale, crop centre as usual
    # the estimate depends on the frame (the face moves): not a constant
    assert np.ptp(full[:, 224:227], axis=0).max() > 0
    cache = load_npz(out / "cache/s0/c.npz")
    assert cache["deep3d_align"].shape == (T, 5) and np.isfinite(cache["deep3d_landmark_error"]).all()


@pytest.mark.timeout(120)
def test_missing_deep3d_files_stop_the_stage_naming_each(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    mediagen.write_video(raw / "s0" / "c.mp4", mediagen.face_frames(36))
    pfile = _params(tmp_path, coeffs_backend="deep3d",
                    deep3d={"checkpoint": str(tmp_path / "nope.pth"), "bfm_folder": str(tmp_path / "bfm"),
                            "batch_size": 16})
    res = _stage(raw, tmp_path / "o", pfile, tmp_path / "rep")
    assert res.returncode != 0
    err = res.stderr
    assert "preprocess.deep3d.checkpoint: " + str(tmp_path / "nope.pth") in err
    assert "preprocess.deep3d.bfm_folder: " + str(tmp_path / "bfm" / "similarity_Lm3D_all.mat") in err
    assert "preprocess.deep3d.bfm_folder: " + str(tmp_path / "bfm" / "BFM_model_front.mat") in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "clips").exists()


def test_landmark_backend_fingerprint_ignores_the_deep3d_keys(tmp_path: Path) -> None:
    """Adding the backend switch must not invalidate existing landmark-3DMM caches."""
    common = CommonConfig(seed=0, fps=25, sample_rate=16000, image_size=128)
    base = PreprocessConfig()
    fp = base.pass1_fingerprint(common)
    assert "coeffs_backend" not in fp and "deep3d" not in fp
    other = PreprocessConfig(deep3d=Deep3DConfig(checkpoint="x.pth", bfm_folder="b"))
    assert other.pass1_fingerprint(common) == fp
    ckpt = tmp_path / "epoch_20.pth"
    ckpt.write_bytes(b"weights")
    write_bfm_folder(tmp_path)
    d3 = PreprocessConfig(coeffs_backend="deep3d",
                          deep3d=Deep3DConfig(checkpoint=str(ckpt), bfm_folder=str(tmp_path)))
    fp3 = d3.pass1_fingerprint(common)
    assert fp3 != fp and set(fp3["deep3d"]) == {"checkpoint", "similarity_Lm3D_all.mat", "BFM_model_front.mat"}
    ckpt.write_bytes(b"other weights")  # new weights: new fingerprint; a moved file with the same bytes: same
    assert d3.pass1_fingerprint(common) != fp3
