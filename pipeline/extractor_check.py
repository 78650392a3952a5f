"""Extractor check (method.md §2): how well preprocessing recovers the synthetic corpus' ground truth.

Compares, frame by frame, the sidecar truth written by the synth stage (`<clip>.truth.json`: mouth opening,
yaw/pitch/roll) with what preprocessing recovered from the pixels alone (mediapipe landmarks -> landmark 3DMM):
the face-found rate, Pearson correlations, and angle errors. Only this check and the tests read the sidecars.

`check_and_report(raw, processed, reports)` is the whole check: `check_corpus` over the preprocessed corpus, then
`write_report` (metrics.json and truth_vs_recovered.png).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.faces import coeffs as coeffs_mod
from pipeline.geometry import DEG_PER_RAD
from pipeline.io import load_npz, write_json


@dataclass
class ClipComparison:
    clip_id: str
    time_s: np.ndarray  # (T,)
    truth: dict[str, np.ndarray]  # name -> (T,)
    recovered: dict[str, np.ndarray]  # name -> (T,)


QUANTITIES = ("mouth_open", "yaw", "pitch", "roll")


def compare_clip(truth_path: Path, features_path: Path, clip_id: str) -> ClipComparison:
    """Truth vs recovered per-frame quantities of one clip, cut to their common length."""
    truth = json.loads(truth_path.read_text())
    feats = load_npz(features_path)
    coeffs = feats["coeffs"]  # (T, 73)
    rec = {
        "mouth_open": coeffs_mod.mouth_opening(feats["aligned"]),
        "yaw": coeffs[:, 64], "pitch": coeffs[:, 65], "roll": coeffs[:, 66],
    }
    frames = truth["frames"]
    fps = float(feats["fps"])  # rate of the recovered frames (preprocessing's common.fps)
    n_truth = len(frames["mouth_open"])
    # Recovered frame k is the raw frame on screen at k / fps (preprocessing resamples by timestamps).
    idx = np.floor(np.arange(len(coeffs)) * float(truth["fps"]) / fps + 1e-9).astype(int)  # (T,)
    n = int(np.searchsorted(idx, n_truth))  # recovered frames that have a truth frame
    idx = idx[:n]
    tru = {k: np.asarray(frames[k], np.float64)[idx] for k in QUANTITIES}
    return ClipComparison(clip_id, np.arange(n) / fps, tru, {k: np.asarray(v[:n], np.float64) for k, v in rec.items()})


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def summarize(comparisons: list[ClipComparison], face_found_fraction: float) -> dict[str, Any]:
    """Pooled correlations (all frames), the median per-clip correlation, and angle errors in degrees."""
    out: dict[str, Any] = {"clips_checked": len(comparisons), "face_found_fraction": face_found_fraction,
                           "frames_checked": int(sum(len(c.time_s) for c in comparisons))}
    if not comparisons:
        return out
    for q in QUANTITIES:
        t = np.concatenate([c.truth[q] for c in comparisons])
        r = np.concatenate([c.recovered[q] for c in comparisons])
        out[f"{q}_r"] = _pearson(t, r)
        out[f"{q}_r_clip_median"] = float(np.nanmedian([_pearson(c.truth[q], c.recovered[q]) for c in comparisons]))
        if q != "mouth_open":
            d = (r - t) * DEG_PER_RAD
            d = d[np.isfinite(d)]
            bias = float(d.mean())
            out[f"{q}_bias_deg"] = bias  # constant offset between the synthetic head's and the template's frontal
            out[f"{q}_mae_deg"] = float(np.abs(d).mean())
            out[f"{q}_mae_deg_unbiased"] = float(np.abs(d - bias).mean())
    return out


def plot(comparisons: list[ClipComparison], path: Path) -> None:
    """Scatter of truth vs recovered for each quantity, plus the time course of one clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    if not comparisons:  # a real dataset has no sidecars: say so in the figure DVC expects
        fig = plt.figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no synthetic ground truth found", ha="center", va="center")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
        return
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, q in zip(axes[0], QUANTITIES):
        scale = 1.0 if q == "mouth_open" else DEG_PER_RAD
        for c in comparisons:
            ax.scatter(c.truth[q] * scale, c.recovered[q] * scale, s=2, alpha=0.4)
        ax.set_xlabel(f"truth {q}" + ("" if q == "mouth_open" else " (deg)"))
        ax.set_ylabel("recovered")
        ax.set_title(q)
    c = comparisons[0]
    for ax, q in zip(axes[1], QUANTITIES):
        scale = 1.0 if q == "mouth_open" else DEG_PER_RAD
        tr, rc = c.truth[q] * scale, c.recovered[q] * scale
        if q == "mouth_open":  # different units: standardise both for the time course
            tr = (tr - tr.mean()) / (tr.std() + 1e-9)
            rc = (rc - np.nanmean(rc)) / (np.nanstd(rc) + 1e-9)
        ax.plot(c.time_s, tr, label="truth")
        ax.plot(c.time_s, rc, label="recovered")
        ax.set_xlabel("time (s)")
        ax.set_title(f"{c.clip_id}: {q}" + (" (z-scored)" if q == "mouth_open" else " (deg)"))
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def check_corpus(raw: Path, processed: Path) -> tuple[dict[str, Any], list[ClipComparison]]:
    """Compare every clip of a preprocessed corpus that has a `<clip>.truth.json` sidecar under `raw`.

    Args:
        raw: the raw folder the corpus was preprocessed from (holds the sidecars; real datasets have none).
        processed: output folder of preprocessing (manifest.parquet, features/, rejected.csv).

    Returns:
        The metrics of `summarize` (face-found rate: the frame-weighted `face_fraction` of the checked clips),
        followed by `clips_rejected` (rows of rejected.csv), and the per-clip comparisons in manifest order.
    """
    import pandas as pd

    raw, processed = Path(raw), Path(processed)
    manifest = pd.read_parquet(processed / "manifest.parquet")
    comparisons, frames, found = [], 0, 0.0
    for row in manifest.itertuples():
        truth = raw / f"{row.clip_id}.truth.json"
        if not truth.is_file():
            continue
        comparisons.append(compare_clip(truth, processed / row.features_path, row.clip_id))
        frames += int(row.frames)
        found += float(row.face_fraction) * int(row.frames)
    rejected = pd.read_csv(processed / "rejected.csv")
    metrics = summarize(comparisons, found / frames if frames else 0.0)
    metrics["clips_rejected"] = len(rejected)
    return metrics, comparisons


def write_report(metrics: dict[str, Any], comparisons: list[ClipComparison], reports: Path) -> None:
    """Write `metrics.json` and `truth_vs_recovered.png` (see `plot`) into `reports` (created if needed)."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", metrics)
    plot(comparisons, reports / "truth_vs_recovered.png")


def check_and_report(raw: Path, processed: Path, reports: Path) -> dict[str, Any]:
    """`check_corpus(raw, processed)`, then `write_report` into `reports`; returns the metrics."""
    metrics, comparisons = check_corpus(raw, processed)
    write_report(metrics, comparisons, reports)
    return metrics
