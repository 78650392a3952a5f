"""Frames per second of the renderer's inference API, pipeline.render.render.

    python benchmarks/render_fps.py                                  # small and full config, CPU
    python benchmarks/render_fps.py --configs small --frames-small 32 --batch-sizes 1 8
    python benchmarks/render_fps.py --device cuda --json reports/render_fps.json

For each config (small: params.yaml's pretrain_renderer.model, or the built-in small config of
benchmarks/complexity.py when absent; full: RendererConfig defaults at 256x256), with random weights, a random
source image, random per-frame motion (66-bin logits, t, δ) and a random per-frame relation C^a, it times after a
one-frame warm-up:
- ``render()`` with CERL per frame (relation given: the 3D volume is made per frame), per batch size;
- ``render()`` without a relation (the volume is made once and shared by all frames), per batch size;
- the reference in the same run: the same frames rendered the SadTalker way (no relation), ``renderer.forward`` one
  frame at a time (re-encoding the source image for every frame), with the same once-per-video source keypoints.
  "vs reference" = reference seconds / render() seconds (the CERL rows do slightly more work than the reference:
  CERL and the 3D blocks per frame). The no-relation frames are compared with the reference's (max |difference| in
  uint8 levels) as a check; tests/test_render.py checks the CERL path against the forward.
Each timing covers the whole call (source keypoints + encoding once, all frames, uint8 conversion). Threads: torch
default (``torch.get_num_threads()``, printed) unless --threads is given; on a CPU shared with other jobs, 1 thread
can be faster than the default. Peak RSS is the process's peak so far (``resource.getrusage``), so
run one config alone for its own peak; with --device cuda also the peak allocated GPU memory per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.complexity import load_configs  # noqa: E402
from pipeline.config import to_dict  # noqa: E402
from pipeline.models.renderer import HeadMotion, Renderer, RendererConfig, transform_keypoints  # noqa: E402
from pipeline.models.tavc import relationship  # noqa: E402
from pipeline.render import motion_rows, render, source_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measurement:
    config: str
    image_size: int
    method: str
    batch_size: int
    frames: int
    seconds: float
    frames_per_s: float
    vs_reference: float | None
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    max_diff_vs_reference: int | None = None


def random_inputs(cfg: RendererConfig, frames: int, seed: int) -> tuple[np.ndarray, HeadMotion, torch.Tensor]:
    """A random source (S, S, 3) uint8, per-frame motion (logits) and per-frame relation (T, D, D), TAVCE Eq. 2 form."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, size=(cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    motion = HeadMotion(yaw=torch.randn(frames, 66, generator=g), pitch=torch.randn(frames, 66, generator=g),
                        roll=torch.randn(frames, 66, generator=g), t=0.05 * torch.randn(frames, 3, generator=g),
                        exp=0.05 * torch.randn(frames, cfg.num_kp, 3, generator=g))
    d = cfg.cerl.relation_dim
    f_a = torch.randn(frames + 1, d, generator=g)  # E^a of consecutive windows
    return source, motion, relationship(f_a[:-1], f_a[1:])  # (T, D, D)


@torch.inference_mode()
def render_sadtalker_way(renderer: Renderer, source_image: np.ndarray, motion: HeadMotion,
                         relation: torch.Tensor | None, device: str) -> np.ndarray:
    """Reference: SadTalker's make_animation loop, one frame at a time through the full ``renderer.forward``
    (source re-encoded per frame); canonical and source keypoints once per video, as SadTalker does."""
    cfg = renderer.cfg
    src = source_tensor(source_image, cfg.image_size).to(device)  # (1, 3, S, S)
    kp_c = renderer.canonical_keypoints(src)  # (1, K, 3)
    kp_source = transform_keypoints(kp_c, renderer.estimate_motion(src))  # (1, K, 3)
    n = motion.t.shape[0]
    out = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    for i in range(n):
        kp_driving = transform_keypoints(kp_c, motion_rows(motion, i, i + 1, device))  # (1, K, 3)
        rel = None if relation is None else relation[i:i + 1].to(device)  # (1, D, D)
        pred = renderer(src, kp_source, kp_driving, rel).prediction  # (1, 3, S, S)
        out[i] = pred[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (S, S, 3)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(fn: Callable[[], np.ndarray], device: str) -> tuple[float, np.ndarray, float | None]:
    """Seconds of one call, its frames, and the peak GPU memory (MB) when on cuda."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    frames = fn()  # numpy output: the device work has finished
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return seconds, frames, gpu


def bench_config(name: str, cfg: RendererConfig, frames: int, batch_sizes: list[int], device: str, reference: bool,
                 seed: int) -> list[Measurement]:
    torch.manual_seed(seed)
    renderer = Renderer(cfg).eval().to(device)
    if renderer.cerl is not None:  # CERL's last conv starts at zero; give it weights like a trained one
        with torch.no_grad():
            last = renderer.cerl.out if renderer.cerl.out is not None else renderer.cerl.conv1
            last.weight.normal_(0.0, 0.01)
    source, motion, relation = random_inputs(cfg, frames, seed)
    warm_source, warm_motion, warm_relation = random_inputs(cfg, 1, seed + 1)
    render(renderer, warm_source, warm_motion, relation=warm_relation, device=device)  # warm-up (allocators, oneDNN)

    rows: list[Measurement] = []
    ref_seconds, ref_frames = None, None
    if reference:  # SadTalker proper: no CERL, the full forward per frame
        ref_seconds, ref_frames, gpu = timed(lambda: render_sadtalker_way(renderer, source, motion, None, device),
                                             device)
        rows.append(Measurement(name, cfg.image_size, "reference: forward per frame (SadTalker way), no relation", 1,
                                frames, ref_seconds, frames / ref_seconds, 1.0, peak_rss_mb(), gpu))
    for rel, method in ((relation, "render(), CERL per frame"), (None, "render(), no relation (volume once)")):
        for b in batch_sizes:
            seconds, out, gpu = timed(lambda rel=rel, b=b: render(renderer, source, motion, relation=rel,
                                                                  batch_size=b, device=device), device)
            diff = None
            if ref_frames is not None and rel is None:
                diff = int(np.abs(out.astype(np.int16) - ref_frames.astype(np.int16)).max())
            rows.append(Measurement(name, cfg.image_size, method, b, frames, seconds, frames / seconds,
                                    None if ref_seconds is None else ref_seconds / seconds, peak_rss_mb(), gpu, diff))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=("small", "full"), default=["small", "full"],
                    help="configs to measure, in this order (default: small full)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--frames-small", type=int, default=16, help="frames rendered per measurement, small (16)")
    ap.add_argument("--frames-full", type=int, default=4, help="frames rendered per measurement, full (4)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4],
                    help="render() batch sizes to measure (default: 1 4)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the SadTalker-way reference (forward per frame, source re-encoded)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file for the small config")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON to this path")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    if min(args.batch_sizes) < 1 or args.frames_small < 1 or args.frames_full < 1 or args.threads < 0:
        ap.error("--batch-sizes and --frames-* must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[Measurement] = []
    notes: list[str] = [f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                        f"({os.cpu_count()} CPUs; other processes slow the timings down)"]
    configs = {}
    for name in args.configs:
        cfg, _, cfg_notes = load_configs(name, args.params)
        notes += [f"{name}: {n}" for n in cfg_notes if n.startswith("renderer")]
        configs[name] = to_dict(cfg)
        frames = args.frames_small if name == "small" else args.frames_full
        rows += bench_config(name, cfg, frames, args.batch_sizes, args.device, not args.no_reference, args.seed)

    notes.append(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    device = args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(args.device)
    print(f"\nrender() throughput, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          "random weights\n")
    for n in notes:
        print(f"- {n}")
    gpu_col = args.device.startswith("cuda")
    print(f"\n| config | method | batch | frames | s | frames/s | vs reference | max diff vs ref | peak RSS (MB)"
          f"{' | peak GPU (MB)' if gpu_col else ''} |")
    print(f"|---|---|---:|---:|---:|---:|---:|---:|---:{'|---:' if gpu_col else ''}|")
    for r in rows:
        ratio = "" if r.vs_reference is None else f"{r.vs_reference:.2f}x"
        diff = "" if r.max_diff_vs_reference is None else str(r.max_diff_vs_reference)
        gpu = f" | {r.peak_gpu_mb:.0f}" if gpu_col else ""
        print(f"| {r.config} {r.image_size}px | {r.method} | {r.batch_size} | {r.frames} | {r.seconds:.2f} | "
              f"{r.frames_per_s:.3f} | {ratio} | {diff} | {r.peak_rss_mb:.0f}{gpu} |")
    print("\npeak RSS: the process's peak so far (cumulative over the rows above).")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "notes": notes, "configs": configs,
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
