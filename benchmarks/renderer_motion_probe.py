"""Where the renderer's motion path goes during training: a probe behind docs/decisions.md ("mask collapse").

    python benchmarks/renderer_motion_probe.py --steps 400
    python benchmarks/renderer_motion_probe.py --steps 600 --variant model.head_pose.zero_init_motion=true \
        --variant model.head_pose.zero_init_motion=true,loss_weights.landmark_flow=10 --background-off 300

Trains the `pretrain_renderer` config of --params (``key=value`` overrides as in renderer_diagnosis.py) with the
stage's own `train_step` and, every --every steps, measures on the first --pairs held-out large-motion pairs (eval
mode, as at inference):
- ``bg``: mean dense-motion mask weight of the identity ("background") candidate (1 = the keypoints are ignored);
- ``warp_px``: mean 2D displacement of the deformation; ``kp_px``: mean 2D distance between source and driving
  keypoints, split into the part due to the rotation (``rot_px``), the translation t (``t_px``) and the expression
  deltas δ (``exp_px``); ``dang_deg``: mean |Δ angle| between H's source and driving estimates (the true pairs
  differ by ~13°); the same keypoint distance with H in training mode (batch statistics) as ``kp_px_train``;
- ``flow_px``: landmark end-point error of the warp (mean |deformation(p_driving) − p_source| per coordinate, px),
  against ``flow_identity_px`` (the identity warp's = the true landmark displacement);
- ``l1``, ``gain_vs_own``: L1 of the reconstruction and its gain over the renderer driven by the source's own motion.
--background-off N removes the identity candidate from the mask's softmax for the first N steps (a curriculum tried
in the diagnosis; implemented here as a forward hook, not a library option). All sizes in px of the small config's
frames.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.data.corpus import FeatureStore, FrameStore, load_split_clips  # noqa: E402
from pipeline.data.renderer import RendererDataset, build_eval_set, crop_to_image_pixels  # noqa: E402
from pipeline.data.sampling import seed_everything, step_loader  # noqa: E402
from pipeline.losses.renderer import landmark_flow_loss, pixels_to_grid  # noqa: E402
from pipeline.models.renderer.blocks import make_coordinate_grid  # noqa: E402
from pipeline.models.renderer.keypoints import transform_keypoints  # noqa: E402
from pipeline.models.tavc import load_tavc  # noqa: E402
from pipeline.train.renderer import RendererTrainer, TrainRendererConfig, audio_relation  # noqa: E402
from renderer_diagnosis import experiment_parser, variant_configs  # noqa: E402


def held_out_points(clips, data, size: int, n: int) -> torch.Tensor:
    """(n, 2, 68, 2) preprocessing landmarks of the first n pairs' source and driving frames in px of `size`."""
    store, frames = FeatureStore(), FrameStore()
    by_id = {c.clip_id: c for c in clips}
    crops: dict[str, int] = {}  # crop side per clip: one decoded frame per clip, not per pair
    out = []
    for clip_id, pos in zip(data.clip_ids[:n], data.positions[:n]):
        clip = by_id[clip_id]
        if clip_id not in crops:
            crops[clip_id] = frames.frames(clip, [0]).shape[2]
        out.append(crop_to_image_pixels(store.get_array(clip, "landmarks")[list(pos), :, :2], crops[clip_id], size))
    return torch.tensor(np.stack(out), dtype=torch.float32)


@torch.no_grad()
def probe(trainer: RendererTrainer, data, points: torch.Tensor, n: int) -> dict[str, float]:
    r, cfg = trainer.renderer, trainer.cfg
    size, ac = cfg.model.image_size, cfg.model.align_corners
    r.eval()
    src, drv = data.source[:n], data.driving[:n]
    kp_c = r.canonical_keypoints(src)
    if trainer.from_images:
        he_s, he_d = trainer.estimate_motions([src, drv])
    else:  # motion_source: coefficients
        he_s, he_d = trainer.map_motions(data.coeffs[:n])
    kp_s, kp_d = transform_keypoints(kp_c, he_s), transform_keypoints(kp_c, he_d)
    relation = audio_relation(trainer.tavc, data.mel[:n]) if r.cerl is not None else None
    out, own = r(src, kp_s, kp_d, relation), r(src, kp_s, kp_s, relation)

    def px(x: torch.Tensor) -> float:
        return float((x[..., :2].norm(dim=-1) * size / 2).mean())

    grid = make_coordinate_grid(out.deformation.shape[1:4], out.deformation.dtype)[None]
    rot = px(kp_c @ he_d.rotation().transpose(1, 2) - kp_c @ he_s.rotation().transpose(1, 2))
    angles = [torch.stack(h.degrees(), 1) for h in (he_s, he_d)]
    pts = pixels_to_grid(points[:n], size, ac)
    if trainer.from_images:  # a copy: training mode must not move the running statistics
        m_s, m_d = copy.deepcopy(r.he_estimator).train()(torch.cat([src, drv])).split([n, n])
    else:  # MappingNet has no batch statistics: training mode = eval mode
        m_s, m_d = he_s, he_d
    row = {"bg": float(out.mask[:, 0].mean()), "warp_px": px(out.deformation - grid), "kp_px": px(kp_d - kp_s),
           "rot_px": rot, "t_px": px((he_d.t - he_s.t)[:, None]), "exp_px": px(he_d.exp - he_s.exp),
           "dang_deg": float((angles[1] - angles[0]).abs().mean()),
           "kp_px_train": px(transform_keypoints(kp_c, m_d) - transform_keypoints(kp_c, m_s)),
           "flow_px": float(landmark_flow_loss(out.deformation, pts[:, 0], pts[:, 1], ac)) * size / 2,
           "flow_identity_px": float((pts[:, 0] - pts[:, 1]).abs().mean()) * size / 2,
           "l1": float((out.prediction - drv).abs().mean()),
           "gain_vs_own": float((own.prediction - drv).abs().mean() - (out.prediction - drv).abs().mean())}
    r.train()
    return row


def run(cfg: TrainRendererConfig, processed: Path, tavc_path: Path, seed: int, every: int, pairs: int,
        background_off: int) -> list[dict]:
    train, held = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, 2)
    seed_everything(seed)
    trainer = RendererTrainer(cfg, seed, load_tavc(tavc_path) if cfg.model.cerl.enabled else None, None,
                              torch.device("cpu"))
    window = 0 if trainer.from_images else cfg.model.mapping.window  # as the stage: MappingNet's windows, no flip
    dataset = RendererDataset(train, seed, cfg.model.image_size, cfg.cache_mb, augment=cfg.augment,
                              pair_sampling=cfg.pair_sampling, coeff_window=window, flip=trainer.from_images)
    data = build_eval_set(held, seed, cfg.model.image_size, cfg.eval_pairs_per_clip, selection="motion",
                          coeff_window=window)
    n = min(pairs, len(data.source))
    points = held_out_points(held, data, cfg.model.image_size, n)
    state = {"off": background_off > 0}

    def drop_background(_module, _inputs, logits):  # the mask conv's logits: candidate 0 = identity
        if state["off"] and _module.training:
            return torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
        return logits

    trainer.renderer.generator.dense_motion_network.mask.register_forward_hook(drop_background)
    rows, t0 = [], time.perf_counter()
    for step, batch in enumerate(step_loader(dataset, cfg.batch_size, 0, cfg.steps, 0)):
        state["off"] = step < background_off
        loss = trainer.train_step(batch, step)["generator_total"]
        if step % every == 0 or step == cfg.steps - 1:
            row = {"step": step, "seconds": round(time.perf_counter() - t0, 1), "loss": round(loss, 3),
                   **{k: round(v, 4) for k, v in probe(trainer, data, points, n).items()}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, steps=400)
    ap.add_argument("--every", type=int, default=50, help="steps between probes")
    ap.add_argument("--pairs", type=int, default=48, help="held-out large-motion pairs probed")
    ap.add_argument("--background-off", type=int, default=0, help="steps without the identity candidate")
    args = ap.parse_args(argv)
    seed, configs = variant_configs(args)
    results = {}
    for name, cfg in configs:
        print(f"## {name} (background off for {args.background_off} steps)", flush=True)
        results[name] = run(cfg, args.processed, args.tavc, seed, args.every, args.pairs, args.background_off)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
