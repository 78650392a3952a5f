"""CI report: what a change did to the pipeline's params, metrics, plots and benchmarks, as one markdown file.

    python scripts/ci_report.py --base origin/main --out report.md [--plots-dir reports/ci_plots] [--bench bench/*.txt]

Run in a DVC repository after `dvc repro` (or `dvc exp run`) on the head commit. Writes `report.md` with:
- `dvc params diff --md <base>`: the params that differ from the base revision;
- `dvc metrics diff --md --all <base>`: every stage's metrics, base vs workspace, with the change;
- `dvc plots diff <base> --out <plots-dir>`: the rendered comparison (index.html + images), linked from the report;
- the benchmark scripts' output given with --bench (their tables put each figure against a reference measured in
  the same run: read the ratios, absolute times depend on the runner).
The CI workflow (.github/workflows/benchmark.yml) posts the file on the pull request with CML and uploads it with the
reports as an artifact. A DVC command that fails (e.g. the base has no dvc.lock yet) is reported in the file, not
raised, so the comment always says what happened.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _dvc(args: list[str], cwd: Path) -> tuple[bool, str]:
    """(succeeded, stdout or the error text) of a `dvc` command run with this interpreter's DVC."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        return False, (proc.stderr or proc.stdout).strip()
    return True, proc.stdout.strip()


def _section(title: str, ok: bool, body: str, empty: str) -> str:
    if not ok:
        return f"## {title}\n\n`dvc` failed: ```{body.splitlines()[-1] if body else 'no output'}```\n"
    return f"## {title}\n\n{body if body else empty}\n"


def bench_section(files: list[Path]) -> str:
    """The benchmark scripts' printed tables (they report ratios against a reference measured in the same run)."""
    if not files:
        return "no benchmark results given\n"
    return "".join(f"### {f.stem}\n\n```\n{f.read_text(encoding='utf-8').rstrip()}\n```\n\n" for f in files)


def build_report(repo: Path, base: str, plots_dir: Path | None, bench: list[Path]) -> str:
    parts = [f"# Pipeline report: workspace vs `{base}`\n"]
    ok, out = _dvc(["params", "diff", "--md", base], repo)
    parts.append(_section("Params", ok, out, "no param changed"))
    ok, out = _dvc(["metrics", "diff", "--md", "--all", base], repo)
    parts.append(_section("Metrics", ok, out, "no metrics"))
    if plots_dir is not None:
        ok, out = _dvc(["plots", "diff", base, "--out", str(plots_dir)], repo)
        index = plots_dir / "index.html"
        if ok and index.is_file():
            images = sorted(p.relative_to(plots_dir) for p in plots_dir.rglob("*.png"))
            listing = "".join(f"- `{p}`\n" for p in images)
            parts.append(f"## Plots\n\n`dvc plots diff` rendered to `{index}` ({len(images)} images; uploaded with "
                         f"the workflow's artifacts)\n\n{listing}")
        else:
            parts.append(_section("Plots", False, out, ""))
    parts.append("## Benchmarks (ratios against a reference measured in the same run)\n\n" + bench_section(bench))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="origin/main", help="git revision to compare with (default origin/main)")
    ap.add_argument("--out", type=Path, default=Path("report.md"))
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--plots-dir", type=Path, default=None, help="render `dvc plots diff` here (default: skip)")
    ap.add_argument("--bench", type=Path, nargs="*", default=[], help="benchmark outputs (text) to include")
    args = ap.parse_args(argv)
    report = build_report(args.repo.resolve(), args.base, args.plots_dir, args.bench)
    args.out.write_text(report, encoding="utf-8")
    print(f"wrote {args.out} ({len(report)} characters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
