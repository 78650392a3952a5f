"""TAVCE Table IV: the four ablations of stage `train` x N seeds as queued DVC experiments, and their table.

    python -m stages.ablation queue --seeds 0 1 2     # queues 12 experiments (dvc exp run --queue)
    dvc queue start -j 1                              # runs them one after another (train -> evaluate each)
    dvc queue status                                  # progress; `dvc queue logs <name>` for one run's log
    python -m stages.ablation report                  # reports/ablation/table.md + table.json (+ an MLflow run)

Variants (TAVCE Table IV): full (CERL on, CAR 0.1 = `train.car.weight` of params.yaml), w/o CERL, w/o CAR, w/o both.
Each experiment changes only `train.cerl.enabled`, `train.car.weight` and `train.seed` (the seed of the `train`
stage alone), so DVC reruns just `train` and `evaluate`; every other stage's outputs come from the run cache. The
report reads `dvc exp show --json` of every commit the experiments were queued from (`dvc exp list -A`): for every
experiment named ``tableiv-<variant>-s<seed>`` it takes the
`evaluate` stage's scores of the generated videos (LSE-D / LSE-C / AV offset, FID, CSIM, mouth LMD, TAVC similarity,
each labelled with its extractor as in reports/evaluate) and the `train` stage's held-out large-motion mouth L1,
and writes the mean over seeds with a t-interval (95 %) per variant. The experiments also appear in `dvc exp show`
and as MLflow runs (one parent run per experiment).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("tavce.ablation")

PREFIX = "tableiv"
# name -> (train.cerl.enabled, CAR on); the CAR weight of the "on" variants is train.car.weight of params.yaml
VARIANTS: dict[str, tuple[bool, bool]] = {"full": (True, True), "wo_cerl": (False, True), "wo_car": (True, False),
                                          "wo_both": (False, False)}
LABELS = {"full": "full", "wo_cerl": "w/o CERL", "wo_car": "w/o CAR", "wo_both": "w/o both"}
# (key in the evaluate results of the generated system, column title, extractor key in reports/evaluate, lower=better)
EVAL_COLUMNS = (("lse_d", "LSE-D", "lse", True), ("lse_c", "LSE-C", "lse", False),
                ("abs_offset", "|AV off|", "lse", True), ("fid", "FID", "fid", True), ("csim", "CSIM", "csim", False),
                ("lmd_mouth", "LMD mouth", "lmd", True), ("tavc_similarity", "TAVC sim", "tavc", False))
TRAIN_COLUMN = ("mouth_l1", "held-out mouth L1 (large motion)")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # two-sided 95 %
NAME = re.compile(rf"^{PREFIX}-(?P<variant>{'|'.join(VARIANTS)})-s(?P<seed>\d+)$")


class AblationError(RuntimeError):
    """A problem the user can fix (no experiments, a failed command), with its reason."""


def queue_commands(seeds: list[int], car_weight: float) -> list[list[str]]:
    """The `dvc exp run --queue` command of every (variant, seed)."""
    out = []
    for variant, (cerl, car) in VARIANTS.items():
        for seed in seeds:
            out.append(["dvc", "exp", "run", "--queue", "-n", f"{PREFIX}-{variant}-s{seed}",
                        "-S", f"train.cerl.enabled={str(cerl).lower()}",
                        "-S", f"train.car.weight={car_weight if car else 0.0}", "-S", f"train.seed={seed}"])
    return out


def _experiments(node: Any) -> list[dict[str, Any]]:
    """Every (name, data) record of `dvc exp show --json` (its nesting: baselines -> experiments -> revs)."""
    found = []
    if isinstance(node, list):
        for item in node:
            found.extend(_experiments(item))
    elif isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "metrics" in data and node.get("name"):
            found.append({"name": node["name"], "data": data})
        for key in ("experiments", "revs"):
            if node.get(key):
                found.extend(_experiments(node[key]))
    return found


def _metric_file(data: dict[str, Any], suffix: str) -> dict[str, Any] | None:
    for path, entry in (data.get("metrics") or {}).items():
        if path.replace("\\", "/").endswith(suffix) and isinstance(entry, dict):
            return entry.get("data")
    return None


def collect(exp_show: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows (variant, seed, dataset, metrics...) of the Table IV experiments in `dvc exp show --json` output, and
    the extractor names reported by their evaluate stage."""
    rows, extractors = [], {}
    seen = set()
    for exp in _experiments(exp_show):
        match = NAME.match(str(exp["name"]))
        if not match or exp["name"] in seen:
            continue
        seen.add(exp["name"])
        evaluation = _metric_file(exp["data"], "evaluate/metrics.json")
        train = _metric_file(exp["data"], "train/metrics.json")
        if not evaluation:
            log.warning("%s: no evaluate metrics (failed or still queued?); left out", exp["name"])
            continue
        extractors.update(evaluation.get("extractors") or {})
        mouth_l1 = (((train or {}).get("heldout_motion") or {}).get("mouth_l1") or {}).get("generated")
        for dataset, systems in (evaluation.get("results") or {}).items():
            ours = systems.get("ours") or {}
            row = {"variant": match["variant"], "seed": int(match["seed"]), "dataset": dataset}
            row.update({key: ours.get(key) for key, *_ in EVAL_COLUMNS})
            row[TRAIN_COLUMN[0]] = mouth_l1
            rows.append(row)
    return rows, extractors


def mean_interval(values: list[float]) -> tuple[float, float, int]:
    """Mean, half-width of the two-sided 95 % t-interval (nan for one value), count; None/nan values dropped."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan, 1
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs)), len(xs)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {variant: {metric: {mean, ci95, n}, seeds: [...]}}}"""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = [k for k, *_ in EVAL_COLUMNS] + [TRAIN_COLUMN[0]]
    for dataset in sorted({r["dataset"] for r in rows}):
        out[dataset] = {}
        for variant in VARIANTS:
            mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not mine:
                continue
            entry: dict[str, Any] = {"seeds": sorted(r["seed"] for r in mine)}
            for key in keys:
                m, h, n = mean_interval([r[key] for r in mine])
                entry[key] = {"mean": m, "ci95": h, "n": n}
            out[dataset][variant] = entry
    return out


def ordering(summary: dict[str, dict[str, Any]], key: str) -> dict[str, bool] | None:
    """The paper's ordering on one lower-is-better metric: full <= w/o CERL, full <= w/o CAR, both <= w/o both."""
    try:
        v = {name: summary[name][key]["mean"] for name in VARIANTS}
    except KeyError:
        return None
    if any(not math.isfinite(x) for x in v.values()):
        return None
    return {"full <= w/o CERL": v["full"] <= v["wo_cerl"], "full <= w/o CAR": v["full"] <= v["wo_car"],
            "w/o CERL <= w/o both": v["wo_cerl"] <= v["wo_both"], "w/o CAR <= w/o both": v["wo_car"] <= v["wo_both"]}


def _cell(stat: dict[str, Any], digits: int) -> str:
    if not stat["n"]:
        return "—"
    if not math.isfinite(stat["ci95"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def table_markdown(summary: dict[str, dict[str, dict[str, Any]]], extractors: dict[str, str]) -> str:
    lines = ["# TAVCE Table IV ablations (stage `train` variants, scored by stage `evaluate`)", "",
             "Mean over seeds ± half-width of the 95 % t-interval; generated videos of the test speakers "
             "(reports/evaluate protocol). Extractor of each column in brackets.", ""]
    for dataset, variants in summary.items():
        head = ["variant", "seeds"] + [f"{title}[{extractors.get(ex, '?')}] {'↓' if low else '↑'}"
                                       for _, title, ex, low in EVAL_COLUMNS] + [f"{TRAIN_COLUMN[1]} ↓"]
        lines += [f"## {dataset}", "", "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
                  "|" + "---|" * len(head)]
        for variant, entry in variants.items():
            cells = [LABELS[variant], ",".join(map(str, entry["seeds"]))]
            cells += [_cell(entry[key], 4 if key == "fid" else 3) for key, *_ in EVAL_COLUMNS]
            cells.append(_cell(entry[TRAIN_COLUMN[0]], 4))
            lines.append("| " + " | ".join(cells) + " |")
        for key in ("lse_d", "fid"):
            order = ordering(variants, key)
            if order is not None:
                held = ", ".join(f"{k}: {'yes' if ok else 'no'}" for k, ok in order.items())
                lines += ["", f"Paper's ordering on {key} (means): {held}."]
        lines.append("")
    return "\n".join(lines)


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AblationError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _car_weight(params: Path) -> float:
    import yaml

    weight = float(yaml.safe_load(params.read_text())["train"]["car"]["weight"])
    if not weight > 0:
        raise AblationError(f"{params}: train.car.weight is {weight}; the 'full' variant needs CAR on (> 0)")
    return weight


def baselines_with_experiments(exp_list: str) -> list[str]:
    """Commits (from `dvc exp list -A`) that have Table IV experiments: queued runs stay attached to the commit they
    were queued from, which is usually no longer HEAD by the time they finish."""
    found, current = [], None
    for line in exp_list.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1].strip()
        elif current and f"[{PREFIX}-" in line and current not in found:
            found.append(current)
    return found


def exp_show_all() -> list[Any]:
    """`dvc exp show --json` records of every baseline commit with Table IV experiments."""
    shown: list[Any] = []
    for rev in baselines_with_experiments(_run(["dvc", "exp", "list", "-A"])):
        shown.extend(json.loads(_run(["dvc", "exp", "show", "--json", "--rev", rev])))
    return shown


def report(out: Path, exp_show: Any, track: bool = True) -> dict[str, Any]:
    rows, extractors = collect(exp_show)
    if not rows:
        raise AblationError(f"no finished '{PREFIX}-<variant>-s<seed>' experiments in `dvc exp show` (run "
                            "`python -m stages.ablation queue` and `dvc queue start` first)")
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    result = {"extractors": extractors, "rows": rows, "summary": summary,
              "ordering": {d: {k: ordering(v, k) for k in ("lse_d", "fid")} for d, v in summary.items()}}
    (out / "table.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "table.md").write_text(table_markdown(summary, extractors))
    if track:
        from pipeline import tracking
        from stages.common import run_context

        params = {"experiments": len(rows), "seeds": ",".join(sorted({str(r["seed"]) for r in rows}))}
        with tracking.stage_run(run_context(), "ablation_report", params, "n/a") as tracker:
            for dataset, variants in summary.items():
                for variant, entry in variants.items():
                    tracker.log_metrics({f"{dataset}.{variant}.{k}": v["mean"] for k, v in entry.items()
                                         if isinstance(v, dict) and v["n"] and math.isfinite(v["mean"])})
            tracker.log_artifact(out / "table.md")
            tracker.log_artifact(out / "table.json")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.ablation", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue the 4 variants x seeds as DVC experiments")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--params", type=Path, default=Path("params.yaml"))
    q.add_argument("--dry-run", action="store_true", help="print the commands only")
    r = sub.add_parser("report", help="collect the finished experiments into reports/ablation/")
    r.add_argument("--out", type=Path, default=Path("reports/ablation"))
    r.add_argument("--exp-show-json", type=Path, default=None,
                   help="read this saved `dvc exp show --json` output instead of calling dvc")
    r.add_argument("--no-track", action="store_true", help="no MLflow run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "queue":
            for cmd in queue_commands(args.seeds, _car_weight(args.params)):
                print(" ".join(cmd))
                if not args.dry_run:
                    _run(cmd)
            if not args.dry_run:
                print("queued; start them with: dvc queue start -j 1")
            return 0
        shown = json.loads(args.exp_show_json.read_text()) if args.exp_show_json else exp_show_all()
        result = report(args.out, shown, track=not args.no_track)
        print((args.out / "table.md").read_text())
        log.info("%d experiment rows -> %s", len(result["rows"]), args.out)
        return 0
    except AblationError as err:
        print(f"ablation: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
