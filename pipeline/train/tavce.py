"""TAVCE's audio-driven training stage (Algorithm 1 stage 2 of the paper's renderer side; TAVCE §III-C/D, Eq. 5-6;
method.md §5): MappingNet + the pretrained renderer with CERL, fine-tuned with the renderer losses and CAR.

One step:
1. a driving frame v_i of a training clip and a random source frame v_0 ≠ i of the same clip;
2. the 27-frame window of 70-d coefficients around frame i (and around frame 0 for the source) -> MappingNet ->
   head motion -> keypoints ``x = R x_c + t + δ`` (x_c from the source by the keypoint detector);
3. ``c^a`` from the mel windows of (a_{i−1}, a_i) by the frozen TAVC audio encoder; ``g = CERL(E_f(v_0), c^a)``;
   ``v̂_i = G(g, x_0, x_i)``;
4. renderer losses (perceptual, hinge GAN + feature matching, keypoint / deformation priors, L1 where configured)
   + CAR (Eq. 6, :class:`pipeline.losses.car.CARLoss`) on the mouth ROIs of the real v_{i−1} and of v̂_i; Adam with
   MappingNet at ``lr`` (the paper's 2e-4) and the rest of the renderer at ``renderer_lr``; the discriminator at
   ``renderer_lr``.

The renderer starts from `pretrain_renderer`'s checkpoint (every network it has; a MappingNet it lacks starts fresh
from ``mapping``). The step, its evaluation and its report are those of the pretraining loop
(`pipeline.train.renderer`), run with the configuration this module derives (:func:`renderer_config`): this stage
is that loop with the motion from coefficients, CAR on, and an initial model. Ablations (the paper's Table IV):
``cerl.enabled: false`` (a renderer without CERL; the pretrained CERL weights are not used) and ``car.weight: 0``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.checkpoint import WeightsError, load_checkpoint
from pipeline.config import from_dict
from pipeline.data.renderer import PairSampling
from pipeline.losses.renderer import PerceptualConfig, RendererLossWeights
from pipeline.models.renderer.mapping import MappingConfig
from pipeline.models.renderer.renderer import CHECKPOINT_KIND, RendererConfig
from pipeline.tracking import Tracker
from pipeline.train.common import LRSchedule, torch_threads
from pipeline.train.distributed import Distributed
from pipeline.train.renderer import RendererRunResult, TrainRendererConfig, _pretrain_renderer, write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CARSwitch:
    """CAR (TAVCE Eq. 6). weight: its loss weight (paper 0.1; 0 = the "w/o CAR" ablation)."""

    weight: float = 0.1


@dataclass(frozen=True)
class CERLSwitch:
    """CERL (TAVCE Eq. 5). enabled: false = the "w/o CERL" ablation (a renderer without the module)."""

    enabled: bool = True


@dataclass(frozen=True)
class AudioDrivenLossWeights:
    """Renderer loss weights of this stage (CAR's is ``car.weight``; the equivariance term needs the image
    estimator, which this stage does not use). Defaults: face-vid2vid's / SadTalker's."""

    perceptual: float = 10.0
    gan: float = 1.0
    feature_matching: float = 10.0
    keypoint_prior: float = 10.0
    deformation_prior: float = 5.0
    head_pose: float = 0.0  # with pose_teacher: coefficients, MappingNet's angles against its input's pose
    l1: float = 0.0
    keypoint_anchor: float = 0.0  # keypoints tied to the landmarks pretraining tied them to (its keypoint_landmarks)
    mouth: float = 0.0  # L1 on the driving frame's mouth region (this project's; 0 = the paper)


@dataclass(frozen=True)
class TrainTAVCEConfig:
    """`train` section of params.yaml (with `common.seed`)."""

    seed: int | None = None  # this stage's own seed (None = common.seed): Table IV's seeds rerun only `train`
    lr: float = 2e-4  # MappingNet (TAVCE)
    renderer_lr: float = 2e-4  # every other renderer network and the discriminator (face-vid2vid's)
    betas: tuple[float, float] = (0.5, 0.999)
    lr_schedule: LRSchedule = "constant"
    steps: int = 12_500  # TAVCE
    batch_size: int = 16
    car: CARSwitch = field(default_factory=CARSwitch)
    cerl: CERLSwitch = field(default_factory=CERLSwitch)
    mapping: MappingConfig = field(default_factory=MappingConfig)  # used when the pretrained renderer has none
    loss_weights: AudioDrivenLossWeights = field(default_factory=AudioDrivenLossWeights)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    pose_teacher: Literal["coefficients", "none"] = "none"
    pair_sampling: PairSampling = "uniform"
    gan_start: int = 0
    augment: bool = True  # colour jitter (no flip: the expression coefficients of a mirrored face are not known)
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_pairs_per_clip: int = 8
    eval_every: int = 2500
    landmark_size: int = 256
    bootstrap: int = 2000
    log_every: int = 100
    checkpoint_every: int = 2500
    workers: int = 1
    cache_mb: int = 512
    threads: int = 0

    def validate(self) -> None:
        if self.car.weight < 0:
            raise ValueError(f"car.weight must be >= 0, got {self.car.weight}")
        if not self.lr > 0 or not self.renderer_lr > 0:
            raise ValueError(f"lr and renderer_lr must be > 0, got {self.lr}, {self.renderer_lr}")


def renderer_config(cfg: TrainTAVCEConfig, init_model: RendererConfig,
                    keypoint_landmarks: tuple[int, ...] = ()) -> TrainRendererConfig:
    """The pretraining loop's configuration that runs this stage: the pretrained renderer's model with the motion from
    coefficients (its MappingNet, or a new one from ``cfg.mapping``) and CERL as ``cfg.cerl`` says; CAR as a loss
    term; MappingNet at ``cfg.lr``; the keypoint anchors of pretraining (`keypoint_landmarks`, from its checkpoint)
    when ``loss_weights.keypoint_anchor`` > 0."""
    cfg.validate()
    if cfg.loss_weights.keypoint_anchor > 0 and not keypoint_landmarks:
        raise ValueError("train.loss_weights.keypoint_anchor > 0, but the pretrained renderer's keypoints were not "
                         "anchored to landmarks (its checkpoint has no keypoint_landmarks): set it to 0")
    has_mapping = init_model.motion_source == "coefficients"
    model = dataclasses.replace(init_model, motion_source="coefficients",
                                mapping=init_model.mapping if has_mapping else cfg.mapping,
                                cerl=dataclasses.replace(init_model.cerl, enabled=cfg.cerl.enabled))
    w = cfg.loss_weights
    weights = RendererLossWeights(perceptual=w.perceptual, gan=w.gan, feature_matching=w.feature_matching,
                                  equivariance=0.0, keypoint_prior=w.keypoint_prior, head_pose=w.head_pose,
                                  deformation_prior=w.deformation_prior, l1=w.l1, landmark_flow=0.0,
                                  keypoint_anchor=w.keypoint_anchor, mouth=w.mouth, car=cfg.car.weight)
    out = TrainRendererConfig(
        model=model, perceptual=cfg.perceptual, loss_weights=weights, batch_size=cfg.batch_size,
        lr=cfg.renderer_lr, mapping_lr=cfg.lr, betas=cfg.betas, lr_schedule=cfg.lr_schedule, steps=cfg.steps,
        gan_start=cfg.gan_start, augment=cfg.augment, train_splits=cfg.train_splits, eval_splits=cfg.eval_splits,
        eval_pairs_per_clip=cfg.eval_pairs_per_clip, eval_every=cfg.eval_every, landmark_size=cfg.landmark_size,
        bootstrap=cfg.bootstrap, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        workers=cfg.workers, cache_mb=cfg.cache_mb, threads=cfg.threads,
        pose_teacher=cfg.pose_teacher, pair_sampling=cfg.pair_sampling,
        keypoint_landmarks=tuple(keypoint_landmarks) if cfg.loss_weights.keypoint_anchor > 0 else ())
    out.validate()
    return out


def init_configs(path: str | os.PathLike[str]) -> tuple[RendererConfig, tuple[int, ...]]:
    """The RendererConfig and the keypoint anchors (``keypoint_landmarks``; empty for checkpoints written before them
    or trained without them) stored in a renderer checkpoint (raises WeightsError naming the file)."""
    state = load_checkpoint(path, kind=CHECKPOINT_KIND)
    try:
        model = from_dict(RendererConfig, state["config"]["model"], "model", fill_defaults=True)
        anchors = tuple(int(i) for i in state["config"].get("keypoint_landmarks", ()))
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path}: no usable renderer config ({err})") from err
    return model, anchors


def train_tavce(cfg: TrainTAVCEConfig, seed: int, *, processed: str | os.PathLike[str], out: str | os.PathLike[str],
                reports: str | os.PathLike[str], tracker: Tracker, tavc: str | os.PathLike[str] | None,
                init: str | os.PathLike[str], progress: bool = True,
                dist: Distributed | None = None) -> RendererRunResult | None:
    """The stage `train`: fine-tune the pretrained renderer `init` with MappingNet and CAR.

    Writes ``<out>/checkpoint.pt`` (a ``renderer`` checkpoint with MappingNet inside: `load_renderer` loads it, and
    ``tavce animate`` drives it from coefficients), resumed after a kill, and the report folder of the pretraining
    loop (metrics.json with the held-out near-static and large-motion sets, TAVC similarity, sample grids, curves).
    `dist`: this process's place in a torchrun run (None: one plain process on the CPU); ranks other than 0 train
    their share of every batch and return None.
    """
    if tavc is None:
        raise ValueError("stage train needs the trained TAVC metric (--tavc): CERL's c^a and CAR's encoders")
    rcfg = renderer_config(cfg, *init_configs(init))
    seed = seed if cfg.seed is None else cfg.seed
    with torch_threads(rcfg.threads):
        run = _pretrain_renderer(Path(processed), tavc, Path(out), Path(reports), rcfg, seed, tracker, progress,
                                 init=Path(init), desc="train", dist=dist)
    if run is None:
        return None
    run.metrics["ablation"] = {"cerl": cfg.cerl.enabled, "car_weight": cfg.car.weight}
    tracker.log_metrics({"train/seconds": run.seconds})
    tracker.set_tags({"perceptual_extractor": run.metrics["extractors"]["perceptual"],
                      "ablation": f"cerl={cfg.cerl.enabled},car={cfg.car.weight:g}"})
    write_report(run, reports)
    return run


__all__ = ["AudioDrivenLossWeights", "CARSwitch", "CERLSwitch", "TrainTAVCEConfig", "renderer_config",
           "train_tavce"]
