"""Frames per second of the renderer's inference API, pipeline.render.render, and of each inference switch (issue 16).

    python benchmarks/render_fps.py                                  # full config, CPU: the switch table, 2 rounds
    python benchmarks/render_fps.py --compile                        # + torch.compile (compile time reported apart)
    python benchmarks/render_fps.py --configs --checkpoint models/renderer/checkpoint.pt   # PSNR on trained weights
    python benchmarks/render_fps.py --configs small --frames-small 32 --batch-sizes 1 8 --relation-rows
    python benchmarks/render_fps.py --device cuda --json reports/render_fps.json

Switch table (default): the reference (below), render() in fp32 without switches, then the inference switches of
pipeline.models.renderer.inference.InferenceOptions switched on one after another (fold → + fuse_spade →
+ pointwise_occlusion → + bf16 → + channels-last on CPU = InferenceOptions.fastest there; on CUDA fp16 +
channels-last + CUDA graphs together after the exact switches = fastest), the low precision alone,
channels-last alone, on CPU the exact switches + channels-last in fp32, the fastest at one batch of all frames, with
--compile the fastest compiled (its first call, which compiles, is timed apart as "compile s"), and the noise floor:
fp32 with the SPADE decoder's input rounded to the low precision once (how far one rounding moves this network's
frames). Each row: seconds, frames/s, "vs reference" and the PSNR (dB) of its uint8 frames against render()'s fp32
frames (inf = identical). Each switched row renders through a copy made by prepare_renderer (its making, ~0.1 s, is
not timed). A note gives the hardware's own ratio: the decoder's dominant convolution in fp32 and in the low
precision. --malloc tuned runs everything (reference included) with pipeline.allocator.keep_freed_memory(), as
`tavce animate` does; the default leaves glibc's malloc as it is.
The CPU is shared, so ratios are measured in rounds: a round times the reference, every row, and the reference again (the reference of the round is the mean of the two, so a linear drift of the load cancels); odd rounds
run the rows in reverse order. --repeats N runs N rounds and prints each round's ratios and their median.

Configs: small = params.yaml's pretrain_renderer.model, or the built-in small config of benchmarks/complexity.py
when absent; full = RendererConfig defaults at 256x256. Random weights, a random source image, random per-frame
motion (66-bin logits, t, δ) and a random per-frame relation C^a; one-frame warm-up first.
Relation rows (--relation-rows; the table before issue 16):
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
import dataclasses
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
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.models.renderer.inference import InferenceOptions, frame_psnr, prepare_renderer  # noqa: E402
from pipeline.models.tavc import relationship  # noqa: E402
from pipeline.render import load_renderer, motion_rows, render, source_tensor  # noqa: E402

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
    psnr_vs_fp32_db: float | None = None
    compile_seconds: float | None = None
    repeat: int = 0


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


def switch_variants(device: str, frames: int, compile_: bool) -> list[tuple[str, InferenceOptions, int]]:
    """(label, options, batch size) of the switch table: cumulative first (fold, + fuse_spade, + pointwise_occlusion,
    + low precision, + channels-last = InferenceOptions.fastest on a CPU with AVX-512 BF16; on CUDA the low precision,
    channels-last and CUDA graphs together = fastest), then the low precision and channels-last each on its own, the
    exact switches with channels-last in fp32 (fastest on other CPUs is without it), the fastest at one batch of all
    frames, and optionally compiled."""
    cuda = device.startswith("cuda")
    low = "fp16" if cuda else "bf16"
    best = InferenceOptions.fastest(device) if cuda else InferenceOptions(
        fold=True, fuse_spade=True, pointwise_occlusion=True, precision=low, channels_last=True)
    exact = dict(fold=True, fuse_spade=True, pointwise_occlusion=True)
    rows = [("+ fold (BatchNorm, spectral norm)", InferenceOptions(fold=True), 1),
            ("+ fuse_spade", InferenceOptions(fold=True, fuse_spade=True), 1),
            ("+ pointwise_occlusion", InferenceOptions(**exact), 1)]
    if cuda:
        rows.append(("+ fp16 + channels_last + CUDA graphs (= fastest)", best, 1))
    else:
        rows.append((f"+ {low}", InferenceOptions(**exact, precision=low), 1))
        rows.append(("+ channels_last (= fastest)", best, 1))
    rows += [(f"{low} alone", InferenceOptions(precision=low), 1),
             ("channels_last alone (fp32)", InferenceOptions(channels_last=True), 1)]
    if not cuda:
        rows.append(("exact switches + channels_last (fp32)", InferenceOptions(**exact, channels_last=True), 1))
    rows.append((f"fastest, batch {frames}", best, frames))
    if compile_:
        rows.append(("fastest + torch.compile", dataclasses.replace(best, compile=True, cuda_graphs=False), 1))
    return rows


def conv_peak(device: str) -> dict[str, float]:
    """G multiply-accumulates/s of the decoder's dominant convolution (3x3, 512 -> 512 channels at 64x64, the
    G_middle blocks: 12 of them per frame) in fp32 and in the low precision: the hardware's ratio, which bounds what
    reduced precision alone can give over an fp32 reference (docs/decisions.md, "Renderer inference speed"). On
    CUDA "fp32" is whatever cuDNN runs for fp32 (TF32 on Ampere and later by default), as in the reference."""
    import torch.nn.functional as F

    x = torch.randn(1, 512, 64, 64, device=device)
    w = torch.randn(512, 512, 3, 3, device=device) * 0.01
    macs = 64 * 64 * 512 * 512 * 9
    out = {}
    for name, dtype in (("fp32", torch.float32), ("fp16" if device.startswith("cuda") else "bf16",
                                                   torch.float16 if device.startswith("cuda") else torch.bfloat16)):
        xi = x.to(dtype).contiguous(memory_format=torch.channels_last)
        wi = w.to(dtype).contiguous(memory_format=torch.channels_last)
        calls = 20 if device.startswith("cuda") else 1  # a GPU call is too short to time alone
        with torch.inference_mode():
            best = float("inf")
            for _ in range(6):  # the best of 6: the peak, not the load
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(calls):
                    F.conv2d(xi, wi, padding=1)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, (time.perf_counter() - t0) / calls)
        out[name] = macs / best / 1e9
    return out


def noise_floor_renderer(renderer: Renderer, precision: str, device: str):
    """An fp32 copy whose SPADE decoder input is rounded to `precision` once (and nothing else): the PSNR of its
    frames against fp32 says how much one such rounding moves this network's output — a floor for any
    reduced-precision path. Random weights at full size are chaotic there (decisions.md, issue 16)."""
    fp32 = prepare_renderer(renderer, InferenceOptions(), device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    fp32.model.generator.decoder.register_forward_pre_hook(lambda module, args: (args[0].to(dtype).float(),))
    return fp32


def bench_config(name: str, cfg: RendererConfig, frames: int, batch_sizes: list[int], device: str, reference: bool,
                 seed: int, relation_rows: bool, switches: bool, compile_: bool, repeats: int,
                 noise_floor: bool = True, trained: Renderer | None = None) -> list[Measurement]:
    torch.manual_seed(seed)
    renderer = trained.to(device).eval() if trained is not None else Renderer(cfg).eval().to(device)
    if renderer.cerl is not None and trained is None:  # CERL's last conv starts at zero; give it weights like a trained one
        with torch.no_grad():
            last = renderer.cerl.out if renderer.cerl.out is not None else renderer.cerl.conv1
            last.weight.normal_(0.0, 0.01)
    source, motion, relation = random_inputs(cfg, frames, seed)
    warm_source, warm_motion, warm_relation = random_inputs(cfg, 1, seed + 1)
    render(renderer, warm_source, warm_motion, relation=warm_relation, device=device)  # warm-up (allocators, oneDNN)
    variants = switch_variants(device, frames, compile_) if switches else []
    prepared = {label: prepare_renderer(renderer, opts, device) for label, opts, _ in variants}
    compile_seconds: dict[str, float] = {}
    for label, opts, b in variants:
        if opts.compile or opts.cuda_graphs:  # the first call compiles / captures: timed apart
            t0 = time.perf_counter()
            render(prepared[label], warm_source, motion_rows(motion, 0, b, "cpu"), batch_size=b)
            compile_seconds[label] = time.perf_counter() - t0

    # One round = every row once. The CPU is shared, so the reference is timed at the start and at the end of each
    # round (its mean is the round's reference: linear load drift cancels) and odd rounds run the rows in reverse.
    ref_method = "reference: forward per frame (SadTalker way), no relation"
    jobs: list[tuple[str, Callable[[], np.ndarray], int, bool, bool]] = []  # method, call, batch, psnr, vs ref frames
    if switches:
        jobs.append(("render(), fp32, source encoded once (no switch)",
                     lambda: render(renderer, source, motion, batch_size=1, device=device), 1, False, True))
        for label, _, b in variants:
            jobs.append((label, lambda label=label, b=b: render(prepared[label], source, motion, batch_size=b), b,
                         True, True))
        if noise_floor:
            low = "fp16" if device.startswith("cuda") else "bf16"
            floor = noise_floor_renderer(renderer, low, device)
            jobs.append((f"noise floor: fp32, decoder input rounded to {low} once",
                         lambda: render(floor, source, motion, batch_size=1), 1, True, False))
    if relation_rows:
        for rel, method in ((relation, "render(), CERL per frame"), (None, "render(), no relation (volume once)")):
            for b in batch_sizes:
                jobs.append((method, lambda rel=rel, b=b: render(renderer, source, motion, relation=rel, batch_size=b,
                                                                 device=device), b, False, rel is None))

    def reference_run() -> tuple[float, np.ndarray, float | None]:
        return timed(lambda: render_sadtalker_way(renderer, source, motion, None, device), device)

    rows: list[Measurement] = []
    for rep in range(repeats):
        ref_times, ref_frames, ref_gpu = [], None, None
        if reference:
            seconds, ref_frames, ref_gpu = reference_run()
            ref_times.append(seconds)
        results = {}
        for i in (range(len(jobs)) if rep % 2 == 0 else reversed(range(len(jobs)))):
            results[i] = timed(jobs[i][1], device)  # (seconds, frames, gpu)
        if reference and jobs:
            ref_times.append(reference_run()[0])
        ref_seconds = float(np.mean(ref_times)) if ref_times else None
        if reference:
            rows.append(Measurement(name, cfg.image_size, ref_method, 1, frames, ref_seconds, frames / ref_seconds,
                                    1.0, peak_rss_mb(), ref_gpu, repeat=rep))
        fp32 = results[0][1] if switches else None
        for i, (method, _, b, psnr, compare_ref) in enumerate(jobs):
            seconds, out, gpu = results[i]
            diff = None
            if ref_frames is not None and compare_ref:
                diff = int(np.abs(out.astype(np.int16) - ref_frames.astype(np.int16)).max())
            rows.append(Measurement(name, cfg.image_size, method, b, frames, seconds, frames / seconds,
                                    None if ref_seconds is None else ref_seconds / seconds, peak_rss_mb(), gpu, diff,
                                    frame_psnr(out, fp32) if psnr and fp32 is not None else None,
                                    compile_seconds.get(method), rep))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", choices=("small", "full"), default=["full"],
                    help="random-weight configs to measure, in this order (default: full)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="also measure a trained renderer checkpoint (its own config, frames-small frames): the PSNR "
                         "of reduced precision on trained weights")
    ap.add_argument("--no-noise-floor", action="store_true", help="skip the fp32 noise-floor row")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--frames-small", type=int, default=16, help="frames rendered per measurement, small (16)")
    ap.add_argument("--frames-full", type=int, default=2, help="frames rendered per measurement, full (2)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4],
                    help="render() batch sizes to measure (default: 1 4)")
    ap.add_argument("--relation-rows", action="store_true",
                    help="also the render() rows with and without a CERL relation per batch size (fp32)")
    ap.add_argument("--no-switches", action="store_true", help="skip the inference-switch table")
    ap.add_argument("--compile", action="store_true",
                    help="add the torch.compile row (its first call, which compiles, is reported as compile s)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the table (default 2; median printed)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the SadTalker-way reference (forward per frame, source re-encoded)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file for the small config")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", choices=("default", "tuned"), default="default",
                    help="default: glibc malloc as it comes (every large activation a fresh mmap, page-faulted in); "
                         "tuned: pipeline.allocator.keep_freed_memory() before anything runs, for the reference and "
                         "every row alike (what `tavce animate` does). Default: %(default)s")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON to this path")
    args = ap.parse_args(argv)
    if args.malloc == "tuned" and not keep_freed_memory():
        ap.error("--malloc tuned: not available here (needs Linux with glibc, and TAVCE_MALLOC unset)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    if min(args.batch_sizes) < 1 or args.frames_small < 1 or args.frames_full < 1 or args.threads < 0 \
            or args.repeats < 1:
        ap.error("--batch-sizes and --frames-* must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[Measurement] = []
    notes: list[str] = [f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                        f"({os.cpu_count()} CPUs; other processes slow the timings down)",
                        f"malloc: {args.malloc} (--malloc; the same for the reference and every row)"]
    peak = conv_peak(args.device)
    low_name = [k for k in peak if k != "fp32"][0]
    notes.append(f"hardware: 3x3 conv 512->512 at 64x64 (channels-last, best of 6): fp32 {peak['fp32']:.0f}, "
                 f"{low_name} {peak[low_name]:.0f} G MAC/s = {peak[low_name] / peak['fp32']:.2f}x, the most the low "
                 f"precision alone can give on the convolutions (the rest must come from doing less)")
    configs = {}
    for name in args.configs:
        cfg, _, cfg_notes = load_configs(name, args.params)
        notes += [f"{name}: {n}" for n in cfg_notes if n.startswith("renderer")]
        configs[name] = to_dict(cfg)
        frames = args.frames_small if name == "small" else args.frames_full
        rows += bench_config(name, cfg, frames, args.batch_sizes, args.device, not args.no_reference, args.seed,
                             args.relation_rows, not args.no_switches, args.compile, args.repeats,
                             not args.no_noise_floor)
    if args.checkpoint is not None:
        trained = load_renderer(args.checkpoint)
        notes.append(f"trained: {args.checkpoint} (random source image and motion)")
        configs["trained"] = to_dict(trained.cfg)
        rows += bench_config("trained", trained.cfg, args.frames_small, args.batch_sizes, args.device,
                             not args.no_reference, args.seed, args.relation_rows, not args.no_switches, False,
                             args.repeats, not args.no_noise_floor, trained)

    notes.append(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    device = args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(args.device)
    print(f"\nrender() throughput, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          "random weights\n")
    for n in notes:
        print(f"- {n}")
    gpu_col = args.device.startswith("cuda")
    print(f"\n| config | repeat | method | batch | frames | s | frames/s | vs reference | PSNR vs fp32 (dB) | "
          f"max diff vs ref | compile s | peak RSS (MB){' | peak GPU (MB)' if gpu_col else ''} |")
    print(f"|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:{'|---:' if gpu_col else ''}|")
    for r in rows:
        ratio = "" if r.vs_reference is None else f"{r.vs_reference:.2f}x"
        diff = "" if r.max_diff_vs_reference is None else str(r.max_diff_vs_reference)
        psnr = "" if r.psnr_vs_fp32_db is None else f"{r.psnr_vs_fp32_db:.1f}"
        comp = "" if r.compile_seconds is None else f"{r.compile_seconds:.1f}"
        gpu = f" | {r.peak_gpu_mb:.0f}" if gpu_col else ""
        print(f"| {r.config} {r.image_size}px | {r.repeat} | {r.method} | {r.batch_size} | {r.frames} | "
              f"{r.seconds:.2f} | {r.frames_per_s:.3f} | {ratio} | {psnr} | {diff} | {comp} | {r.peak_rss_mb:.0f}{gpu} |")
    if args.repeats > 1:
        print("\nmedian over repeats (vs reference; PSNR is the same every repeat):\n")
        print("| config | method | batch | median vs reference | min | max |")
        print("|---|---|---:|---:|---:|---:|")
        keys = dict.fromkeys((r.config, r.method, r.batch_size) for r in rows if r.vs_reference is not None)
        for key in keys:
            ratios = [r.vs_reference for r in rows if (r.config, r.method, r.batch_size) == key]
            print(f"| {key[0]} | {key[1]} | {key[2]} | {float(np.median(ratios)):.2f}x | {min(ratios):.2f}x | "
                  f"{max(ratios):.2f}x |")
    print("\npeak RSS: the process's peak so far (cumulative over the rows above).")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "notes": notes, "configs": configs,
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
