"""The ``tavce`` console script: ``tavce animate`` (portrait + speech -> talking-head video) and ``tavce export``
(a pipeline run's models -> one shareable ``.tavce`` file). A thin CLI over `pipeline.animate` and `pipeline.bundle`:
it validates options and makes one library call. Not a DVC stage."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml

EXAMPLES_ANIMATE = """example:
  tavce animate --image portrait.jpg --audio speech.wav --out talk.mp4
  tavce animate --image group.png --audio talk.m4a --out talk.mp4 --face-index 1 --paste-back --gif
  tavce animate --image me.webp --audio speech.mp3 --out talk.mp4 --models model.tavce --seed 3 --pose-style 2
"""
EXAMPLES_EXPORT = """example:
  tavce export --models models --out model.tavce
  tavce animate --image portrait.jpg --audio speech.wav --out talk.mp4 --models model.tavce
"""


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions(root: Path, bundled: dict[str, str]) -> dict[str, Any]:
    """Code and data versions of a pipeline run: git revision + dirty flag, and for every bundled file the
    ``dvc.lock`` entry (deps with their hashes, params) of the stage whose outs contain it."""
    out: dict[str, Any] = {"git_revision": _git(["rev-parse", "HEAD"], root),
                           "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"], root))}
    lock_path = root / "dvc.lock"
    if lock_path.is_file():
        lock = yaml.safe_load(lock_path.read_text()) or {}
        stages: dict[str, Any] = {}
        for name, src in bundled.items():
            rel = Path(src).resolve()
            for stage, entry in (lock.get("stages") or {}).items():
                for o in entry.get("outs", []):
                    opath = (root / o["path"]).resolve()
                    if rel == opath or opath in rel.parents:
                        stages[stage] = {"deps": entry.get("deps", []), "params": entry.get("params", {}),
                                         "outs": entry.get("outs", [])}
                        out.setdefault("files_from", {})[name] = stage
        out["dvc_lock"] = stages
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.animate import BASIS_FILE, model_files
    from pipeline.bundle import export_bundle

    models = Path(args.models)
    found = model_files(models, args.expression_basis)
    names = {"renderer": str(found["renderer"].relative_to(models)), "audio2coeff": "audio2coeff/checkpoint.pt",
             "tavc": "tavc/checkpoint.pt", "expression_basis": BASIS_FILE}
    files = {names[k]: v for k, v in found.items()}
    root = models.resolve().parent
    preprocess: dict[str, Any] = {}
    params = Path(args.params) if args.params else root / "params.yaml"
    if params.is_file():
        sections = yaml.safe_load(params.read_text()) or {}
        pre = sections.get("preprocess") or {}
        preprocess = {k: pre[k] for k in ("crop_scale", "backend", "min_confidence") if k in pre}
    manifest = export_bundle(files, args.out, versions=versions(root, {k: str(v) for k, v in files.items()}),
                             preprocess=preprocess)
    rcfg = manifest["configs"].get(names["renderer"], {}).get("model", {})
    if rcfg.get("motion_source", "estimator") != "coefficients":
        print(f"warning: {found['renderer']} has motion_source: estimator (no MappingNet): `tavce animate` will refuse "
              f"this bundle; export after the `train` stage has run", file=sys.stderr)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB): {', '.join(sorted(manifest['files']))}; "
          f"git {manifest['versions'].get('git_revision') or 'unknown'}")
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    from pipeline.animate import animate

    if args.pose_generator is not None:
        from pipeline.animate import load_models

        loaded = load_models(args.models, expression_basis=args.expression_basis)
        have = loaded.audio2coeff.cfg.pose_generator
        if have != args.pose_generator:
            raise SystemExit(f"tavce animate: --pose-generator {args.pose_generator}, but the Audio2Coeff model in "
                             f"{args.models} was trained with {have}")
        models: Any = loaded
    else:
        models = args.models
    result = animate(args.image, args.audio, args.out, models=models, pose_style=args.pose_style, seed=args.seed,
                     face_index=args.face_index, paste_back_full=args.paste_back, gif=args.gif, device=args.device,
                     batch_size=args.batch_size, chunk_seconds=args.chunk_seconds, crop_scale=args.crop_scale,
                     expression_basis=args.expression_basis, progress=not args.quiet)
    extra = f" and {result.gif}" if result.gif else ""
    print(f"wrote {result.out}{extra}: {result.frames} frames ({result.seconds:.2f} s at 25 fps), "
          f"{result.size[1]}x{result.size[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tavce", description="TAVCE talking-head animation: animate a portrait with "
                                "speech, or export a trained model as one file.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXAMPLES_ANIMATE + "\n" + EXAMPLES_EXPORT)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("animate", help="portrait photo + speech -> lip-synced talking-head mp4",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_ANIMATE,
                       description="Animate one portrait with one speech recording (H.264 + AAC mp4, 25 fps).")
    a.add_argument("--image", required=True, help="portrait photo (jpg/png/webp; EXIF orientation honoured)")
    a.add_argument("--audio", required=True,
                   help="speech: wav/mp3/m4a/flac/ogg or a video with audio (any sample rate, mono or stereo)")
    a.add_argument("--out", required=True, help="the mp4 to write")
    a.add_argument("--models", default="models",
                   help="a pipeline run's models/ folder or a `tavce export` bundle (default: %(default)s)")
    a.add_argument("--expression-basis", default=None,
                   help="expression basis file (default: <models>/expression_basis.npz or "
                        "<models>/../data/processed/expression_basis.npz)")
    a.add_argument("--pose-style", type=int, default=0, help="PoseVAE style class (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="seed of the head-motion samples (default: %(default)s)")
    a.add_argument("--pose-generator", choices=("posevae", "ms_sync"), default=None,
                   help="require this pose model (default: whichever the Audio2Coeff checkpoint holds)")
    a.add_argument("--face-index", type=int, default=None,
                   help="which face when the photo has several, 0 = largest (default: the largest, with a warning)")
    a.add_argument("--paste-back", action="store_true",
                   help="paste the animated face back into the whole photo (feathered), as SadTalker's --preprocess full")
    a.add_argument("--gif", action="store_true", help="also write a small GIF preview next to --out")
    a.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: %(default)s)")
    a.add_argument("--batch-size", type=int, default=8, help="frames per renderer pass (default: %(default)s)")
    a.add_argument("--chunk-seconds", type=float, default=4.0,
                   help="audio seconds rendered at a time; bounds memory for long audio (default: %(default)s)")
    a.add_argument("--crop-scale", type=float, default=None,
                   help="face crop side / face box side (default: the bundle's preprocess.crop_scale, else 1.8, "
                        "params.yaml's preprocess default)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_animate)
    e = sub.add_parser("export", help="a pipeline run's models -> one shareable .tavce file",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_EXPORT,
                       description="Bundle every network animate runs (checkpoints with their configs), the "
                                   "expression basis, and the code/data versions that trained them into one file.")
    e.add_argument("--models", default="models", help="models folder of a pipeline run (default: %(default)s)")
    e.add_argument("--out", required=True, help="the bundle to write, e.g. model.tavce")
    e.add_argument("--expression-basis", default=None,
                   help="expression basis file (default: <models>/../data/processed/expression_basis.npz)")
    e.add_argument("--params", default=None,
                   help="params.yaml whose preprocess crop settings to record (default: <models>/../params.yaml)")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.animate import AnimateError
    from pipeline.bundle import BundleError
    from pipeline.checkpoint import WeightsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    try:
        return args.func(args)
    except (AnimateError, BundleError, WeightsError) as err:
        print(f"tavce {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
