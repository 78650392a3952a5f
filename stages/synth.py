"""Stage `synth`: generate the embedded synthetic talking-head corpus (the default raw dataset).

Runs under DVC (`dvc repro synth`) or stand-alone:

    python -m stages.synth --out data/raw [--params params.yaml] [--metrics reports/synth/metrics.json]

Writes OUT/<speaker>/<clip>.mp4 (H.264 + AAC) and OUT/<speaker>/<clip>.truth.json (ground truth for tests and
extractor checks), deterministically from `common.seed` and the `synth` section of the params file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from pipeline.io import write_json
from pipeline.synth.corpus import SynthConfig, generate_corpus, plan_corpus
from stages import common as sc

log = logging.getLogger("tavce.synth")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stages.synth",
        description=__doc__.split("\n\n")[0],
        epilog="Size and look are set in the `synth` section of the params file (speakers, clips_per_speaker, "
               "min_duration_s, max_duration_s, frame_sizes, audio_rates, ...); the seed is common.seed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for the corpus (e.g. data/raw)")
    p.add_argument("--metrics", type=Path, default=Path("reports/synth/metrics.json"),
                   help="where to write the summary metrics json (default: reports/synth/metrics.json)")
    p.add_argument("--workers", type=int, default=None, help="override synth.workers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="list the speakers and clips that would be written and exit")
    sc.add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, "synth", SynthConfig, args.params)
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=args.workers)
        cfg.validate()
    if args.dry_run:
        for job in plan_corpus(cfg, args.out, common.seed):
            spk = job.speaker
            print(f"{spk.speaker_id}/{job.clip_id}\t{spk.voice.name}\t{spk.frame_size[0]}x{spk.frame_size[1]}"
                  f"\t{spk.audio_rate} Hz")
        print(f"{cfg.speakers * cfg.clips_per_speaker} clip(s); config: {dataclasses.asdict(cfg)}")
        return 0

    sc.require_writable("synth", args.out, args.metrics.parent)
    with sc.tracked_stage("synth", args, {"common": common, "synth": cfg}, []) as tracker:
        # The one place where the stage's summary is produced (metrics.json and the tracker both log it).
        summary = generate_corpus(cfg, args.out, seed=common.seed, progress=not args.no_progress)
        write_json(args.metrics, summary)
        tracker.log_metrics(sc.numeric_metrics(summary))
        tracker.log_artifact(args.metrics)
    log.info("synth: %d clips, %.1f s of video in %.1f s wall (%s)", summary["clips"], summary["seconds"],
             summary["wall_s"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
