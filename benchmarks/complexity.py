"""Parameters and FLOPs per frame of the face renderer + CERL and of the inference stack, beside the TAVCE paper's
Table III (method.md §4.4).

    python benchmarks/complexity.py                      # full size (RendererConfig defaults, 256x256)
    python benchmarks/complexity.py --config small       # params.yaml's pretrain_renderer.model
    python benchmarks/complexity.py --json reports/complexity.json

How it measures (CPU, random weights, batch 1, eval mode, ``torch.inference_mode``):
- parameters: ``count_parameters`` of each network (exact integers in --json);
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around one forward of each network, run separately (the
  renderer's encode_source / CERL / to_volume / canonical_keypoints / estimate_motion / generate, MappingNet, the
  TAVC audio encoder). The generator is split into dense motion and decoder with the counter's per-module breakdown
  (``get_flop_counts()``) of that one generate call. The counter counts 2 FLOPs per multiply-accumulate of
  convolutions and matrix products only (grid_sample, normalisation, activations and softmax are not counted).
  The paper's "GFLOPs" are multiply-accumulates (method.md §4.4), so the table compares MACs = FLOPs / 2.
- "per frame" follows the paper / method.md convention: the per-frame path of SadTalker (which re-encodes the source for
  every frame) plus the once-per-video source keypoints counted once (method.md §4.4: 602 G + 19.4 G ≈ 621 G).

Audio2Coeff (ExpNet, PoseVAE) is not built yet: its rows print SadTalker's measured parameter counts from
method.md §4.4, marked as reference values; they are kept out of the measured totals and shown in a separate
"incl. reference" line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipeline.audio import MEL_WINDOW_FRAMES, N_MELS  # noqa: E402
from pipeline.config import from_dict, to_dict  # noqa: E402
from pipeline.models import count_parameters  # noqa: E402
from pipeline.models.renderer import (CERL, AppearanceConfig, CERLConfig, DenseMotionConfig,  # noqa: E402
                                      DiscriminatorConfig, GeneratorConfig, HeadPoseConfig, KeypointDetectorConfig,
                                      MappingConfig, MappingNet, Renderer, RendererConfig, transform_keypoints)
from pipeline.models.tavc import TAVC, TAVCConfig, relationship  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Paper Table III (TAVCE, Xu et al. 2025): parameters (M) and "GFLOPs" (= G multiply-accumulates, method.md §4.4).
PAPER = {"SadTalker": (175.4, 623.5), "TAVCE": (178.3, 623.7), "CERL delta": (2.9, 0.2)}
TOLERANCE = 0.10  # acceptance band: the full stack within ±10 % of the paper

# method.md §4.4: SadTalker's public renderer measured at 256x256 on this CPU (random weights), parameters in M.
REF_PARAMS_M = {"generator total": 100.99, "SPADE decoder": 55.36, "dense motion": 43.55,
                 "source encoder + rest": 2.08, "keypoint detector": 41.94, "MappingNet": 10.20,
                 "head-pose estimator": 30.25}
REF_MACS_G = {"per-frame path": 602.0, "source keypoints (once)": 19.4}  # method.md §4.4: 1203 GFLOP / 2 and 19.4 G
# Audio2Coeff, not built yet: SadTalker's measured sizes (method.md §4.4), parameters in M.
REFERENCE_PARAMS_M = {"ExpNet": 2.85, "PoseVAE (inference part)": 3.16}
POSEVAE_TOTAL_M = 11.25

# Fallback when params.yaml has no pretrain_renderer.model: a narrow 64x64 renderer in the spirit of method.md
# §1's small configs (image 64, narrow channels, f = 8 x 4 = 32 channels, shallower hourglasses).
BUILTIN_SMALL = RendererConfig(
    image_size=64, num_kp=15,
    appearance=AppearanceConfig(block_expansion=16, max_features=128, num_down_blocks=2, reshape_channel=8,
                                reshape_depth=4, num_resblocks=2),
    keypoints=KeypointDetectorConfig(block_expansion=16, max_features=128, num_blocks=3, reshape_depth=4),
    head_pose=HeadPoseConfig(block_expansion=16, max_features=256),
    dense_motion=DenseMotionConfig(block_expansion=16, max_features=128, num_blocks=3, compress=4),
    generator=GeneratorConfig(block_expansion=16, num_middle_blocks=2, spade_hidden=32),
    discriminator=DiscriminatorConfig(block_expansion=16, max_features=128, num_blocks=4),
    cerl=CERLConfig(relation_dim=128),
)


@dataclass
class Row:
    """One line of the table. `flops` None = not measured; `measured` False = a reference value from
    method.md."""

    key: str  # stable identifier (JSON, totals)
    name: str
    params: int
    flops: int | None
    when: str  # per frame | once per video | training only | not in totals
    measured: bool = True
    note: str = ""

    @property
    def macs(self) -> float | None:
        return None if self.flops is None else self.flops / 2


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int], Any]:
    """Run `fn` once under FlopCounterMode (inference mode): total FLOPs, FLOPs per module path, and fn's result."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = fn()
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module, out


def params_of(*modules: nn.Module) -> int:
    return sum(count_parameters(m) for m in modules)


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def load_configs(name: str, params: Path) -> tuple[RendererConfig, TAVCConfig, list[str]]:
    """Renderer and TAVC configs of the `full` or `small` setting, with notes on where they came from."""
    notes: list[str] = []
    if name == "full":
        notes.append("renderer: RendererConfig defaults (method.md §4.1 full size, 256x256); "
                     "TAVC audio encoder: Wav2Lip width 1.0, embed_dim 128")
        return RendererConfig(), TAVCConfig(embed_dim=128, audio_width=1.0), notes
    doc = yaml.safe_load(params.read_text()) if params.is_file() else {}
    section = (doc or {}).get("pretrain_renderer", {}) or {}
    if "model" in section:
        cfg = from_dict(RendererConfig, section["model"], "pretrain_renderer.model")
        notes.append(f"renderer: {params.name} pretrain_renderer.model")
    else:
        cfg = BUILTIN_SMALL
        notes.append(f"renderer: {params.name} has no pretrain_renderer.model; using the BUILT-IN small config of "
                     "benchmarks/complexity.py (not the trained one)")
    tavc_section = (doc or {}).get("train_tavc", {}) or {}
    if "model" in tavc_section:
        tavc = from_dict(TAVCConfig, tavc_section["model"], "train_tavc.model")
        notes.append(f"TAVC audio encoder: {params.name} train_tavc.model (audio_width {tavc.audio_width})")
    else:
        tavc = TAVCConfig(embed_dim=cfg.cerl.relation_dim, audio_width=0.25)
        notes.append("TAVC audio encoder: built-in audio_width 0.25")
    if tavc.embed_dim != cfg.cerl.relation_dim:
        notes.append(f"WARNING: TAVC embed_dim {tavc.embed_dim} != cerl.relation_dim {cfg.cerl.relation_dim}")
    return cfg, tavc, notes


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def measure(cfg: RendererConfig, tavc_cfg: TAVCConfig, seed: int = 0, references: bool = True
            ) -> tuple[list[Row], dict[str, Any]]:
    """One forward per network at batch 1; returns the rows and a dict of intermediate numbers for the checks.

    Args:
        cfg, tavc_cfg: the renderer and TAVC metric sizes.
        seed: weight initialisation (the counts do not depend on it).
        references: include the Audio2Coeff reference rows (SadTalker's full-size values; only meaningful at full
            size).
    """
    torch.manual_seed(seed)
    s, d = cfg.image_size, cfg.cerl.relation_dim
    renderer = Renderer(cfg).eval()
    app, gen = renderer.appearance, renderer.generator
    # Both CERL variants, built beside the renderer (its own CERL, when enabled, is one of them, same size).
    cerl = {mode: CERL(CERLConfig(enabled=True, mode=mode, relation_dim=d), app.feature_channels).eval()
            for mode in ("matmul", "diag")}
    mode = cfg.cerl.mode
    other = "diag" if mode == "matmul" else "matmul"
    mapping = MappingNet(MappingConfig(num_kp=cfg.num_kp)).eval()
    tavc = TAVC(tavc_cfg).eval()

    source = torch.rand(1, cfg.image_channel, s, s)  # (1, 3, S, S)
    f_prev = torch.randn(1, tavc_cfg.embed_dim)  # E^a(a_{i-1}), kept from the previous frame in a stream
    relation = relationship(f_prev, torch.randn(1, d))  # (1, D, D)
    coeffs = torch.randn(1, mapping.cfg.coeff_dim, mapping.cfg.window)  # (1, 70, 27)
    mel = torch.randn(1, 1, N_MELS, MEL_WINDOW_FRAMES)  # (1, 1, 80, 16)

    timings: dict[str, float] = {}

    def timed(key: str, fn: Callable[[], Any]) -> tuple[int, dict[str, int], Any]:
        t0 = time.perf_counter()
        result = count_flops(fn)
        timings[key] = time.perf_counter() - t0
        return result

    fl_enc, _, f = timed("encode_source", lambda: renderer.encode_source(source))  # (1, C*D, h, w)
    fl_cerl = {m: timed(f"cerl_{m}", lambda m=m: cerl[m](f, relation))[0] for m in cerl}
    g = cerl[mode](f, relation)  # (1, C*D, h, w)
    fl_vol, _, volume = timed("to_volume", lambda: app.to_volume(g))  # (1, C, D, h, w)
    fl_kp, _, kp_c = timed("canonical_keypoints", lambda: renderer.canonical_keypoints(source))  # (1, K, 3)
    fl_he, _, motion_s = timed("estimate_motion", lambda: renderer.estimate_motion(source))
    fl_map, _, motion_d = timed("mapping", lambda: mapping(coeffs))
    kp_source = transform_keypoints(kp_c, motion_s)  # (1, K, 3)
    kp_driving = transform_keypoints(kp_c, motion_d)  # (1, K, 3)
    fl_gen, per_module, _ = timed("generate", lambda: renderer.generate(volume, kp_source, kp_driving))
    dense_keys = [k for k in per_module if k.endswith(".dense_motion_network")]
    if len(dense_keys) != 1:
        raise RuntimeError(f"cannot find the dense motion network in the FLOP breakdown: {sorted(per_module)}")
    fl_dense = per_module[dense_keys[0]]
    fl_audio, _, _ = timed("audio", lambda: relationship(f_prev, tavc.encode_audio(mel)))

    p_enc = params_of(app.first, app.down_blocks, app.second)
    p_vol = params_of(app.resblocks_3d)
    p_dense = params_of(gen.dense_motion_network)
    p_dec = count_parameters(gen) - p_dense
    p_cerl = {m: count_parameters(module) for m, module in cerl.items()}
    h = cfg.feature_size
    rows = [
        Row("appearance_2d", "appearance encoder 2D (first, down_blocks, second)", p_enc, fl_enc, "per frame",
            note="SadTalker re-encodes per frame; our render(): once per video"),
        Row("appearance_3d", "appearance volume 3D (reshape + resblocks_3d)", p_vol, fl_vol, "per frame",
            note="our render(): per frame with CERL, once per video without"),
        Row("cerl", f"CERL ({mode})", p_cerl[mode], fl_cerl[mode], "per frame",
            note=f"on f (1, {app.feature_channels}, {h}, {h}), D = {d}"
                 + ("" if cfg.cerl.enabled else "; cerl.enabled is false in this config")),
        Row("dense_motion", "dense motion network (+ occlusion)", p_dense, fl_dense, "per frame"),
        Row("decoder", "generator decoder (warp, third, fourth, SPADE decoder)", p_dec, fl_gen - fl_dense,
            "per frame", note="the grid_sample warp is not counted by the FLOP counter"),
        Row("kp_detector", "canonical keypoint detector", count_parameters(renderer.kp_detector), fl_kp,
            "once per video"),
        Row("mapping", "MappingNet", count_parameters(mapping), fl_map, "per frame",
            note=f"input (1, {mapping.cfg.coeff_dim}, {mapping.cfg.window}); the source's own motion: once"
                 + ("" if references else "; MappingConfig defaults (no small MappingNet config yet)")),
        Row("tavc_audio", f"TAVC audio encoder E^a (Wav2Lip x{tavc_cfg.audio_width:g} + fc {tavc_cfg.embed_dim})",
            params_of(tavc.audio_encoder, tavc.audio_fc), fl_audio, "per frame",
            note="one new (1,1,80,16) window per frame: E^a(a_i-1) is kept from the previous frame; "
                 "+ C^a (TAVCE Eq. 2)"),
    ]
    if references:
        rows += [
            Row("expnet", "ExpNet (Audio2Coeff)", round(REFERENCE_PARAMS_M["ExpNet"] * 1e6), None, "per frame",
                measured=False, note="not built (reference value from method.md §4.4)"),
            Row("posevae", "PoseVAE decoder (Audio2Coeff)",
                round(REFERENCE_PARAMS_M["PoseVAE (inference part)"] * 1e6), None, "per frame", measured=False,
                note=f"not built (reference value from method.md §4.4; {POSEVAE_TOTAL_M} M with the training-only "
                     "encoder)"),
        ]
    rows += [
        Row("he_estimator", "head-pose/expression estimator", count_parameters(renderer.he_estimator), fl_he,
            "training only", note="video-driven training; not in the inference stack"),
        Row("cerl_other", f"CERL ({other})", p_cerl[other], fl_cerl[other], "not in totals",
            note="the other cerl.mode, for comparison"),
    ]
    extra = {"timings_s": timings, "dense_motion_key": dense_keys[0],
             "spec_parts": {
                 "generator total": p_enc + p_vol + p_dense + p_dec,
                 "SPADE decoder": count_parameters(gen.decoder),
                 "dense motion": p_dense,
                 "source encoder + rest": p_enc + p_vol + p_dec - count_parameters(gen.decoder),
                 "keypoint detector": count_parameters(renderer.kp_detector),
                 "MappingNet": count_parameters(mapping),
                 "head-pose estimator": count_parameters(renderer.he_estimator)},
             "per_frame_path_flops": fl_enc + fl_vol + fl_gen, "source_keypoints_flops": fl_kp}
    return rows, extra


SADTALKER_KEYS = ("appearance_2d", "appearance_3d", "dense_motion", "decoder", "kp_detector", "mapping")
TAVCE_DELTA_KEYS = ("cerl", "tavc_audio")
REFERENCE_KEYS = ("expnet", "posevae")
ONCE_KEYS = ("kp_detector",)


def totals(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Stack totals: params (M), MACs (G) per frame in the paper convention (per-frame rows + the once-per-video
    rows counted once), and MACs (G) of every further frame."""
    by = {r.key: r for r in rows}

    def line(keys: tuple[str, ...], once_per_video: tuple[str, ...] = ONCE_KEYS) -> dict[str, float]:
        parts = [by[k] for k in keys]
        return {"params_M": sum(r.params for r in parts) / 1e6,
                "macs_G": sum(r.macs or 0.0 for r in parts) / 1e9,
                "per_frame_macs_G": sum(r.macs or 0.0 for r in parts if r.key not in once_per_video) / 1e9}

    tavce = SADTALKER_KEYS + TAVCE_DELTA_KEYS
    out = {"SadTalker-equivalent stack, measured (without CERL and TAVC audio encoder)": line(SADTALKER_KEYS)}
    if all(k in by for k in REFERENCE_KEYS):
        out["SadTalker-equivalent stack incl. reference values"] = line(SADTALKER_KEYS + REFERENCE_KEYS)
    out["TAVCE stack, measured (+ CERL + TAVC audio encoder)"] = line(tavce)
    if all(k in by for k in REFERENCE_KEYS):
        out["TAVCE stack incl. reference values"] = line(tavce + REFERENCE_KEYS)
    out["CERL + TAVC audio encoder (the TAVCE delta)"] = line(TAVCE_DELTA_KEYS)
    # pipeline.render.render encodes the 2D source feature once per video (the volume per frame, for CERL)
    out["TAVCE stack as render() runs it (2D source encoder once), measured"] = line(
        tavce, ONCE_KEYS + ("appearance_2d",))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _diff(ours: float, paper: float) -> str:
    rel = (ours - paper) / paper
    return f"{rel:+.1%} ({'within' if abs(rel) <= TOLERANCE else 'OUTSIDE'} ±{TOLERANCE:.0%})"


def report(name: str, cfg: RendererConfig, rows: list[Row], tot: dict[str, dict[str, float]],
           extra: dict[str, Any], notes: list[str]) -> str:
    s = cfg.image_size
    lines = [f"## Complexity, {name} config ({s}x{s}, batch 1, CPU, random weights, eval, inference_mode)", ""]
    lines += [f"- {n}" for n in notes]
    lines += [f"- FLOPs: torch.utils.flop_counter.FlopCounterMode, each network run separately; dense motion vs "
              f"decoder from the counter's per-module breakdown of one generate() ({extra['dense_motion_key']}). "
              "MACs = FLOPs / 2 (the paper's 'GFLOPs').", ""]
    lines += ["| module | params (M) | GMACs / frame | GFLOPs | when | note |",
              "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.params / 1e6:.3f}{'' if r.measured else ' (ref)'} | "
                     f"{_fmt(None if r.macs is None else r.macs / 1e9, 3)} | "
                     f"{_fmt(None if r.flops is None else r.flops / 1e9, 3)} | {r.when} | {r.note} |")
    lines += ["", "| total | params (M) | GMACs / frame (paper convention) | GMACs per frame after the first |",
              "|---|---:|---:|---:|"]
    for key, v in tot.items():
        lines.append(f"| {key} | {v['params_M']:.2f} | {v['macs_G']:.2f} | {v['per_frame_macs_G']:.2f} |")
    lines += ["", "'paper convention' = per-frame modules + the once-per-video source keypoints counted once "
              "(method.md §4.4: 602 G + 19.4 G ≈ 621 G). ExpNet / PoseVAE FLOPs are not in method.md and not "
              "counted; "
              "ExpNet is a Wav2Lip audio encoder + FC, i.e. about the TAVC audio encoder row at width 1.", ""]
    if name == "full":
        sad = tot["SadTalker-equivalent stack incl. reference values"]
        tav = tot["TAVCE stack incl. reference values"]
        delta = tot["CERL + TAVC audio encoder (the TAVCE delta)"]
        lines += ["### Beside the paper's Table III", "",
                  "| | params (M) ours | paper | diff | GMACs ours | paper | diff |",
                  "|---|---:|---:|---|---:|---:|---|"]
        for label, ours, key in (("SadTalker (stack incl. reference values)", sad, "SadTalker"),
                                 ("TAVCE (stack incl. reference values)", tav, "TAVCE")):
            pp, pf = PAPER[key]
            lines.append(f"| {label} | {ours['params_M']:.2f} | {pp} | {_diff(ours['params_M'], pp)} | "
                         f"{ours['macs_G']:.2f} | {pf} | {_diff(ours['macs_G'], pf)} |")
        pp, pf = PAPER["CERL delta"]
        lines.append(f"| CERL + TAVC audio encoder (delta) | +{delta['params_M']:.2f} | +{pp} | "
                     f"{delta['params_M'] - pp:+.2f} M | +{delta['macs_G']:.2f} | +{pf} | "
                     f"{delta['macs_G'] - pf:+.2f} G |")
        alt = sad["params_M"] - REFERENCE_PARAMS_M["PoseVAE (inference part)"] + POSEVAE_TOTAL_M
        lines += ["", f"With the whole PoseVAE ({POSEVAE_TOTAL_M} M, encoder included) the SadTalker stack has "
                  f"{alt:.2f} M parameters ({_diff(alt, PAPER['SadTalker'][0])}).", ""]
        lines += ["### Against method.md §4.4's measurement of SadTalker's public renderer", "",
                  "| part | params ours (M) | method.md (M) | diff |", "|---|---:|---:|---|"]
        for key, ref in REF_PARAMS_M.items():
            ours = extra["spec_parts"][key] / 1e6
            lines.append(f"| {key} | {ours:.2f} | {ref:.2f} | {(ours - ref) / ref:+.2%} |")
        per_frame = extra["per_frame_path_flops"] / 2e9
        kp = extra["source_keypoints_flops"] / 2e9
        ref_frame, ref_kp = REF_MACS_G["per-frame path"], REF_MACS_G["source keypoints (once)"]
        lines += ["", "| FLOPs | GMACs ours | method.md | diff |", "|---|---:|---:|---|",
                  f"| per-frame path (appearance + dense motion + decoder) | {per_frame:.2f} | {ref_frame} | "
                  f"{(per_frame - ref_frame) / ref_frame:+.2%} |",
                  f"| source keypoints (once) | {kp:.2f} | {ref_kp} | {(kp - ref_kp) / ref_kp:+.2%} |",
                  f"| sum | {per_frame + kp:.2f} | {ref_frame + ref_kp:.1f} | "
                  f"{(per_frame + kp - ref_frame - ref_kp) / (ref_frame + ref_kp):+.2%} |", ""]
    times = ", ".join(f"{k} {v:.1f}s" for k, v in extra["timings_s"].items())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines += [f"Measurement time (CPU, {torch.get_num_threads()} threads, load average {load}; under the FLOP "
              f"counter, not a speed benchmark): {times}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("full", "small", "both"), default="full",
                    help="full: RendererConfig defaults at 256x256 (default); small: params.yaml's "
                         "pretrain_renderer.model (a built-in small config when absent, said in the output); both")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file for --config small")
    ap.add_argument("--json", type=Path, default=None, help="also write the tables as JSON to this path")
    ap.add_argument("--seed", type=int, default=0, help="weight initialisation seed (counts do not depend on it)")
    args = ap.parse_args(argv)

    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "configs": {}}
    for name in (("full", "small") if args.config == "both" else (args.config,)):
        cfg, tavc_cfg, notes = load_configs(name, args.params)
        rows, extra = measure(cfg, tavc_cfg, args.seed, references=name == "full")
        tot = totals(rows)
        print(report(name, cfg, rows, tot, extra, notes), flush=True)
        result["configs"][name] = {"renderer_config": to_dict(cfg), "tavc_config": to_dict(tavc_cfg),
                                   "notes": notes, "rows": [asdict(r) | {"macs": r.macs} for r in rows],
                                   "totals": tot, "spec_parts_params": extra["spec_parts"],
                                   "per_frame_path_flops": extra["per_frame_path_flops"],
                                   "source_keypoints_flops": extra["source_keypoints_flops"],
                                   "timings_s": extra["timings_s"]}
    result["paper"] = {k: {"params_M": v[0], "gmacs": v[1]} for k, v in PAPER.items()}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
