"""Seconds per optimiser step of the training loops at the small (params.yaml) and full (configs/params.full.yaml)
configurations, on random inputs — the figure a GPU user needs to size a full-config run.

    python benchmarks/train_step.py                                   # small config, CPU
    python benchmarks/train_step.py --device cuda --configs small full --json reports/train_step_cuda.json

For each config it builds the `pretrain_renderer` trainer (renderer + discriminator + perceptual loss, with the
discriminator active), the `train` stage's trainer (the same loop on the renderer driven by MappingNet, with CERL and
the CAR loss, as pipeline.train.tavce.renderer_config makes it) and the `train_tavc` model exactly as the stages do (sections read strictly from the params
file; random initialisation, the perceptual loss's configured fallback when no VGG weights are set), feeds random
batches of the configured batch size and image size, and times `steps` steps after `warmup` steps. A step is the
stage's own code path (`RendererTrainer.train_step`; TAVC forward + TAVCE Eq. 3/4 loss + Adam step), data loading
excluded. Peak GPU memory per row with --device cuda. Figures are machine-specific: rerun the small config in the
same call as the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.audio import MEL_WINDOW_FRAMES, N_MELS  # noqa: E402
from pipeline.config import from_dict  # noqa: E402
from pipeline.losses.tavc import TAVCLoss  # noqa: E402
from pipeline.models import count_parameters  # noqa: E402
from pipeline.models.tavc import TAVC, TAVCConfig  # noqa: E402
from pipeline.models.visual_encoder import ROI_SIZE  # noqa: E402
from pipeline.train.renderer import RendererTrainer, TrainRendererConfig  # noqa: E402
from pipeline.train.tavc import TrainTAVCConfig  # noqa: E402
from pipeline.train.tavce import TrainTAVCEConfig, renderer_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"small": ROOT / "params.yaml", "full": ROOT / "configs/params.full.yaml"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, warmup: int, steps: int) -> tuple[float, float | None]:
    for k in range(warmup):
        step(k)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(k)
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def renderer_row(cfg: TrainRendererConfig, device: torch.device, warmup: int, steps: int,
                 loop: str = "pretrain_renderer") -> dict:
    cfg = dataclasses.replace(cfg, gan_start=0)
    torch.manual_seed(0)
    needs_tavc = cfg.model.cerl.enabled or cfg.loss_weights.car > 0  # CERL's c^a, CAR's encoders
    tavc = TAVC(TAVCConfig(embed_dim=cfg.model.cerl.relation_dim, audio_width=1.0)).eval().requires_grad_(False) \
        if needs_tavc else None
    trainer = RendererTrainer(cfg, 0, tavc, None, device)
    b, s = cfg.batch_size, cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    src = torch.rand(b, 3, s, s, generator=g)
    batch = {"source": src.to(device), "driving": (src.flip(-1)).to(device),
             "mel": torch.randn(b, 2, 1, N_MELS, MEL_WINDOW_FRAMES, generator=g).to(device),
             "pose": (10.0 * torch.randn(b, 2, 3, generator=g)).to(device),  # degrees, for pose_teacher=coefficients
             "landmarks": (torch.rand(b, 2, 68, 2, generator=g) * (s - 1)).to(device)}  # px: keypoint anchors, flow
    if cfg.loss_weights.car > 0:  # CAR: the real frame d-1 and its landmarks
        batch["previous"] = torch.rand(b, 3, s, s, generator=g).to(device)
        batch["landmarks_previous"] = (torch.rand(b, 68, 2, generator=g) * (s - 1)).to(device)
    if cfg.model.motion_source == "coefficients":  # MappingNet's coefficient windows of source and driving
        batch["coeffs"] = (0.1 * torch.randn(b, 2, cfg.model.mapping.coeff_dim, cfg.model.mapping.window,
                                             generator=g)).to(device)
    seconds, peak = _timed(lambda k: trainer.train_step(batch, k), device, warmup, steps)
    return {"loop": loop, "batch": b, "image": s, "params_M": count_parameters(trainer.renderer) / 1e6,
            "s_per_step": seconds, "samples_per_s": b / seconds, "peak_gpu_MB": peak,
            "perceptual": trainer.perceptual.extractor_name}


def tavc_row(cfg: TrainTAVCConfig, device: torch.device, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = TAVC(cfg.model).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = TAVCLoss(cfg.alpha)
    b = cfg.batch_size
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(b, 2, 1, N_MELS, MEL_WINDOW_FRAMES, generator=g).to(device)
    roi = torch.rand(b, 3, 3, ROI_SIZE, ROI_SIZE, generator=g).mul(2).sub(1).to(device)

    def step(_: int) -> None:
        f_a, f_v = model(mel, roi)  # (B, 2, D), (B, 3, D)
        loss = loss_fn(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 1], f_v[:, 2]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds, peak = _timed(step, device, warmup, steps)
    return {"loop": "train_tavc", "batch": b, "image": ROI_SIZE, "params_M": count_parameters(model) / 1e6,
            "s_per_step": seconds, "samples_per_s": b / seconds, "peak_gpu_MB": peak, "perceptual": ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=sorted(PARAMS), default=["small"])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training-step time, {name}, torch {torch.__version__}, random weights and inputs\n")
    rows = []
    for config in args.configs:
        params = yaml.safe_load(PARAMS[config].read_text())
        r_cfg = from_dict(TrainRendererConfig, params["pretrain_renderer"], "pretrain_renderer")
        t_cfg = from_dict(TrainTAVCConfig, params["train_tavc"], "train_tavc")
        # The `train` stage (TAVCE's audio-driven stage) runs the same loop on the pretrained renderer's model with
        # MappingNet, CERL and CAR (pipeline.train.tavce.renderer_config): its step is what sizes issue 12's run.
        a_cfg = renderer_config(from_dict(TrainTAVCEConfig, params["train"], "train"), r_cfg.model,
                                r_cfg.keypoint_landmarks)
        for row in (renderer_row(r_cfg, device, args.warmup, args.steps),
                    renderer_row(a_cfg, device, args.warmup, args.steps, loop="train (MappingNet + CERL + CAR)"),
                    tavc_row(t_cfg, device, args.warmup, args.steps)):
            rows.append({"config": config, **row})
    print("| config | loop | batch | input px | params (M) | s / step | samples / s | peak GPU (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = f"{r['peak_gpu_MB']:.0f}" if r["peak_gpu_MB"] is not None else ""
        print(f"| {r['config']} | {r['loop']} | {r['batch']} | {r['image']} | {r['params_M']:.2f} | "
              f"{r['s_per_step']:.3f} | {r['samples_per_s']:.1f} | {peak} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
