"""Training stage 2a of TAVCE: video-driven pretraining of the face renderer with CERL (TAVCE §III-C, §III-E;
method.md §4.3; face-vid2vid's training recipe).

One step (face-vid2vid's generator / discriminator full models, written out):
1. a source frame ``v_0`` and a driving frame ``v_d`` of the same clip; canonical keypoints ``x_c = L(v_0)``; head
   pose / expression of both frames from the estimator H; keypoints ``x_s = R_s x_c + t_s + δ_s`` and
   ``x_d = R_d x_c + t_d + δ_d``;
2. ``c^a = C(E_a(a_{d-1}), E_a(a_d))`` (TAVCE Eq. 2) from the frozen TAVC audio encoder on the driving frame's mel
   windows; ``g = CERL(F(v_0), c^a)`` (TAVCE Eq. 5); ``v̂_d = G(g, x_s, x_d)``;
3. generator losses: multi-scale perceptual, hinge GAN + feature matching, equivariance (a random affine + TPS
   warp of the driving frame must move H's keypoints with it), keypoint prior, deformation prior, head pose
   (only with a pose teacher), L1; one Adam step on F, CERL, L, H, G;
4. discriminator: hinge loss on ``v_d`` vs the detached ``v̂_d``; one Adam step on D.

Held-out evaluation (speakers never trained on): every fixed (source, driving) pair is reconstructed from the
driving frame's estimated motion; the report compares it with the trivial baseline "output the source frame" on
L1 and on the distance of 68 landmarks detected (same detector, same resolution) on the generated frame, the source
and the driving frame.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from pipeline.checkpoint import load_state_strict, save_checkpoint
from pipeline.data.corpus import MOUTH, load_split_clips
from pipeline.data.renderer import PairSampling, RendererDataset, RendererEvalSet, build_eval_set
from pipeline.data.sampling import sample_generator, seed_everything, step_loader
from pipeline.io import atomic_path, file_digest, write_json
from pipeline.losses.car import CARLoss, mouth_roi_torch
from pipeline.losses.renderer import (PerceptualConfig, PerceptualPyramidLoss, RandomTransform, RendererLossWeights,
                                      TransformConfig,
                                      deformation_prior_loss, discriminator_hinge_loss, equivariance_loss,
                                      feature_matching_loss, generator_hinge_loss, head_pose_loss,
                                      keypoint_prior_loss, landmark_flow_loss, pixels_to_grid,
                                      keypoint_anchor_loss,
                                      mouth_reconstruction_l1, pose_bin_cross_entropy, reconstruction_l1,
                                      weighted_total)
from pipeline.metrics.bootstrap import bootstrap_ci
from pipeline.models import count_parameters
from pipeline.models.renderer.keypoints import HeadMotion, bins_to_degrees, transform_keypoints
from pipeline.models.renderer.renderer import (CHECKPOINT_KIND, Renderer, RendererConfig, build_discriminator,
                                               load_sadtalker_renderer)
from pipeline.models.tavc import TAVC, load_tavc, relationship
from pipeline.tracking import Tracker
from pipeline.train.common import (History, LRSchedule, fingerprint, restore, resumable, scheduled_lr,
                                   torch_threads)
from pipeline.train.distributed import Distributed
from pipeline.viz import plot_curves, save_png, to_uint8

log = logging.getLogger(__name__)

EVAL_SAMPLES_IN_GRID = 8  # rows of the sample grid written at every evaluation
SEEN_PAIRS_PER_CLIP = 2  # diagnostic pairs per training clip (identities seen in training; L1 only)


@dataclass(frozen=True)
class RendererWeightsConfig:
    """Public checkpoints (null = none).

    Attributes:
        sadtalker: SadTalker's facevid2vid checkpoint to start the renderer from (needs the full model size; CERL
            starts as the identity, see `pipeline.models.renderer.cerl`).
        head_pose: Hopenet weights (hopenet_robust_alpha1.pkl): the pose teacher of the head-pose loss when
            ``pose_teacher: hopenet``. Without them that teacher is absent and the loss is off.
    """

    sadtalker: str | None = None
    head_pose: str | None = None


@dataclass(frozen=True)
class TrainRendererConfig:
    """`pretrain_renderer` section of params.yaml (with `common.seed`)."""

    model: RendererConfig = RendererConfig()
    perceptual: PerceptualConfig = PerceptualConfig()
    loss_weights: RendererLossWeights = RendererLossWeights()
    transform: TransformConfig = TransformConfig()  # random affine + TPS warp of the equivariance loss
    weights: RendererWeightsConfig = RendererWeightsConfig()
    batch_size: int = 16
    lr: float = 2e-4  # face-vid2vid, all networks
    mapping_lr: float | None = None  # MappingNet's own learning rate (TAVCE: 2e-4); None = lr
    betas: tuple[float, float] = (0.5, 0.999)  # face-vid2vid's Adam
    lr_schedule: LRSchedule = "constant"
    steps: int = 200_000
    gan_start: int = 0  # steps trained without the discriminator first (0: from the start, as face-vid2vid)
    augment: bool = True  # FOMM / face-vid2vid: shared random flip + colour jitter of source and driving frame
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_pairs_per_clip: int = 8
    eval_every: int = 5000  # held-out curve + sample grid every N steps (0: only at the end)
    landmark_size: int = 256  # frames are resized to this side before landmark detection (evaluation)
    bootstrap: int = 2000
    log_every: int = 100
    checkpoint_every: int = 5000
    workers: int = 1
    cache_mb: int = 512  # per-worker cache of decoded, resized clips
    threads: int = 0  # torch threads while training (0 = torch default)
    # How the head-pose/expression estimator H sees the frames of a step. `joint`: source, driving and the
    # equivariance-warped driving frames in ONE call, so that its BatchNorm layers normalise them with the same
    # statistics and the pose/expression difference between them survives; `separate`: one call per kind, as in the
    # face-vid2vid / FOMM reference code (fine at their batch of 16+, harmful at a CPU batch of 4: decisions.md).
    estimator_batch: Literal["joint", "separate"] = "joint"
    # Targets of the head-pose loss (face-vid2vid supervises H's angles with a pretrained pose network): `hopenet`
    # (weights.head_pose; face-vid2vid's choice), `coefficients` (the yaw/pitch/roll preprocessing fitted to every
    # frame's landmarks: a pose teacher that is always there), `none`. Source and driving angles are supervised.
    pose_teacher: Literal["hopenet", "coefficients", "none"] = "hopenet"
    # Training pairs: `uniform` (face-vid2vid: any two frames of a clip) | `motion` (the source is the most
    # different of 4 draws: more pairs that need the motion path; pipeline.data.renderer.RendererDataset).
    pair_sampling: PairSampling = "uniform"
    # Which of preprocessing's 68 landmarks (iBUG order) keypoint k is tied to by the `keypoint_anchor` loss (one per
    # keypoint, len = model.num_kp; empty = none). docs/decisions.md, "Keypoints anchored to landmarks".
    keypoint_landmarks: tuple[int, ...] = ()

    def validate(self) -> None:
        for name in ("batch_size", "eval_pairs_per_clip", "log_every", "checkpoint_every", "bootstrap",
                     "landmark_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "gan_start", "eval_every", "workers", "cache_mb", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mapping_lr is not None and not self.mapping_lr > 0:
            raise ValueError(f"mapping_lr must be > 0 (or null = lr), got {self.mapping_lr}")
        if self.loss_weights.car > 0 and self.model.image_size < 16:
            raise ValueError("loss_weights.car needs image_size >= 16 (the mouth ROI)")
        if not self.lr > 0 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"lr must be > 0 and betas in [0, 1), got lr {self.lr}, betas {self.betas}")
        if not self.train_splits or not self.eval_splits:
            raise ValueError("train_splits and eval_splits must not be empty")
        if set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"eval_splits {list(self.eval_splits)} overlap train_splits {list(self.train_splits)}")
        if self.loss_weights.keypoint_anchor > 0 and len(self.keypoint_landmarks) != self.model.num_kp:
            raise ValueError(f"keypoint_landmarks: loss_weights.keypoint_anchor > 0 needs one landmark per keypoint "
                             f"({self.model.num_kp}), got {len(self.keypoint_landmarks)}")
        bad = [i for i in self.keypoint_landmarks if not 0 <= i < 68]
        if bad or len(set(self.keypoint_landmarks)) != len(self.keypoint_landmarks):
            raise ValueError(f"keypoint_landmarks must be distinct indices in 0..67, got {list(self.keypoint_landmarks)}")
        self.model.validate()
        self.perceptual.validate()
        self.loss_weights.validate()
        self.transform.validate()


@dataclass
class GeneratorStep:
    """Everything one generator pass produces: the prediction, the driving keypoints and each (unweighted) loss
    term, named as the fields of :class:`RendererLossWeights`."""

    prediction: torch.Tensor  # (B, 3, H, W) in [0, 1]
    kp_driving: torch.Tensor  # (B, K, 3)
    kp_source: torch.Tensor | None = None  # (B, K, 3)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RendererRunResult:
    """What :func:`pretrain_renderer` hands back to the stage."""

    metrics: dict[str, Any]
    history: History
    per_sample: list[dict[str, Any]]
    seconds: float = 0.0  # training wall time (MLflow and the log; not metrics.json)


def learning_rate(cfg: TrainRendererConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based), see :func:`pipeline.train.common.scheduled_lr`."""
    return scheduled_lr(cfg.lr, step, cfg.steps, cfg.lr_schedule)


def _fingerprint_config(cfg: TrainRendererConfig) -> TrainRendererConfig:
    # Settings that change neither the batches nor the weights: a run may resume with other values.
    return dataclasses.replace(cfg, workers=0, cache_mb=0, eval_every=0, bootstrap=1, log_every=1, threads=0,
                               landmark_size=1)


def audio_relation(tavc: TAVC | None, mel: torch.Tensor) -> torch.Tensor | None:
    """``C^a_{d-1,d}`` (TAVCE Eq. 2, unnormalised; CERL normalises it) from the frozen TAVC audio encoder.

    Args:
        tavc: frozen TAVC metric, or None (no CERL) -> None.
        mel: (B, 2, 1, 80, 16) mel windows of the driving frames d-1 and d.
    Returns:
        (B, D, D) or None.
    """
    if tavc is None:
        return None
    with torch.no_grad():
        f_a = tavc.encode_audio(mel.flatten(0, 1)).unflatten(0, (mel.shape[0], 2))  # (B, 2, D)
        return relationship(f_a[:, 0], f_a[:, 1])  # (B, D, D)


class RendererTrainer:
    """The renderer, its discriminator, the frozen helpers (TAVC, pose teacher, perceptual network) and the two
    Adam optimizers; :meth:`generator_step` / :meth:`discriminator_step` are one face-vid2vid training step.

    `dist` (a torchrun rank, `pipeline.train.distributed`) sets the device, the autocast precision, the rank's rows
    of each global batch and the gradient averaging; None is one plain fp32 process on `device`."""

    def __init__(self, cfg: TrainRendererConfig, seed: int, tavc: TAVC | None,
                 pose_teacher: torch.nn.Module | None, device: torch.device | None = None,
                 dist: Distributed | None = None) -> None:
        self.dist = dist or Distributed(device=torch.device(device or "cpu"))
        self.cfg, self.seed, self.device = cfg, seed, self.dist.device
        device = self.device
        self.renderer, self.discriminator = self.dist.prepare(Renderer(cfg.model), build_discriminator(cfg.model))
        self.tavc = tavc.to(device) if tavc is not None else None
        self.pose_teacher = pose_teacher.to(device) if pose_teacher is not None else None
        self.perceptual = PerceptualPyramidLoss(cfg.perceptual).to(device)
        self.w = cfg.loss_weights
        self.car = CARLoss(self.tavc) if self.w.car > 0 else None
        if self.w.car > 0 and self.tavc is None:
            raise ValueError("loss_weights.car > 0 needs the trained TAVC metric")
        trainable = [(n, p) for n, p in self.renderer.named_parameters() if p.requires_grad]
        if cfg.mapping_lr is None:
            groups = [{"params": [p for _, p in trainable], "base_lr": cfg.lr}]
        else:  # TAVCE: MappingNet has its own learning rate
            groups = [{"params": [p for n, p in trainable if not n.startswith("mapping.")], "base_lr": cfg.lr},
                      {"params": [p for n, p in trainable if n.startswith("mapping.")], "base_lr": cfg.mapping_lr}]
        self.opt_g = torch.optim.Adam([dict(g, lr=g["base_lr"]) for g in groups if g["params"]], betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)

    def gan_active(self, step: int) -> bool:
        """Whether the GAN terms and the discriminator train at optimizer step `step` (0-based)."""
        return step >= self.cfg.gan_start and (self.w.gan > 0 or self.w.feature_matching > 0)

    def generator_step(self, batch: dict[str, torch.Tensor], step: int, train: bool = True) -> GeneratorStep:
        """Forward pass and the generator's loss terms for one batch (unweighted; no optimizer step)."""
        src = batch["source"].to(self.device)  # (B, 3, H, W)
        drv = batch["driving"].to(self.device)  # (B, 3, H, W)
        r = self.renderer
        kp_c = r.canonical_keypoints(src)  # (B, K, 3)
        transform = None
        if self.w.equivariance > 0 and self.from_images:
            # the random warps of step `step` are a function of (seed, step): a resumed run draws the same ones; under
            # torchrun each rank keeps its rows of the global batch's warps
            rows = self.dist.span(self.cfg.batch_size) if self.dist.active else None
            transform = RandomTransform(self.cfg.batch_size if rows else src.shape[0],
                                        sample_generator(self.seed, step), self.cfg.transform, rows=rows)
        if self.from_images:
            frames = [src, drv] + ([transform.transform_frame(drv)] if transform is not None else [])
            motions = self.estimate_motions(frames)
        else:
            motions = self.map_motions(batch["coeffs"].to(self.device))
        he_s, he_d = motions[0], motions[1]
        kp_s, kp_d = transform_keypoints(kp_c, he_s), transform_keypoints(kp_c, he_d)  # (B, K, 3) each
        relation = audio_relation(self.tavc, batch["mel"].to(self.device)) if r.cerl is not None else None
        out = r(src, kp_s, kp_d, relation)
        pred = out.prediction  # (B, 3, H, W)
        w = self.w
        terms: dict[str, torch.Tensor] = {}  # computed only where the weight is > 0
        if w.perceptual > 0:
            terms["perceptual"] = self.perceptual(pred, drv)
        if w.l1 > 0:
            terms["l1"] = reconstruction_l1(pred, drv)
        if w.mouth > 0:  # the driving frame's mouth region, placed by its landmarks (S px)
            terms["mouth"] = mouth_reconstruction_l1(pred, drv, batch["landmarks"][:, 1].to(self.device))
        if self.gan_active(step):
            fake = self.discriminator(pred)
            if w.gan > 0:
                terms["gan"] = generator_hinge_loss([o.prediction for o in fake])
            if w.feature_matching > 0:
                with torch.no_grad():
                    real = self.discriminator(drv)
                terms["feature_matching"] = feature_matching_loss(
                    [o.features for o in real], [o.features for o in fake])
        if transform is not None:
            kp_t = transform_keypoints(kp_c, motions[2])  # (B, K, 3) keypoints of the warped driving frame
            terms["equivariance"] = equivariance_loss(kp_d, kp_t, transform)
        if w.keypoint_prior > 0:
            terms["keypoint_prior"] = keypoint_prior_loss(kp_d)
        if w.head_pose > 0 and (self.cfg.pose_teacher == "coefficients" or self.pose_teacher is not None):
            # source and driving angles against the teacher's: 3 x (2B,) degrees each
            angles = [torch.cat(pair) for pair in zip(he_s.degrees(), he_d.degrees())]
            if self.cfg.pose_teacher == "coefficients":
                pose = batch["pose"].to(self.device)  # (B, 2, 3) degrees of (source, driving)
                ref = [torch.cat([pose[:, 0, k], pose[:, 1, k]]) for k in range(3)]
                logits = [torch.cat(pair) for pair in ((he_s.yaw, he_d.yaw), (he_s.pitch, he_d.pitch),
                                                       (he_s.roll, he_d.roll))]  # 3 x (2B, bins)
                terms["head_pose"] = head_pose_loss(angles, ref) + pose_bin_cross_entropy(logits, ref)
            else:
                with torch.no_grad():
                    ref = [bins_to_degrees(x) for x in self.pose_teacher(torch.cat([src, drv]))]
                terms["head_pose"] = head_pose_loss(angles, ref)
        if w.deformation_prior > 0:
            terms["deformation_prior"] = deformation_prior_loss(he_d.exp)
        if self.car is not None:  # TAVCE Eq. 6: the generated mouth's change from the real d-1 follows the audio's
            terms["car"] = self.car(batch["mel"].to(self.device), batch["previous"].to(self.device), pred,
                                    batch["landmarks_previous"].to(self.device),
                                    batch["landmarks"][:, 1].to(self.device)).loss
        if w.landmark_flow > 0 or w.keypoint_anchor > 0:  # preprocessing's landmarks in grid units, (B, 2, 68, 2)
            ac = self.cfg.model.align_corners
            points = pixels_to_grid(batch["landmarks"].to(self.device), self.cfg.model.image_size, ac)
            if w.landmark_flow > 0:
                terms["landmark_flow"] = landmark_flow_loss(out.deformation, points[:, 0], points[:, 1], ac)
            if w.keypoint_anchor > 0:
                chosen = points[:, :, list(self.cfg.keypoint_landmarks)]  # (B, 2, K, 2)
                terms["keypoint_anchor"] = keypoint_anchor_loss(kp_s, kp_d, chosen[:, 0], chosen[:, 1])
        return GeneratorStep(prediction=pred, kp_driving=kp_d, kp_source=kp_s, terms=terms)

    @property
    def from_images(self) -> bool:
        """Whether the motion comes from H on the images (face-vid2vid) rather than MappingNet on coefficients."""
        return self.cfg.model.motion_source == "estimator"

    def map_motions(self, coeffs: torch.Tensor) -> list[HeadMotion]:
        """Source and driving motion from MappingNet, one call: coeffs (B, 2, 70, W) -> [motion_s, motion_d]."""
        b = coeffs.shape[0]
        return self.renderer.map_motion(coeffs.transpose(0, 1).flatten(0, 1)).split([b, b])

    def estimate_motions(self, frames: list[torch.Tensor]) -> list[HeadMotion]:
        """Head motion of each (B, 3, H, W) group of frames: one estimator call over all of them (``joint``: they
        share BatchNorm statistics in training mode) or one call per group (``separate``)."""
        r = self.renderer
        if self.cfg.estimator_batch == "joint":
            return r.estimate_motion(torch.cat(frames)).split([f.shape[0] for f in frames])
        return [r.estimate_motion(f) for f in frames]

    def set_learning_rate(self, step: int) -> None:
        for group in self.opt_g.param_groups:  # each group's own base rate (MappingNet may have its own)
            group["lr"] = scheduled_lr(group.get("base_lr", self.cfg.lr), step, self.cfg.steps, self.cfg.lr_schedule)
        for group in self.opt_d.param_groups:
            group["lr"] = learning_rate(self.cfg, step)

    def generator_update(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], torch.Tensor]:
        """One Adam step on the renderer (F, CERL, L, H, G) only; returns the loss values and the prediction."""
        with self.dist.autocast():
            g = self.generator_step(batch, step)
            total = weighted_total(g.terms, self.w)
        self.opt_g.zero_grad(set_to_none=True)
        # the GAN term also leaves gradients on D: never applied (cleared before D's own step), never averaged
        self.dist.backward(total, self.opt_g)
        self.dist.step(self.opt_g)
        weights = self.w.as_dict()
        values = {k: weights[k] * float(v.detach()) for k, v in g.terms.items()}  # weighted, as in the total
        values["generator_total"] = float(total.detach())
        return values, g.prediction.detach()

    def discriminator_update(self, driving: torch.Tensor, prediction: torch.Tensor) -> float:
        """One Adam step on D with the hinge loss: real driving frames vs the (detached) predictions."""
        self.opt_d.zero_grad(set_to_none=True)
        with self.dist.autocast():
            real = self.discriminator(driving.to(self.device))
            fake = self.discriminator(prediction.detach())
            d_loss = discriminator_hinge_loss([o.prediction for o in real], [o.prediction for o in fake])
        self.dist.backward(d_loss, self.opt_d)
        self.dist.step(self.opt_d)
        return float(d_loss.detach())

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One generator update and (when the GAN is active) one discriminator update; returns the loss values."""
        self.set_learning_rate(step)
        values, prediction = self.generator_update(batch, step)
        if self.gan_active(step):
            values["discriminator"] = self.discriminator_update(batch["driving"], prediction)
        return values

    @torch.no_grad()
    def reconstruct(self, data: RendererEvalSet, batch_size: int = 16, own_motion: bool = False,
                    train_mode: bool = False) -> torch.Tensor:
        """Reconstructions of every driving frame, (N, 3, H, W) in [0, 1].

        Args:
            own_motion: render the source with its OWN motion (estimated, or mapped from its coefficients) instead of
                the driving frame's (the
                baseline "the renderer with the source's own motion": what the decoder gives without the motion path).
            train_mode: keep the networks in training mode (batch statistics, as during training: a diagnostic of
                the train/eval gap); default eval mode (running statistics), as at inference.
        """
        r = self.renderer
        was_training = r.training
        r.train(train_mode)
        preds = []
        for s in range(0, len(data.source), batch_size):
            src = data.source[s:s + batch_size].to(self.device)
            drv = data.driving[s:s + batch_size].to(self.device)
            kp_c = r.canonical_keypoints(src)
            if self.from_images:
                he_s, he_d = self.estimate_motions([src, drv])
            else:
                he_s, he_d = self.map_motions(data.coeffs[s:s + batch_size].to(self.device))
            kp_s = transform_keypoints(kp_c, he_s)
            kp_d = kp_s if own_motion else transform_keypoints(kp_c, he_d)
            relation = audio_relation(self.tavc, data.mel[s:s + batch_size].to(self.device)) \
                if r.cerl is not None else None
            preds.append(r(src, kp_s, kp_d, relation).prediction.float().cpu())
        r.train(was_training)
        return torch.cat(preds)

    # -- checkpoint state: the renderer + optimizer G as the checkpoint's model/optimizer, D in `extra` ----------
    def extra_state(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer_d": self.opt_d.state_dict()}

    def load_extra_state(self, extra: dict[str, Any], source: str) -> None:
        load_state_strict(self.discriminator, extra["discriminator"], f"{source} (discriminator)")
        self.opt_d.load_state_dict(extra["optimizer_d"])


def detect_landmarks(images: np.ndarray, size: int, backend: Any) -> np.ndarray:
    """68 landmarks of each image (N, H, W, 3) uint8, detected independently after resizing to `size`; returned
    in the images' own pixel coordinates, (N, 68, 2), NaN where no face was found."""
    import cv2

    out = np.full((len(images), 68, 2), np.nan, np.float64)
    for n, img in enumerate(images):
        big = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        track = backend.process(big[None])  # one frame, a fresh tracker: images are independent
        if track.has_landmarks[0]:
            out[n] = track.landmarks[0, :, :2] * (img.shape[1] / size)
    return out


def landmark_distance(a: np.ndarray, b: np.ndarray, points: slice = slice(0, 68)) -> np.ndarray:
    """Mean Euclidean distance of corresponding landmarks, (N,), NaN where either side has none."""
    return np.linalg.norm(a[:, points] - b[:, points], axis=-1).mean(axis=-1)


def mouth_l1(images: torch.Tensor, target: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
    """Mean |image − target| inside each pair's mouth box, (N,); images (N, 3, S, S) in [0, 1], boxes (N, 4)."""
    out = np.empty(len(boxes), np.float64)
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        out[n] = float((images[n, :, y0:y1, x0:x1] - target[n, :, y0:y1, x0:x1]).abs().mean())
    return out


def evaluate_heldout(trainer: RendererTrainer, data: RendererEvalSet, landmark_size: int, backend: Any | None,
                     source_motion: bool = False) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Per-pair errors against the driving frame of the reconstruction (``generated``), of the source frame
    (``source``: the trivial baseline) and, with `source_motion`, of the renderer driven by the source's own motion
    (``source_motion``: what the decoder gives without the motion path).

    Metrics: ``l1`` (whole frame) and ``mouth_l1`` (the driving frame's mouth box) in [0, 1] units; with a landmark
    `backend`, ``lmd`` (68 points) and ``mouth_lmd`` (points 48-67) in pixels of the evaluation image size, detected
    on every image alike. Keys ``<metric>_<candidate>``, (N,) each.
    """
    pred = trainer.reconstruct(data)
    drv = data.driving.float()
    candidates = {"generated": pred, "source": data.source.float()}
    if source_motion:
        candidates["source_motion"] = trainer.reconstruct(data, own_motion=True)
    res: dict[str, np.ndarray] = {}
    for name, images in candidates.items():
        res[f"l1_{name}"] = (images - drv).abs().mean(dim=(1, 2, 3)).numpy().astype(np.float64)
        res[f"mouth_l1_{name}"] = mouth_l1(images, drv, data.mouth_box)
    if backend is not None:
        lm_drv = detect_landmarks(to_uint8(drv), landmark_size, backend)
        for name, images in candidates.items():
            lm = detect_landmarks(to_uint8(images), landmark_size, backend)
            res[f"lmd_{name}"] = landmark_distance(lm, lm_drv)
            res[f"mouth_lmd_{name}"] = landmark_distance(lm, lm_drv, MOUTH)
    return res, pred


METRICS = ("l1", "mouth_l1", "lmd", "mouth_lmd")


def summarize(res: dict[str, np.ndarray], clip_ids: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Means, and for each metric the mean improvement of the reconstruction over each baseline present in `res`
    (``source``, and ``source_motion`` when evaluated) with a clip-bootstrap 95 % interval (pairs of one clip are
    correlated). Landmark rows use the pairs where every image had a face.

    Per metric: ``generated``, ``source_baseline``, ``improvement`` (= source − generated, > 0 is better) with
    ``improvement_ci_low/high``, ``share_pairs_better``, ``beats_baseline``; with the own-motion baseline also
    ``source_motion_baseline``, ``improvement_vs_source_motion`` (+ interval) and ``beats_source_motion``.
    """
    out: dict[str, Any] = {"pairs": int(len(clip_ids)), "clips": int(len(np.unique(clip_ids)))}
    for metric in METRICS:
        if f"{metric}_generated" not in res:
            continue
        gen = res[f"{metric}_generated"]
        baselines = [b for b in ("source", "source_motion") if f"{metric}_{b}" in res]
        ok = np.isfinite(gen)
        for b in baselines:
            ok &= np.isfinite(res[f"{metric}_{b}"])
        if not ok.any():
            out[metric] = {"generated": None, "source_baseline": None, "valid_pairs": 0, "beats_baseline": False}
            continue
        row: dict[str, Any] = {"generated": float(gen[ok].mean())}
        for b in baselines:
            base = res[f"{metric}_{b}"][ok]
            diff = base - gen[ok]  # > 0: the reconstruction is closer to the driving frame than the baseline
            lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed, groups=clip_ids[ok])
            suffix = "" if b == "source" else "_vs_source_motion"
            row[f"{b}_baseline"] = float(base.mean())
            row[f"improvement{suffix}"] = float(diff.mean())
            row[f"improvement{suffix}_ci_low"], row[f"improvement{suffix}_ci_high"] = lo, hi
            if b == "source":
                row["share_pairs_better"] = float((diff > 0).mean())
                row["beats_baseline"] = bool(diff.mean() > 0)
            else:
                row["beats_source_motion"] = bool(diff.mean() > 0)
        row["valid_pairs"] = int(ok.sum())
        out[metric] = row
    return out


def save_sample_grid(path: str | os.PathLike[str], data: RendererEvalSet, pred: torch.Tensor, title: str,
                     rows: int = EVAL_SAMPLES_IN_GRID) -> None:
    """PNG grid, one held-out pair per row: source | driving | generated | |generated - driving| (x4)."""
    import cv2

    idx = np.linspace(0, len(pred) - 1, min(rows, len(pred))).round().astype(int)
    src, drv, gen = to_uint8(data.source[idx].float()), to_uint8(data.driving[idx].float()), to_uint8(pred[idx])
    err = np.clip(np.abs(gen.astype(np.int16) - drv.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
    tile = max(96, src.shape[1])
    cells = [np.concatenate([cv2.resize(x, (tile, tile), interpolation=cv2.INTER_NEAREST)
                             for x in (s, d, g, e)], axis=1) for s, d, g, e in zip(src, drv, gen, err)]
    header = np.full((22, cells[0].shape[1], 3), 255, np.uint8)
    for k, label in enumerate(("source", "driving", "generated", "|gen - drv| x4")):
        cv2.putText(header, label, (k * tile + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    foot = np.full((18, cells[0].shape[1], 3), 255, np.uint8)
    cv2.putText(foot, title[:80], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(path, np.concatenate([header, *cells, foot], axis=0))


def pretrain_renderer(cfg: TrainRendererConfig, seed: int, *, processed: str | os.PathLike[str],
                      out: str | os.PathLike[str], reports: str | os.PathLike[str], tracker: Tracker,
                      tavc: str | os.PathLike[str] | None = None, progress: bool = True,
                      dist: Distributed | None = None) -> RendererRunResult | None:
    """Video-driven renderer pretraining with held-out evaluation and its report.

    Args:
        cfg: the `pretrain_renderer` params section.
        seed: `common.seed`.
        processed: output folder of the preprocess stage.
        out: model folder; ``checkpoint.pt`` (kind ``renderer``: the Renderer's weights and config; the
            discriminator and its optimizer in ``extra``) is resumed when it has the same fingerprint.
        reports: report folder: metrics.json, heldout_pairs.csv, curves.png, samples.png and the sample grids
            written at each evaluation (``samples/step_XXXXXX.png``).
        tracker: receives per-step losses, held-out curves, the training time and the perceptual extractor's name.
        tavc: checkpoint of the trained TAVC metric (its audio encoder gives C^a for CERL); may be None when
            ``model.cerl.enabled`` is false.
        progress: show a tqdm bar.
        dist: this process's place in a torchrun run (None: one plain process on the CPU; the stage passes
            `common.device`); ranks other than 0 train their share of every batch and return None.

    Sets `cfg.threads` torch threads for the run (restored afterwards).
    """
    with torch_threads(cfg.threads):
        run = _pretrain_renderer(Path(processed), tavc, Path(out), Path(reports), cfg, seed, tracker, progress,
                                 dist=dist)
    if run is None:
        return None
    tracker.log_metrics({"train/seconds": run.seconds})
    tracker.set_tags({"perceptual_extractor": run.metrics["extractors"]["perceptual"]})
    write_report(run, reports)
    return run


def write_report(run: RendererRunResult, reports: str | os.PathLike[str]) -> None:
    """metrics.json, heldout_pairs.csv (one row per held-out pair) and curves.png (the sample grids are written
    during the run)."""
    import pandas as pd

    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", run.metrics)
    with atomic_path(reports / "heldout_pairs.csv", suffix=".csv") as tmp:
        pd.DataFrame(run.per_sample).to_csv(tmp, index=False)
    plot_report(run, reports)


def _pretrain_renderer(processed: Path, tavc_path: str | os.PathLike[str] | None, out: Path, reports: Path,
                       cfg: TrainRendererConfig, seed: int, tracker: Tracker, progress: bool,
                       init: Path | None = None, desc: str = "pretrain_renderer",
                       dist: Distributed | None = None) -> RendererRunResult | None:
    """The training run behind `pretrain_renderer` and (with `init`, the pretrained renderer to fine-tune, and
    MappingNet / CAR in `cfg`) TAVCE's audio-driven stage `train` (`pipeline.train.tavce`); `desc` labels the
    progress bar. `dist`: this process's place in a torchrun run (None: one plain process on the CPU); ranks other
    than 0 train their share of every batch and return None."""
    cfg.validate()
    dist = dist or Distributed()
    dist.check_batch(cfg.batch_size, f"{desc}.batch_size")
    train_clips, eval_clips = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, 2)

    tavc = None
    tavc_digest = None
    if cfg.model.cerl.enabled or cfg.loss_weights.car > 0:
        if tavc_path is None:
            raise ValueError("model.cerl.enabled and loss_weights.car need the trained TAVC metric (--tavc)")
        tavc = load_tavc(tavc_path)
        if tavc.cfg.embed_dim != cfg.model.cerl.relation_dim:
            raise ValueError(f"{tavc_path}: TAVC embed_dim {tavc.cfg.embed_dim} != model.cerl.relation_dim "
                             f"{cfg.model.cerl.relation_dim}; C^a must be relation_dim x relation_dim")
        tavc_digest = file_digest(tavc_path)
    pose_teacher = None
    if cfg.pose_teacher == "hopenet" and cfg.weights.head_pose is not None and cfg.loss_weights.head_pose > 0:
        from pipeline.models.hopenet import load_hopenet
        pose_teacher = load_hopenet(cfg.weights.head_pose)

    fp = fingerprint(_fingerprint_config(cfg), seed, file_digest(processed / "manifest.parquet"), tavc_digest,
                     *([file_digest(init)] if init is not None else []))
    ckpt_path = out / "checkpoint.pt"
    seed_everything(seed)
    trainer = RendererTrainer(cfg, seed, tavc, pose_teacher, dist=dist)
    state = resumable(ckpt_path, fp, CHECKPOINT_KIND)
    if state is not None:
        start, history = restore(state, trainer.renderer, trainer.opt_g, str(ckpt_path))
        trainer.load_extra_state(state["extra"], str(ckpt_path))
        log.info("resuming %s at step %d of %d", ckpt_path, start, cfg.steps)
    else:
        if init is not None:
            for note in load_init_weights(trainer.renderer, init):
                log.info("%s", note)
        elif cfg.weights.sadtalker is not None:
            load_sadtalker_renderer(trainer.renderer, cfg.weights.sadtalker)
        start, history = 0, History()

    t0 = time.perf_counter()
    coeff_window = cfg.model.mapping.window if not trainer.from_images else 0  # MappingNet's input windows
    if coeff_window and cfg.loss_weights.equivariance > 0:
        log.info("motion_source: coefficients: the equivariance term is off (it constrains H on warped images, "
                 "which this motion source does not use)")
    eval_set = build_eval_set(eval_clips, seed, cfg.model.image_size, cfg.eval_pairs_per_clip,
                              coeff_window=coeff_window)
    motion_set = build_eval_set(eval_clips, seed, cfg.model.image_size, cfg.eval_pairs_per_clip, selection="motion",
                                coeff_window=coeff_window, previous=tavc is not None)
    params = parameter_counts(trainer)
    log.info("renderer: %d train clips, %d held-out pairs from %d clips (built in %.1f s); %s parameters "
             "(+ discriminator %s); perceptual extractor: %s; head-pose loss: %s", len(train_clips),
             len(eval_set.source), len(eval_clips), time.perf_counter() - t0, f"{params['renderer']:,}",
             f"{params['discriminator']:,}", trainer.perceptual.extractor_name,
             _pose_loss_name(cfg, pose_teacher))

    def heldout(step: int, landmarks: bool) -> tuple[dict[str, np.ndarray], torch.Tensor] | None:
        if not dist.is_main:
            return None
        backend = _landmark_backend() if landmarks else None
        try:
            res, pred = evaluate_heldout(trainer, eval_set, cfg.landmark_size, backend)
        finally:
            if backend is not None:
                backend.close()
        row = {"heldout_l1": float(res["l1_generated"].mean()), "heldout_l1_source": float(res["l1_source"].mean())}
        history.add(step, **row)
        tracker.log_metrics({k.replace("heldout_", "heldout/"): v for k, v in row.items()}, step=step)
        save_sample_grid(reports / "samples" / f"step_{step:06d}.png", eval_set, pred,
                         f"step {step}: held-out L1 {row['heldout_l1']:.4f} (source baseline "
                         f"{row['heldout_l1_source']:.4f})")
        return res, pred

    def checkpoint(step: int) -> None:
        if not dist.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, config=cfg, model=trainer.renderer,
                        optimizer=trainer.opt_g, step=step, fingerprint=fp,
                        extra={"history": history.rows, "seed": seed, **trainer.extra_state()})

    train_seconds = 0.0
    if start < cfg.steps:
        if start == 0 and cfg.eval_every:
            heldout(0, landmarks=False)
        # With MappingNet the flip is off: the expression coefficients of a mirrored face are not known.
        dataset = RendererDataset(train_clips, seed, cfg.model.image_size, cfg.cache_mb, augment=cfg.augment,
                                  pair_sampling=cfg.pair_sampling, coeff_window=coeff_window, flip=trainer.from_images,
                                  previous=cfg.loss_weights.car > 0)
        loader = step_loader(dataset, cfg.batch_size, start, cfg.steps, cfg.workers, span=dist.span(cfg.batch_size))
        trainer.renderer.train()
        trainer.discriminator.train()
        window: list[dict[str, float]] = []
        t_train = time.perf_counter()
        bar = tqdm(loader, total=cfg.steps, initial=start, desc=desc, disable=not progress,
                   unit="step")
        for step, batch in enumerate(bar, start=start + 1):  # `step` = optimizer steps done after this batch
            window.append(trainer.train_step(batch, step - 1))
            if step % cfg.log_every == 0 or step == cfg.steps:
                keys = sorted({k for row in window for k in row})
                # means over the window, then over the ranks (one all-reduce per log; every rank has the same keys)
                mean = dist.mean_values({k: float(np.mean([row[k] for row in window if k in row])) for k in keys})
                window.clear()
                history.add(step, **mean)
                tracker.log_metrics({f"train/{k}": v for k, v in mean.items()}, step=step)
                bar.set_postfix(g=f"{mean['generator_total']:.3f}",
                                **({"d": f"{mean['discriminator']:.3f}"} if "discriminator" in mean else {}))
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                heldout(step, landmarks=False)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
        bar.close()
        train_seconds = time.perf_counter() - t_train
    else:
        log.info("%s is complete (step %d): evaluating only", ckpt_path, start)
    dist.barrier()  # the final checkpoint is written before any rank leaves
    if not dist.is_main:
        return None

    t_eval = time.perf_counter()
    res, pred = heldout(cfg.steps, landmarks=True)
    # Motion transfer: held-out pairs whose mouth opening and head pose differ most, against "copy the source" and
    # against the renderer driven by the source's own motion (what the decoder gives without the motion path).
    backend = _landmark_backend()
    try:
        motion_res, motion_pred = evaluate_heldout(trainer, motion_set, cfg.landmark_size, backend,
                                                   source_motion=True)
    finally:
        backend.close()
    motion = summarize(motion_res, motion_set.clip_ids, cfg.bootstrap, seed)
    if tavc is not None:  # the paper's own metric on the same pairs: does the generated mouth change follow the audio?
        motion["tavc_similarity"] = tavc_similarity_report(trainer.tavc, motion_set, motion_pred, cfg.bootstrap, seed)
    motion["differences"] = {
        "mouth_opening_iod": _spread(motion_set.mouth_delta), "head_pose_deg": _spread(motion_set.pose_delta),
        "near_static_mouth_opening_iod": _spread(eval_set.mouth_delta),
        "near_static_head_pose_deg": _spread(eval_set.pose_delta)}
    save_sample_grid(reports / "samples_motion.png", motion_set, motion_pred,
                     f"held-out large-motion pairs, step {cfg.steps}")
    # Diagnostic: the same protocol on the training speakers' clips. These frames were trained on; the
    # identities were seen. A renderer that beats the source baseline here but not on held-out speakers has
    # learned motion for the faces it knows and not yet the one-shot transfer of appearance.
    seen_set = build_eval_set(train_clips, seed, cfg.model.image_size, SEEN_PAIRS_PER_CLIP,
                              coeff_window=coeff_window)
    seen_res, _ = evaluate_heldout(trainer, seen_set, cfg.landmark_size, None)
    seen = summarize(seen_res, seen_set.clip_ids, cfg.bootstrap, seed)
    save_sample_grid(reports / "samples.png", eval_set, pred,
                     f"held-out speakers {sorted(set(eval_set.speakers.tolist()))}, step {cfg.steps}")
    summary = summarize(res, eval_set.clip_ids, cfg.bootstrap, seed)
    summary["speakers"] = sorted(set(eval_set.speakers.tolist()))
    log.info("held-out evaluation with landmarks: %.1f s", time.perf_counter() - t_eval)
    beats = [summary[m]["beats_baseline"] for m in ("l1", "lmd") if m in summary]
    metrics = {
        "heldout": summary,
        "heldout_motion": motion,
        "seen_speakers_diagnostic": seen,
        "target": {"description": "held-out reconstruction beats 'output the source frame' on L1 and landmarks",
                   "met": bool(len(beats) == 2 and all(beats))},
        "target_motion": motion_target(motion),
        "extractors": {"perceptual": trainer.perceptual.extractor_name,
                       "tavc_similarity": "this project's TAVC metric (train_tavc)" if tavc is not None else None,
                       "head_pose": _pose_loss_name(cfg, pose_teacher),
                       "landmarks": "mediapipe (68-point mapping), frames resized to "
                                    f"{cfg.landmark_size} px"},
        "train": {"steps": cfg.steps, "resumed_from": start,
                  "clips": len(train_clips), "speakers": len({c.speaker for c in train_clips}),
                  "final_losses": {n: v for n in ("generator_total", "discriminator", "perceptual", "l1")
                                   if (v := history.last(n)) is not None}},
        "parameters": params,
        "image_size": cfg.model.image_size,
    }
    per_sample = [{"set": data.selection, "clip_id": c, "speaker": s, "source_index": int(p[0]),
                   "driving_index": int(p[1]), "mouth_delta": float(data.mouth_delta[n]),
                   "pose_delta_deg": float(data.pose_delta[n]), **{k: float(v[n]) for k, v in table.items()}}
                  for data, table in ((eval_set, res), (motion_set, motion_res))
                  for n, (c, s, p) in enumerate(zip(data.clip_ids, data.speakers, data.positions))]
    return RendererRunResult(metrics=metrics, history=history, per_sample=per_sample, seconds=round(train_seconds, 1))


def load_init_weights(renderer: Renderer, path: str | os.PathLike[str]) -> list[str]:
    """Start `renderer` from a trained renderer checkpoint (fine-tuning; TAVCE's stage `train` starts from
    `pretrain_renderer`). Every network both have is loaded strictly; a MappingNet the checkpoint lacks keeps its
    fresh initialisation, and CERL weights are dropped when this renderer has CERL disabled (the "w/o CERL"
    ablation). Returns notes on what was not loaded.

    Raises:
        WeightsError: naming the file, when it is not a renderer checkpoint or a shared network does not fit.
    """
    from pipeline.checkpoint import load_checkpoint

    state = load_checkpoint(path, kind=CHECKPOINT_KIND)["model"]
    own = renderer.state_dict()
    notes = []
    for prefix, present in (("mapping.", renderer.mapping is not None), ("cerl.", renderer.cerl is not None)):
        theirs = any(k.startswith(prefix) for k in state)
        if present and not theirs:
            notes.append(f"{path}: no {prefix[:-1]} weights; this renderer's {prefix[:-1]} starts fresh")
            state.update({k: v for k, v in own.items() if k.startswith(prefix)})
        elif theirs and not present:
            notes.append(f"{path}: its {prefix[:-1]} weights are not used (disabled here)")
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    load_state_strict(renderer, state, str(path))  # WeightsError naming missing / extra / mis-shaped keys
    return notes


@torch.no_grad()
def tavc_similarity_report(tavc: TAVC, data: RendererEvalSet, pred: torch.Tensor, n_boot: int,
                           seed: int) -> dict[str, Any]:
    """TAVC similarity ``⟨C^a_{d-1,d}, C^v_{d-1,d}⟩`` (TAVCE Eq. 2-3, this project's trained metric) with the real
    frame d-1 and, as frame d, the generated frame vs the real driving frame (the reference) vs the source frame
    ("copy the source"); mouth ROIs placed by preprocessing's landmarks of d-1 and d. Means with clip-bootstrap 95 %
    intervals of generated − copy."""
    from pipeline.losses.tavc import tavc_similarity

    assert data.previous is not None and data.roi_landmarks is not None
    lm = torch.from_numpy(data.roi_landmarks)  # (N, 2, 68, 2): d-1, d
    n = len(data)
    f_a = tavc.encode_audio(data.mel.flatten(0, 1)).unflatten(0, (n, 2))  # (N, 2, D)
    f_prev = tavc.encode_visual(mouth_roi_torch(data.previous.float(), lm[:, 0]))  # (N, D)
    sims = {}
    for name, frames in (("generated", pred.float()), ("real", data.driving.float()), ("source", data.source.float())):
        f_cur = tavc.encode_visual(mouth_roi_torch(frames, lm[:, 1]))
        sims[name] = tavc_similarity(f_a[:, 0], f_a[:, 1], f_prev, f_cur).numpy().astype(np.float64)
    diff = sims["generated"] - sims["source"]
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed, groups=data.clip_ids)
    return {"generated": float(sims["generated"].mean()), "real": float(sims["real"].mean()),
            "source": float(sims["source"].mean()), "improvement_vs_source": float(diff.mean()),
            "improvement_vs_source_ci_low": lo, "improvement_vs_source_ci_high": hi, "pairs": n}


def log_motion_summary(stage: str, metrics: dict[str, Any]) -> None:
    """Log the large-motion evaluation of a renderer run (`pretrain_renderer`, `train`): each metric against "copy
    the source" and the own-motion rendering, the TAVC similarity when measured, and the motion target."""
    hm = metrics["heldout_motion"]
    for metric in ("mouth_lmd", "mouth_l1", "l1"):
        if metric in hm and hm[metric].get("generated") is not None:
            m = hm[metric]
            log.info("%s: large-motion pairs %s generated %.4f vs copy source %.4f (%+.4f [%+.4f, %+.4f]) vs own "
                     "motion %.4f (%+.4f [%+.4f, %+.4f])", stage, metric, m["generated"], m["source_baseline"],
                     m["improvement"], m["improvement_ci_low"], m["improvement_ci_high"], m["source_motion_baseline"],
                     m["improvement_vs_source_motion"], m["improvement_vs_source_motion_ci_low"],
                     m["improvement_vs_source_motion_ci_high"])
    t = hm.get("tavc_similarity")
    if t:
        log.info("%s: TAVC similarity (real d-1 -> frame d): generated %.3f, real %.3f, copy source %.3f", stage,
                 t["generated"], t["real"], t["source"])
    log.info("%s: motion-transfer target met: %s", stage, metrics["target_motion"]["met"])


def _pose_loss_name(cfg: TrainRendererConfig, pose_teacher: torch.nn.Module | None) -> str | None:
    """Which teacher the head-pose loss used (None: the loss was off)."""
    if cfg.loss_weights.head_pose <= 0:
        return None
    if cfg.pose_teacher == "coefficients":
        return "preprocessing coefficients (landmark 3DMM yaw/pitch/roll)"
    return "hopenet" if pose_teacher is not None else None


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "median": float(np.median(values)), "max": float(values.max())}


MOTION_TARGET_METRICS = ("mouth_lmd", "mouth_l1")


def motion_target(motion: dict[str, Any]) -> dict[str, Any]:
    """Whether the renderer transfers motion on held-out large-motion pairs: on mouth-landmark distance and
    mouth-region L1 it beats "copy the source" AND "the renderer with the source's own motion", each with the clip
    bootstrap's 95 % interval of the improvement above 0."""
    checks = {}
    for metric in MOTION_TARGET_METRICS:
        m = motion.get(metric) or {}
        checks[f"{metric}_beats_source"] = bool(m.get("improvement_ci_low") is not None
                                                and m["improvement_ci_low"] > 0)
        checks[f"{metric}_beats_source_motion"] = bool(m.get("improvement_vs_source_motion_ci_low") is not None
                                                       and m["improvement_vs_source_motion_ci_low"] > 0)
    return {"description": "held-out large-motion pairs: mouth landmarks and mouth-region L1 beat 'copy the source' "
                           "and 'the renderer with the source's own motion' (95 % clip-bootstrap intervals above 0)",
            **checks, "met": all(checks.values())}


def _landmark_backend() -> Any:
    from pipeline.faces.landmarks import make_backend

    return make_backend("mediapipe", min_confidence=0.3)


def parameter_counts(trainer: RendererTrainer) -> dict[str, int]:
    """Parameters of each renderer network, the renderer, and the discriminator."""
    r = trainer.renderer
    counts = {name: count_parameters(m) for name, m in (
        ("appearance", r.appearance), ("kp_detector", r.kp_detector), ("he_estimator", r.he_estimator),
        ("generator", r.generator))}
    counts["cerl"] = count_parameters(r.cerl) if r.cerl is not None else 0
    counts["renderer"] = count_parameters(r)
    counts["discriminator"] = count_parameters(trainer.discriminator)
    return counts


def plot_report(run: RendererRunResult, folder: str | os.PathLike[str]) -> list[Path]:
    """``curves.png``: generator loss terms, discriminator loss, held-out L1 vs the source baseline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves = folder / "curves.png"
    terms = sorted({k for row in run.history.rows for k in row} - {"step", "generator_total", "discriminator",
                                                                      "heldout_l1", "heldout_l1_source"})
    plot_curves(run.history, curves, {
        "generator loss (weighted terms)": ["generator_total", *terms],
        "discriminator (hinge)": ["discriminator"],
        "held-out L1 (vs source-frame baseline)": ["heldout_l1", "heldout_l1_source"],
    }, title="renderer pretraining (video-driven)")
    return [curves]
