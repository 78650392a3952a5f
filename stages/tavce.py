"""The ``tavce`` console script: ``tavce animate`` (portrait + speech -> talking-head video), ``tavce export``
(a pipeline run's models -> one shareable ``.tavce`` file) and ``tavce evaluate`` (any system's videos scored with
the evaluate stage's metrics). A thin CLI over `pipeline.animate`, `pipeline.bundle` and `pipeline.evaluate`: it
validates options and makes one library call. Not a DVC stage."""

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
  tavce animate --image me.jpg --audio speech.wav --out talk.mp4 --sadtalker ~/SadTalker   # SadTalker's release
"""
EXAMPLES_EXPORT = """example:
  tavce export --models models --out model.tavce
  tavce animate --image portrait.jpg --audio speech.wav --out talk.mp4 --models model.tavce
"""
EXAMPLES_EVALUATE = """example:
  tavce evaluate --generated sadtalker_out/ --reference reports/evaluate/videos/synthetic/ground_truth --out eval_sadtalker
  tavce evaluate --generated mine/ --reference gt/ --audio gt_audio/ --out eval_mine --inception pt_inception-2015-12-05-6726825d.pth
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
    from pipeline.allocator import keep_freed_memory
    from pipeline.animate import animate

    keep_freed_memory()  # reuse freed activations instead of page-faulting fresh ones (TAVCE_MALLOC=default: off)

    if args.sadtalker is not None:  # SadTalker's released networks; the portrait's coefficients from Deep3DFaceRecon
        from pipeline.animate import AnimateModels
        from pipeline.models.sadtalker import SadTalkerReleaseError, load_release

        if args.pose_generator not in (None, "posevae"):
            raise SystemExit("tavce animate: SadTalker's release has a PoseVAE (--pose-generator posevae)")
        try:
            st = load_release(args.sadtalker, size=args.sadtalker_size, image_size=args.render_size)
        except SadTalkerReleaseError as err:
            raise SystemExit(f"tavce animate: {err}") from err
        models: Any = AnimateModels(st.renderer, st.audio2coeff, None, None, st.sources(), coeff_estimator=st.estimator)
    elif args.pose_generator is not None:
        from pipeline.animate import load_models

        loaded = load_models(args.models, expression_basis=args.expression_basis)
        have = loaded.audio2coeff.cfg.pose_generator
        if have != args.pose_generator:
            raise SystemExit(f"tavce animate: --pose-generator {args.pose_generator}, but the Audio2Coeff model in "
                             f"{args.models} was trained with {have}")
        models = loaded
    else:
        models = args.models
    options = None
    if args.fast:
        from pipeline.animate import resolve_device
        from pipeline.models.renderer.inference import InferenceOptions

        options = InferenceOptions.fastest(resolve_device(args.device))
    result = animate(args.image, args.audio, args.out, models=models, pose_style=args.pose_style, seed=args.seed,
                     face_index=args.face_index, paste_back_full=args.paste_back, gif=args.gif, device=args.device,
                     batch_size=args.batch_size, chunk_seconds=args.chunk_seconds, crop_scale=args.crop_scale,
                     expression_basis=args.expression_basis, progress=not args.quiet, options=options,
                     encoder_threads=args.encoder_threads)
    extra = f" and {result.gif}" if result.gif else ""
    print(f"wrote {result.out}{extra}: {result.frames} frames ({result.seconds:.2f} s at 25 fps), "
          f"{result.size[1]}x{result.size[0]}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import MetricsConfig, MetricWeights, SyncModels, evaluate_folders

    cfg = MetricsConfig(weights=MetricWeights(args.inception, args.arcface, args.syncnet_v2),
                        lmd_normalize=args.lmd_normalize, sync_landmarks=args.sync_landmarks, vshift=args.vshift,
                        max_frames=args.max_frames, frame_stride=args.frame_stride)
    try:
        cfg.validate()
    except ValueError as err:
        raise SystemExit(f"tavce evaluate: {err}") from err
    root = Path(args.models)
    models = SyncModels(*(str(root / n / "checkpoint.pt") if (root / n / "checkpoint.pt").is_file() else None
                          for n in ("syncnet", "syncers", "tavc")))
    missing = [n for n, v in zip(("syncnet", "syncers", "tavc"), (models.syncnet, models.syncers, models.tavc)) if not v]
    if missing:
        print(f"warning: {root} has no {', '.join(missing)} checkpoint: those metrics are left out", file=sys.stderr)
    metrics = evaluate_folders(args.generated, args.reference, args.out, audio=args.audio, cfg=cfg, models=models,
                               system=args.name, device=args.device, progress=not args.quiet)
    print((Path(args.out) / "table.md").read_text())
    for e in metrics["errors"]:
        print(f"tavce evaluate: {e['file']}: not scored: {e['reason']}", file=sys.stderr)
    scored = sum(s.get("clips", 0) for d in metrics["results"].values() for s in d.values())
    print(f"wrote {args.out}/metrics.json, table.md, clips.csv: {scored} video(s) scored, "
          f"{len(metrics['errors'])} not")
    return 0 if not metrics["errors"] else (1 if scored else 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tavce", description="TAVCE talking-head animation: animate a portrait with "
                                "speech, or export a trained model as one file.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXAMPLES_ANIMATE + "\n" + EXAMPLES_EXPORT + "\n" + EXAMPLES_EVALUATE)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("animate", help="portrait photo + speech -> lip-synced talking-head mp4",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_ANIMATE,
                       description="Animate one portrait with one speech recording (H.264 + AAC mp4, 25 fps). "
                                   "On Linux malloc keeps freed memory for reuse (faster rendering; set "
                                   "TAVCE_MALLOC=default to keep glibc's default).")
    a.add_argument("--image", required=True, help="portrait photo (jpg/png/webp; EXIF orientation honoured)")
    a.add_argument("--audio", required=True,
                   help="speech: wav/mp3/m4a/flac/ogg or a video with audio (any sample rate, mono or stereo)")
    a.add_argument("--out", required=True, help="the mp4 to write")
    a.add_argument("--models", default="models",
                   help="a pipeline run's models/ folder or a `tavce export` bundle (default: %(default)s)")
    a.add_argument("--sadtalker", default=None, metavar="DIR",
                   help="run SadTalker's released networks instead of --models: its repository root or checkpoints/ "
                        "folder (README \"SadTalker's release and Deep3DFaceRecon coefficients\")")
    a.add_argument("--sadtalker-size", type=int, choices=(256, 512), default=256,
                   help="which SadTalker renderer: 256 (.pth files or the 256 safetensors) or 512 (default: %(default)s)")
    a.add_argument("--render-size", type=int, default=None,
                   help="with --sadtalker: render at this side instead of --sadtalker-size (the networks are "
                        "convolutional; a smaller side is faster and blurrier; a multiple of 128)")
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
    a.add_argument("--batch-size", type=int, default=None,
                   help="frames per renderer pass (default: 1 on a CPU at 256 px and above, where batching is "
                        "slower, else 8)")
    a.add_argument("--chunk-seconds", type=float, default=4.0,
                   help="audio seconds rendered at a time; bounds memory for long audio (default: %(default)s)")
    a.add_argument("--crop-scale", type=float, default=None,
                   help="face crop side / face box side (default: the bundle's preprocess.crop_scale, else 1.8, "
                        "params.yaml's preprocess default)")
    a.add_argument("--fast", action="store_true",
                   help="render with the measured-fastest inference switches for the device (exact rewrites: folded "
                        "normalisation, fused SPADE and occlusion convolutions, channels-last; then bf16 on CPUs with "
                        "AVX-512 BF16, fp16 + CUDA graphs on GPUs; README: renderer speed); frames differ slightly "
                        "from the default fp32 path")
    a.add_argument("--encoder-threads", type=int, default=0,
                   help="x264 threads (default 0: ffmpeg picks by the CPU count; 1: the same bytes on any machine)")
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
    v = sub.add_parser("evaluate", help="score a folder of talking-head videos against reference clips",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_EVALUATE,
                       description="The evaluate stage's metrics (FID/KID, CSIM, LMD, LSE-D/LSE-C/AV offset, TAVC "
                                   "similarity, rigid |AV-Off|) on any system's videos, matched to reference clips by "
                                   "file stem; every number names its feature extractor. The source portrait of CSIM "
                                   "is each reference clip's first frame. Exit status 1 when some files could not be "
                                   "scored (listed), 2 when none could.")
    v.add_argument("--generated", required=True, help="folder of generated videos (mp4/mkv/avi/mov/webm)")
    v.add_argument("--reference", required=True, help="folder of ground-truth videos with the same file stems")
    v.add_argument("--audio", default=None,
                   help="folder of audio files with the same stems (default: each generated video's own audio)")
    v.add_argument("--out", required=True, help="report folder (metrics.json, table.md, clips.csv, metrics.png)")
    v.add_argument("--name", default="generated", help="the system's name in the table (default: %(default)s)")
    v.add_argument("--models", default="models",
                   help="models folder with the syncnet/, syncers/, tavc/ checkpoints (default: %(default)s)")
    v.add_argument("--inception", default=None, help="pytorch-fid's pt_inception-2015-12-05 weights -> FID "
                                                     "(default: FID[dlib_resnet_v1])")
    v.add_argument("--arcface", default=None, help="arcface_torch backbone.pth -> CSIM[arcface] "
                                                   "(default: CSIM[dlib_resnet_v1])")
    v.add_argument("--syncnet-v2", default=None, help="syncnet_python's syncnet_v2.model -> LSE[syncnet_v2] "
                                                      "(default: the project's SyncNet)")
    v.add_argument("--lmd-normalize", choices=("rigid", "none"), default="rigid",
                   help="remove head pose before LMD (default: %(default)s)")
    v.add_argument("--sync-landmarks", choices=("mediapipe", "dlib"), default="mediapipe",
                   help="landmarks of the sync metrics' mouth crops and head motion (default: %(default)s)")
    v.add_argument("--vshift", type=int, default=15, help="AV offsets searched, in frames (default: %(default)s)")
    v.add_argument("--max-frames", type=int, default=0, help="score at most this many frames per video (0 = all)")
    v.add_argument("--frame-stride", type=int, default=1,
                   help="every n-th frame enters FID/KID and CSIM (default: %(default)s)")
    v.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="(default: %(default)s)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.animate import AnimateError
    from pipeline.bundle import BundleError
    from pipeline.checkpoint import WeightsError
    from pipeline.evaluate import EvaluateError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    try:
        return args.func(args)
    except (AnimateError, BundleError, WeightsError, EvaluateError) as err:
        print(f"tavce {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
