"""Preprocessing report (method.md §2): what a preprocessing run produced, in a form a person can check at a glance.

Given the output folder of `pipeline.preprocess.run_preprocess`, writes into a reports folder:

- `metrics.json`: the run's summary metrics (`PreprocessSummary.metrics()`);
- `contact_sheet.png`: the middle frame of up to 18 clips (one per speaker first) with their 68 landmarks;
- `sample_landmarks.mp4`: one clip (the first of the test split, else the first; at most `SAMPLE_SECONDS`) with its
  landmarks and head angles drawn, with its audio, and a small `sample_landmarks.gif` of it for MLflow.

`preprocess_and_report` runs preprocessing and writes this report in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CommonConfig
from pipeline.io import check_writable, load_npz, write_json
from pipeline.preprocess import ClipOutcome, PreprocessConfig, PreprocessSummary, run_preprocess

SAMPLE_SECONDS = 10  # length cap of the sample video


def _read_manifest(out_dir: Path) -> Any:
    """The run's manifest as a DataFrame (empty when there is none)."""
    import pandas as pd

    manifest_path = out_dir / "manifest.parquet"
    return pd.read_parquet(manifest_path) if manifest_path.is_file() else pd.DataFrame()


def write_contact_sheet(out_dir: Path, path: Path, max_clips: int = 18) -> None:
    """Middle frame of up to `max_clips` clips (one per speaker first) with their 68 landmarks drawn.

    Args:
        out_dir: output folder of `run_preprocess` (manifest.parquet, clips/, features/).
        path: the PNG to write; nothing is written when the manifest is missing or empty.
        max_clips: number of tiles.
    """
    import pandas as pd

    from pipeline import media, viz

    manifest = _read_manifest(out_dir)
    if manifest.empty:
        return
    firsts = manifest.groupby("speaker", sort=True).head(1)
    rest = manifest.drop(firsts.index)
    pick = pd.concat([firsts, rest]).head(max_clips)
    tiles, labels = [], []
    for row in pick.itertuples():
        lms = load_npz(out_dir / row.features_path)["landmarks"]  # (T, 68, 3)
        k = len(lms) // 2
        frame = media.read_frames(out_dir / row.clip_path, k, 1, fps=int(row.fps))[0]  # (H, W, 3)
        tiles.append(viz.draw_landmarks(frame, lms[k]))
        labels.append(f"{row.clip_id} [{row.split}]")
    viz.save_png(path, viz.contact_sheet(tiles, labels))


def write_sample_video(out_dir: Path, reports: Path) -> None:
    """One clip (the first of the test split, else the first; at most `SAMPLE_SECONDS`) with its 68 landmarks and
    head angles drawn, with its audio: `sample_landmarks.mp4`, and a small `sample_landmarks.gif` for MLflow.

    Args:
        out_dir: output folder of `run_preprocess`.
        reports: folder for the two files; nothing is written when the manifest is missing or empty.
    """
    import cv2

    from pipeline import media, viz
    from pipeline.geometry import DEG_PER_RAD

    manifest = _read_manifest(out_dir)
    if manifest.empty:
        return
    test = manifest[manifest.split == "test"]
    row = (test if len(test) else manifest).iloc[0]
    feats = load_npz(out_dir / row.features_path)
    frames = media.read_frames(out_dir / row.clip_path, 0, SAMPLE_SECONDS * int(row.fps),
                               fps=int(row.fps))  # (T, H, W, 3)
    n = min(len(frames), len(feats["landmarks"]))
    drawn = np.empty_like(frames[:n])  # (T, H, W, 3)
    for t in range(n):
        img = viz.draw_landmarks(frames[t], feats["landmarks"][t])
        yaw, pitch, roll = feats["coeffs"][t, 64:67] * DEG_PER_RAD
        cv2.putText(img, f"yaw {yaw:+5.1f} pitch {pitch:+5.1f} roll {roll:+5.1f}", (4, 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        drawn[t] = img
    wav = feats["wav"][: round(n * int(row.sample_rate) / int(row.fps))]  # (S,) the audio of the n frames
    media.write_video(reports / "sample_landmarks.mp4", drawn, fps=int(row.fps), audio=wav,
                      sample_rate=int(row.sample_rate))
    media.video_to_gif(reports / "sample_landmarks.mp4", reports / "sample_landmarks.gif")


def write_reports(out_dir: Path, reports: Path, metrics: dict[str, Any]) -> None:
    """Write `metrics.json`, `contact_sheet.png` and `sample_landmarks.mp4/.gif` into `reports` (created if needed).

    Args:
        out_dir: output folder of `run_preprocess`.
        reports: the report folder.
        metrics: the run's metrics (`PreprocessSummary.metrics()`), written as they are.
    """
    reports = Path(reports)
    out_dir = Path(out_dir)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", metrics)
    write_contact_sheet(out_dir, reports / "contact_sheet.png")
    write_sample_video(out_dir, reports)


def preprocess_and_report(raw_dir: Path, out_dir: Path, reports: Path, cfg: PreprocessConfig, common: CommonConfig,
                          *, weights_dir: str | None = None, progress: bool = True,
                          on_clip: Callable[[ClipOutcome], None] | None = None) -> PreprocessSummary:
    """`run_preprocess(raw_dir, out_dir, ...)`, then `write_reports(out_dir, reports, summary.metrics())`.

    Raises `pipeline.io.NotWritable` before any work when `out_dir` or `reports` cannot be written, and what
    `run_preprocess` raises (`FileNotFoundError`, `NoUsableClips`), before any report is written.
    """
    check_writable(out_dir, reports)
    summary = run_preprocess(raw_dir, out_dir, cfg, common, weights_dir=weights_dir, progress=progress,
                             on_clip=on_clip)
    write_reports(out_dir, reports, summary.metrics())
    return summary
