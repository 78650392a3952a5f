"""`animate` end to end on this machine: frames/s, real-time factor, a per-stage breakdown and peak memory (issue 16
item 3).

    python benchmarks/animate_fps.py                      # small (models/) at 10 s and 30 s, full at 4 s, small at 300 s
    python benchmarks/animate_fps.py --quick              # smoke run: small at 3 s, full at 1 s
    python benchmarks/animate_fps.py --runs small:10 full:4 --options fastest --json reports/animate_fps.json
    python benchmarks/animate_fps.py --runs small:300     # long audio: bounded memory (compare with small:30)
    python benchmarks/animate_fps.py --device cuda --runs full:30 --batch-size 32 --options fastest   # one GPU
    python benchmarks/animate_fps.py --runs full:2 --options fastest --batch-size 1 --malloc tuned    # as tavce animate

Each run (``config:seconds``) is one `pipeline.animate.animate` call in a fresh child process, so its peak resident
memory (``ru_maxrss`` of that process) is its own; the ffmpeg encoder's CPU time (``RUSAGE_CHILDREN`` of the child)
is reported apart (not its peak memory: ffmpeg is forked from the child, so its ru_maxrss counts the child's pages). Model loading is timed outside the animate call.

Configs:
- small: the trained models of a pipeline run's ``models/`` folder (``--models``), loaded as `animate` loads them.
- full: the networks at configs/params.full.yaml sizes (pretrain_renderer.model with motion_source: coefficients and
  the ``train`` section's MappingNet, train_audio2coeff.model, train_tavc.model) with RANDOM weights: the architecture's
  cost does not depend on the weights, so the timings hold for trained full-size models (the frames do not). The
  expression basis is the small run's (a 64 x 204 projection; its size does not depend on the config).

Stages (seconds inside one animate call, timed by wrapping the functions animate calls; they sum to the call's wall
time up to "other"): read audio (ffmpeg decode + resample), portrait (face detection, landmarks, coefficient fit),
audio features (the Wav2Lip mel; each chunk's mel windows are cut on demand inside the next two), Audio2Coeff (ExpNet +
PoseVAE, `generate_motion`), MappingNet (per-chunk `map_motion` + the source's), TAVC relation (CERL's C^a per chunk), renderer (`render`, per chunk), encoding (time
`media.write_video` spends beyond producing the frames: pipe writes, the encoder catching up, muxing).

Inputs: the astronaut portrait of tests/mediagen.py and espeak-ng speech (sentences concatenated, then looped to the
wanted length). Real-time factor = audio seconds / wall seconds of the animate call (>= 1 is real time).
`--options` renders through a prepared inference copy (`InferenceOptions.fastest(device)`: the exact switches +
channels-last, bf16 where the CPU supports it; on CUDA fp16 + CUDA graphs), passed to animate as ``tavce animate --fast``
does (the copy is prepared once per call, inside the timed call; CUDA graphs are captured inside it too).
`--device cuda` runs animate on the GPU (the renderer, MappingNet and the TAVC relation; Audio2Coeff stays where
`animate` puts it) and adds the peak allocated GPU memory. `--portrait-cache DIR` keeps the portrait stage's result
(the crop and coefficients that mediapipe found) in DIR/portrait_<config>.pkl: the first run finds it and writes the file, later runs read it
and report the portrait stage as 0 with a note giving the time measured when it was found. It exists for machines
without mediapipe (the lent GPU machine): find the portrait on the CPU machine, carry the file.
The CPU may be shared with other jobs: compare rows of one invocation, and prefer ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.allocator import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FULL_PARAMS = ROOT / "configs/params.full.yaml"
SENTENCES = (
    "The quick brown fox jumps over the lazy dog while the morning sun rises slowly.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A talking head moves its lips in time with the words it hears, frame after frame.",
    "Peter Piper picked a peck of pickled peppers before breakfast on a quiet Tuesday.",
)
STAGES = ("read_audio", "portrait", "features", "audio2coeff", "mapping", "relation", "renderer", "encoding")
DEFAULT_RUNS = ("small:10", "small:30", "full:4", "small:300")
QUICK_RUNS = ("small:3", "full:1")


@dataclass
class Measurement:
    """One animate call in its own process."""

    config: str
    options: str
    audio_s: float
    frames: int
    load_s: float
    wall_s: float
    frames_per_s: float
    realtime_factor: float  # audio seconds / wall seconds
    renderer_ms_per_frame: float
    stages_s: dict[str, float]
    peak_rss_mb: float  # the child process (models, frames in flight)
    peak_gpu_mb: float | None
    encoder_cpu_s: float  # CPU seconds of the ffmpeg children (their ru_maxrss is not theirs: a fork counts the parent's)
    threads: int
    chunk_seconds: float
    batch_size: int
    device: str = "cpu"
    encoder_threads: int = 0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Inputs and models
# ----------------------------------------------------------------------------------------------------------------
def speech_wav(path: Path, seconds: float) -> Path:
    """espeak-ng sentences concatenated and looped to `seconds` of 16 kHz mono speech (wav)."""
    with tempfile.TemporaryDirectory(prefix="animate_fps_") as tmp:
        parts = []
        for k, text in enumerate(SENTENCES):
            p = Path(tmp) / f"s{k}.wav"
            subprocess.run(["espeak-ng", "-s", "160", "-w", str(p), text], check=True, capture_output=True)
            parts.append(p)
        listing = Path(tmp) / "list.txt"
        listing.write_text("".join(f"file '{p}'\n" for p in parts))
        once = Path(tmp) / "once.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i",
                        str(listing), "-ar", "16000", "-ac", "1", str(once)], check=True)
        subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(once),
                        "-t", f"{seconds:.3f}", "-ar", "16000", "-ac", "1", str(path)], check=True)
    return path


def portrait_png(path: Path) -> Path:
    from PIL import Image

    from tests.mediagen import astronaut

    Image.fromarray(astronaut(256)).save(path)
    return path


def full_models(basis_path: Path, seed: int = 0) -> Any:
    """AnimateModels at configs/params.full.yaml sizes with random weights (the cost does not depend on them)."""
    from pipeline.animate import AnimateModels
    from pipeline.config import from_dict
    from pipeline.faces.coeffs import ExpressionBasis
    from pipeline.models.audio2coeff import Audio2Coeff
    from pipeline.models.renderer.renderer import Renderer
    from pipeline.models.tavc import TAVC
    from pipeline.train.audio2coeff import TrainAudio2CoeffConfig
    from pipeline.train.renderer import TrainRendererConfig
    from pipeline.train.tavc import TrainTAVCConfig
    from pipeline.train.tavce import TrainTAVCEConfig

    doc = yaml.safe_load(FULL_PARAMS.read_text())
    mapping = from_dict(TrainTAVCEConfig, doc["train"], "train").mapping
    rcfg = dataclasses.replace(from_dict(TrainRendererConfig, doc["pretrain_renderer"], "pretrain_renderer").model,
                               motion_source="coefficients", mapping=mapping)
    a2c_cfg = from_dict(TrainAudio2CoeffConfig, doc["train_audio2coeff"], "train_audio2coeff").model
    tavc_cfg = from_dict(TrainTAVCConfig, doc["train_tavc"], "train_tavc").model
    torch.manual_seed(seed)
    return AnimateModels(Renderer(rcfg).eval(), Audio2Coeff(a2c_cfg).eval(), TAVC(tavc_cfg).eval(),
                         ExpressionBasis.load(basis_path), {"config": f"{FULL_PARAMS.name} sizes, random weights"})


def load_config(config: str, models: Path, basis: Path | None) -> Any:
    from pipeline.animate import load_models

    if config == "small":
        return load_models(models, expression_basis=basis)
    if config == "full":
        from pipeline.animate import model_files

        return full_models(Path(basis) if basis else model_files(models)["expression_basis"])
    raise ValueError(f"config must be small or full, got {config!r}")


# ----------------------------------------------------------------------------------------------------------------
# One measurement (in the current process)
# ----------------------------------------------------------------------------------------------------------------
class StageTimer:
    """Wraps the functions `pipeline.animate` calls and sums their wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
        return timed

    def wrap_writer(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """media.write_video: its time minus the time spent producing frames (renderer etc., timed on their own)."""
        def timed(path: Any, frames: Any, *args: Any, **kwargs: Any) -> Any:
            produced = [0.0]

            def gen() -> Iterator[np.ndarray]:
                it = iter(frames)
                while True:
                    t0 = time.perf_counter()
                    try:
                        part = next(it)
                    except StopIteration:
                        return
                    finally:
                        produced[0] += time.perf_counter() - t0
                    yield part

            t0 = time.perf_counter()
            try:
                return fn(path, gen(), *args, **kwargs)
            finally:
                self.seconds["encoding"] += time.perf_counter() - t0 - produced[0]
        return timed


def cached_portrait(cache: Path, find: Callable[..., Any]) -> tuple[Callable[..., Any], list[str], bool]:
    """`find_portrait` through a cache file: found and written when `cache` is missing, else read back (see the
    module docstring). Returns the function animate should call, the notes for the measurement and whether the
    portrait is read back (then the stage was not measured in this run)."""
    import pickle

    if cache.is_file():
        saved = pickle.loads(cache.read_bytes())
        note = (f"portrait: read from {cache.name} (found beforehand in {saved['seconds']:.2f} s on "
                f"{saved['machine']}); the portrait column is 0")
        return (lambda *args, **kwargs: saved["portrait"]), [note], True

    def find_and_save(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        portrait = find(*args, **kwargs)
        seconds = time.perf_counter() - t0
        cache.write_bytes(pickle.dumps({"portrait": portrait, "seconds": seconds,
                                        "machine": f"{os.cpu_count()}-core CPU machine"}))
        return portrait
    return find_and_save, [f"portrait: found here and written to {cache.name}"], False


def measure(config: str, image: Path, audio: Path, out: Path, *, models: Path = ROOT / "models",
            basis: Path | None = None, options: str = "none", chunk_seconds: float = 4.0, batch_size: int = 8,
            preloaded: Any | None = None, device: str = "cpu", portrait_cache: Path | None = None,
            encoder_threads: int = 0) -> Measurement:
    """One animate call with its per-stage times; the peak memory figures are this process's (run it alone).

    Args:
        config: ``small`` (the trained `models` folder) or ``full`` (params.full.yaml sizes, random weights).
        image, audio, out: animate's inputs and output.
        options: ``none`` (animate as it is) or ``fastest`` (InferenceOptions.fastest on a copy prepared once).
        preloaded: AnimateModels to use instead of loading `config` (tests).
        device: animate's device (``cpu`` or ``cuda``).
        portrait_cache: see `cached_portrait`.
    """
    import pipeline.animate as A
    from pipeline import audio as audio_mod
    from pipeline import media
    from pipeline.models.renderer.inference import InferenceOptions

    t0 = time.perf_counter()
    m = preloaded if preloaded is not None else load_config(config, models, basis)
    load_s = time.perf_counter() - t0
    notes = ["full: params.full.yaml sizes, RANDOM weights (cost does not depend on weights)"] if config == "full" else []
    timer = StageTimer()
    saved = {name: getattr(A, name) for name in ("read_speech", "find_portrait", "generate_motion", "_relation",
                                                 "render")}
    saved_mel, saved_write = audio_mod.wav2lip_mel, media.write_video
    saved_map = m.renderer.map_motion
    inference = None
    if options != "none":
        if options != "fastest":
            raise ValueError(f"options must be none or fastest, got {options!r}")
        inference = InferenceOptions.fastest(device)
        notes.append(f"options fastest ({device}): {inference}")
    find, replayed = saved["find_portrait"], False
    if portrait_cache is not None:
        find, cache_notes, replayed = cached_portrait(portrait_cache, find)
        notes += cache_notes
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        A.read_speech = timer.wrap("read_audio", saved["read_speech"])
        A.find_portrait = timer.wrap("portrait", find)
        A.generate_motion = timer.wrap("audio2coeff", saved["generate_motion"])
        A._relation = timer.wrap("relation", saved["_relation"])
        A.render = timer.wrap("renderer", saved["render"])
        audio_mod.wav2lip_mel = timer.wrap("features", saved_mel)
        media.write_video = timer.wrap_writer(saved_write)
        m.renderer.map_motion = timer.wrap("mapping", saved_map)
        t0 = time.perf_counter()
        res = A.animate(image, audio, out, models=m, device=device, chunk_seconds=chunk_seconds,
                        batch_size=batch_size, progress=False, options=inference, encoder_threads=encoder_threads)
        wall = time.perf_counter() - t0
    finally:
        for name, fn in saved.items():
            setattr(A, name, fn)
        audio_mod.wav2lip_mel, media.write_video = saved_mel, saved_write
        del m.renderer.map_motion  # back to the class's method
    if replayed:
        timer.seconds["portrait"] = 0.0  # the cache read is no measurement of the stage
    stages = {s: round(timer.seconds.get(s, 0.0), 3) for s in STAGES}
    stages["other"] = round(wall - sum(timer.seconds.values()), 3)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return Measurement(config, options, res.seconds, res.frames, round(load_s, 2), round(wall, 2),
                       round(res.frames / wall, 2), round(res.seconds / wall, 3),
                       round(1000 * timer.seconds["renderer"] / res.frames, 1), stages, round(me.ru_maxrss / 1024, 1),
                       round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                       round(kids.ru_utime + kids.ru_stime, 2),
                       torch.get_num_threads(), chunk_seconds, batch_size, device, encoder_threads, notes)


# ----------------------------------------------------------------------------------------------------------------
# Runs in child processes, table
# ----------------------------------------------------------------------------------------------------------------
def run_child(config: str, seconds: float, work: Path, args: argparse.Namespace) -> Measurement:
    audio = work / f"speech_{seconds:g}s.wav"
    if not audio.exists() and args.speech and (args.speech / audio.name).is_file():
        shutil.copy(args.speech / audio.name, audio)
    if not audio.exists():
        speech_wav(audio, seconds)
        if args.speech:  # keep it for machines without espeak-ng
            args.speech.mkdir(parents=True, exist_ok=True)
            shutil.copy(audio, args.speech / audio.name)
    cmd = [sys.executable, __file__, "--child", config, "--image", str(work / "portrait.png"), "--audio", str(audio),
           "--out", str(work / f"{config}_{seconds:g}s.mp4"), "--models", str(args.models), "--options", args.options,
           "--chunk-seconds", str(args.chunk_seconds), "--batch-size", str(args.batch_size), "--device", args.device,
           "--encoder-threads", str(args.encoder_threads), "--malloc", args.malloc]
    if args.portrait_cache:
        args.portrait_cache.mkdir(parents=True, exist_ok=True)
        cmd += ["--portrait-cache", str(args.portrait_cache / f"portrait_{config}.pkl")]
    if args.basis:
        cmd += ["--basis", str(args.basis)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config}:{seconds:g}: child failed ({proc.returncode})\n{proc.stderr[-3000:]}")
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def table(rows: list[Measurement]) -> str:
    head = (f"{'config':6} {'opts':7} {'audio s':>7} {'frames':>6} {'load s':>6} {'wall s':>7} {'fps':>6} {'RTF':>6} "
            f"{'ms/fr':>7} " + " ".join(f"{s[:9]:>9}" for s in (*STAGES, "other"))
            + f" {'peak MB':>8} {'GPU MB':>7} {'ffmpeg cpu':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.config:6} {r.options:7} {r.audio_s:7.1f} {r.frames:6d} {r.load_s:6.1f} {r.wall_s:7.1f} "
                     f"{r.frames_per_s:6.2f} {r.realtime_factor:6.3f} {r.renderer_ms_per_frame:7.1f} "
                     + " ".join(f"{r.stages_s[s]:9.2f}" for s in (*STAGES, "other"))
                     + f" {r.peak_rss_mb:8.0f} {'-' if r.peak_gpu_mb is None else f'{r.peak_gpu_mb:.0f}':>7}"
                     + f" {r.encoder_cpu_s:10.1f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=None, help="config:seconds ... (default: %s)" % " ".join(DEFAULT_RUNS))
    p.add_argument("--quick", action="store_true", help="smoke run: %s" % " ".join(QUICK_RUNS))
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--basis", type=Path, default=None, help="expression basis (default: animate's lookup)")
    p.add_argument("--options", choices=("none", "fastest"), default="none")
    p.add_argument("--chunk-seconds", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--encoder-threads", type=int, default=0,
                   help="animate's x264 threads (default 0: ffmpeg's choice; 1: the earlier single-threaded encoder)")
    p.add_argument("--portrait-cache", type=Path, default=None, metavar="DIR",
                   help="find the portrait once per config and keep it in DIR (for machines without mediapipe)")
    p.add_argument("--speech", type=Path, default=None,
                   help="folder of speech_<s>s.wav inputs: used when there, else made with espeak-ng and kept there")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="tuned: pipeline.allocator.keep_freed_memory() in each run's process, as `tavce animate` "
                        "does (default: %(default)s, glibc's malloc as it comes)")
    p.add_argument("--child", choices=("small", "full"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        if args.malloc == "tuned" and not keep_freed_memory():
            raise SystemExit("--malloc tuned: not available here (needs Linux with glibc, TAVCE_MALLOC unset)")
        r = measure(args.child, args.image, args.audio, args.out, models=args.models, basis=args.basis,
                    options=args.options, chunk_seconds=args.chunk_seconds, batch_size=args.batch_size,
                    device=args.device, portrait_cache=args.portrait_cache, encoder_threads=args.encoder_threads)
        r.notes.append(f"malloc: {args.malloc}")
        print(json.dumps(asdict(r)))
        return
    runs = args.runs or list(QUICK_RUNS if args.quick else DEFAULT_RUNS)
    work = Path(tempfile.mkdtemp(prefix="animate_fps_"))
    rows: list[Measurement] = []
    try:
        portrait_png(work / "portrait.png")
        for spec in runs:
            config, seconds = spec.split(":")
            r = run_child(config, float(seconds), work, args)
            rows.append(r)
            print(f"# {spec}: {r.frames_per_s} frames/s, RTF {r.realtime_factor}, peak {r.peak_rss_mb:.0f} MB",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gpu = f", GPU: {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"# {' '.join(sys.argv)}  (CPU: {os.cpu_count()} cores{gpu}, torch threads {rows[0].threads if rows else '?'}, "
          f"chunk {args.chunk_seconds} s, batch {args.batch_size}, encoder threads {args.encoder_threads}; "
          "stage columns in seconds)")
    print(table(rows))
    for note in sorted({n for r in rows for n in r.notes}):
        print(f"# {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
