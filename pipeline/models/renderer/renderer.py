"""The face renderer: face-vid2vid with CERL (method.md §4), composed from one network per file, plus loading of
SadTalker's public renderer checkpoint.

Data flow for one (source, driving) pair:

    f      = appearance(source)                       (B, 512, H/4, W/4)   encode_source
    g      = CERL(f, C^a)                             (B, 512, H/4, W/4)   feature_volume (when cerl.enabled)
    volume = appearance.to_volume(g)                  (B, 32, 16, H/4, W/4)
    x_c    = kp_detector(source)                      (B, K, 3)            canonical_keypoints
    motion = he_estimator(frame)                      HeadMotion           estimate_motion
    motion = mapping(coefficient window)              HeadMotion           map_motion (motion_source: coefficients)
    x      = transform_keypoints(x_c, motion)         (B, K, 3)            (keypoints.py)
    out    = generator(volume, x_source, x_driving)   RendererOutput       generate

The discriminator is built separately (`build_discriminator`). MappingNet (method.md §5) is part of the renderer when
``motion_source: coefficients`` (SadTalker / TAVCE: the motion comes from 3DMM coefficients, not from a driving
image); H stays in the model either way (SadTalker's checkpoint layout holds it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline.checkpoint import WeightsError, load_model, load_state_strict, map_keys, read_weight_file
from pipeline.models.renderer.appearance import AppearanceConfig, AppearanceFeatureExtractor
from pipeline.models.renderer.blocks import is_power_of_two_divisible
from pipeline.models.renderer.cerl import CERL, CERLConfig
from pipeline.models.renderer.dense_motion import DenseMotionConfig
from pipeline.models.renderer.discriminator import DiscriminatorConfig, MultiScaleDiscriminator
from pipeline.models.renderer.generator import GeneratorConfig, OcclusionAwareSPADEGenerator
from pipeline.models import sadtalker_files
from pipeline.models.renderer.head_pose import HeadPoseConfig, HeadPoseExpressionEstimator
from pipeline.models.renderer.keypoint_detector import CanonicalKeypointDetector, KeypointDetectorConfig
from pipeline.models.renderer.keypoints import HeadMotion
from pipeline.models.renderer.mapping import MappingConfig, MappingNet
from pipeline.config import from_dict

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "renderer"  # checkpoints written by the renderer training stages


@dataclass(frozen=True)
class RendererConfig:
    """Whole renderer; the defaults are SadTalker's 256x256 facerender config (method.md §4.1 full size).

    Attributes:
        image_size: side of the square input/output images.
        num_kp: K, the number of 3D keypoints (15).
        image_channel: 3.
        align_corners: ``grid_sample`` convention of every 3D warp. True matches the voxel-centre coordinate grid
            (an identity deformation samples exactly the voxels); SadTalker used False (the PyTorch default) with
            the same grid, so set False to reproduce SadTalker's outputs with its weights.
        appearance, keypoints, head_pose, dense_motion, generator, discriminator, cerl: the networks' configs.
        motion_source: where a frame's motion (pose, translation, expression) comes from: ``estimator``
            (face-vid2vid: H on the frame's image) or ``coefficients`` (SadTalker / TAVCE: MappingNet on a window of
            the frame's 3DMM coefficients; builds ``mapping``).
        mapping: MappingNet's config (used with ``motion_source: coefficients``; num_kp must equal num_kp).
    """

    image_size: int = 256
    num_kp: int = 15
    image_channel: int = 3
    align_corners: bool = True
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    keypoints: KeypointDetectorConfig = field(default_factory=KeypointDetectorConfig)
    head_pose: HeadPoseConfig = field(default_factory=HeadPoseConfig)
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    cerl: CERLConfig = field(default_factory=CERLConfig)
    motion_source: Literal["estimator", "coefficients"] = "estimator"
    mapping: MappingConfig = field(default_factory=MappingConfig)

    @property
    def feature_size(self) -> int:
        """Side h of the 2D feature f and of the volume."""
        return self.image_size // 2**self.appearance.num_down_blocks

    def validate(self) -> None:
        for sub in (self.appearance, self.keypoints, self.head_pose, self.dense_motion, self.generator,
                    self.discriminator, self.cerl):
            sub.validate()
        if self.motion_source not in ("estimator", "coefficients"):
            raise ValueError(f"motion_source must be 'estimator' or 'coefficients', got {self.motion_source!r}")
        if self.motion_source == "coefficients":
            self.mapping.validate()
            if self.mapping.num_kp != self.num_kp:
                raise ValueError(f"mapping.num_kp {self.mapping.num_kp} must equal num_kp {self.num_kp}")
        if self.num_kp < 1 or self.image_channel < 1:
            raise ValueError(f"num_kp and image_channel must be >= 1, got {self.num_kp}, {self.image_channel}")
        n = self.appearance.num_down_blocks
        if not is_power_of_two_divisible(self.image_size, n):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^appearance.num_down_blocks "
                             f"= {2**n}")
        if not is_power_of_two_divisible(self.feature_size, self.dense_motion.num_blocks):
            raise ValueError(f"dense_motion.num_blocks {self.dense_motion.num_blocks}: the feature side "
                             f"{self.feature_size} (image_size / 2^{n}) must be divisible by "
                             f"2^{self.dense_motion.num_blocks}")
        kp_side = self.image_size * self.keypoints.scale_factor
        if abs(kp_side - round(kp_side)) > 1e-6 or not is_power_of_two_divisible(round(kp_side),
                                                                                 self.keypoints.num_blocks):
            raise ValueError(f"keypoints.num_blocks {self.keypoints.num_blocks}: the detector input side "
                             f"{kp_side:g} (image_size x keypoints.scale_factor) must be divisible by "
                             f"2^{self.keypoints.num_blocks}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 (head-pose estimator downsamples 32x), got {self.image_size}")
        for s in self.discriminator.scales:
            side = int(self.image_size * s)
            for i in range(self.discriminator.num_blocks):
                side -= 3  # 4x4 conv, no padding
                if i != self.discriminator.num_blocks - 1:
                    side //= 2
            if side < 1:
                raise ValueError(f"discriminator: image_size {self.image_size} at scale {s} is too small for "
                                 f"{self.discriminator.num_blocks} blocks (use fewer discriminator.num_blocks)")


@dataclass
class RendererOutput:
    """Result of one render.

    Attributes:
        prediction: (B, 3, H, W) in [0, 1].
        occlusion: (B, 1, h, w) in (0, 1), or None.
        deformation: (B, D, h, w, 3) source sampling coordinates.
        mask: (B, K+1, D, h, w) dense-motion candidate weights (index 0 = background).
    """

    prediction: torch.Tensor
    occlusion: torch.Tensor | None
    deformation: torch.Tensor
    mask: torch.Tensor


class Renderer(nn.Module):
    """face-vid2vid + CERL: appearance, cerl (None when disabled), kp_detector, he_estimator, generator, and mapping
    (MappingNet; None unless ``motion_source: coefficients``)."""

    def __init__(self, cfg: RendererConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        app = cfg.appearance
        self.appearance = AppearanceFeatureExtractor(app, cfg.image_channel)
        self.cerl = CERL(cfg.cerl, app.feature_channels) if cfg.cerl.enabled else None
        self.kp_detector = CanonicalKeypointDetector(cfg.keypoints, cfg.num_kp, cfg.image_channel)
        self.he_estimator = HeadPoseExpressionEstimator(cfg.head_pose, cfg.num_kp, cfg.image_channel)
        self.generator = OcclusionAwareSPADEGenerator(
            cfg.generator, cfg.dense_motion, cfg.num_kp, app.reshape_channel, app.reshape_depth,
            app.num_down_blocks, cfg.image_channel, cfg.align_corners)
        self.mapping = MappingNet(cfg.mapping) if cfg.motion_source == "coefficients" else None

    def _check_image(self, image: torch.Tensor, what: str) -> None:
        c, s = self.cfg.image_channel, self.cfg.image_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (c, s, s):
            raise ValueError(f"Renderer.{what}: expected (B, {c}, {s}, {s}) images in [0, 1], "
                             f"got {tuple(image.shape)}")

    def encode_source(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> f (B, C*D, h, w), before CERL and warping."""
        self._check_image(source, "encode_source")
        return self.appearance(source)  # (B, C*D, h, w)

    def feature_volume(self, f: torch.Tensor, relation: torch.Tensor | None = None) -> torch.Tensor:
        """CERL (when enabled; `relation` ignored otherwise) + reshape + 3D residual blocks.

        Args:
            f: (B, C*D, h, w) from `encode_source`.
            relation: (B, Dr, Dr) audio relationship C^a, not normalised; None = zeros.
        Returns:
            (B, C, D, h, w).
        """
        if self.cerl is not None:
            f = self.cerl(f, relation)  # (B, C*D, h, w)
        return self.appearance.to_volume(f)  # (B, C, D, h, w)

    def canonical_keypoints(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> x_c (B, K, 3)."""
        self._check_image(source, "canonical_keypoints")
        return self.kp_detector(source)  # (B, K, 3)

    def estimate_motion(self, image: torch.Tensor) -> HeadMotion:
        """(B, 3, H, W) -> HeadMotion (logits form)."""
        self._check_image(image, "estimate_motion")
        return self.he_estimator(image)

    def map_motion(self, coeffs: torch.Tensor) -> HeadMotion:
        """(B, 70, window) coefficient windows (`pipeline.faces.coeffs.coefficient_windows`) ->
        HeadMotion (logits form), through MappingNet."""
        if self.mapping is None:
            raise ValueError("Renderer.map_motion needs motion_source: coefficients (this renderer has no MappingNet)")
        return self.mapping(coeffs)

    def generate(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> RendererOutput:
        """Warp the source volume from the source to the driving keypoints and decode.

        Args:
            volume: (B, C, D, h, w) from `feature_volume`.
            kp_source, kp_driving: (B, K, 3) transformed keypoints.
        """
        app = self.cfg.appearance
        h = self.cfg.feature_size
        if volume.dim() != 5 or tuple(volume.shape[1:]) != (app.reshape_channel, app.reshape_depth, h, h):
            raise ValueError(f"Renderer.generate: expected a (B, {app.reshape_channel}, {app.reshape_depth}, {h}, "
                             f"{h}) volume, got {tuple(volume.shape)}")
        prediction, motion = self.generator(volume, kp_source, kp_driving)
        return RendererOutput(prediction=prediction, occlusion=motion.occlusion, deformation=motion.deformation,
                              mask=motion.mask)

    def forward(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                relation: torch.Tensor | None = None) -> RendererOutput:
        """= generate(feature_volume(encode_source(source), relation), kp_source, kp_driving)."""
        return self.generate(self.feature_volume(self.encode_source(source), relation), kp_source, kp_driving)


def build_discriminator(cfg: RendererConfig) -> MultiScaleDiscriminator:
    """The multi-scale patch discriminator for this renderer's images."""
    cfg.validate()
    return MultiScaleDiscriminator(cfg.discriminator, cfg.image_channel)


# ----------------------------------------------------------------------------------------------------------------
# SadTalker checkpoints
# ----------------------------------------------------------------------------------------------------------------
# SadTalker part -> prefix of our Renderer. Its OcclusionAwareSPADEGenerator holds the appearance extractor's
# layers; SadTalker's HEEstimator computes yaw with fc_roll and roll with fc_yaw, so those two heads swap (see
# head_pose.py). First matching prefix wins.
SADTALKER_RULES: tuple[tuple[str, str], ...] = (
    ("generator.first.", "appearance.first."),
    ("generator.down_blocks.", "appearance.down_blocks."),
    ("generator.second.", "appearance.second."),
    ("generator.resblocks_3d.", "appearance.resblocks_3d."),
    ("generator.dense_motion_network.", "generator.dense_motion_network."),
    ("generator.third.", "generator.third."),
    ("generator.fourth.", "generator.fourth."),
    ("generator.decoder.", "generator.decoder."),
    ("kp_detector.", "kp_detector."),
    ("he_estimator.fc_roll.", "he_estimator.fc_yaw."),
    ("he_estimator.fc_yaw.", "he_estimator.fc_roll."),
    ("he_estimator.", "he_estimator."),
)
SADTALKER_PARTS = ("generator", "kp_detector", "he_estimator")
# SadTalker's safetensors release names the keypoint detector `kp_extractor`.
_PART_ALIASES = {"kp_extractor": "kp_detector"}


def load_renderer(path: str | os.PathLike[str], *, frozen: bool = True, device: str | torch.device = "cpu"
                  ) -> Renderer:
    """A trained renderer from a ``renderer`` checkpoint (written by the pretrain_renderer stage), in eval mode.

    The model is rebuilt from the :class:`RendererConfig` stored beside the weights (``config["model"]``), then
    loaded strictly (the checkpoint holds the Renderer's state dict; the discriminator is not part of it).

    Args:
        path: checkpoint file (:func:`pipeline.checkpoint.save_checkpoint` format, kind ``renderer``).
        frozen: set ``requires_grad = False`` on every parameter (inference); pass False to fine-tune.
        device: where the returned model lives.

    Raises:
        WeightsError: naming the file when it is missing, of another kind, has no usable config, or its weights do
            not fit the rebuilt model (with the keys at fault).
    """
    return load_model(path, CHECKPOINT_KIND,
                      lambda state: Renderer(from_dict(RendererConfig, state["config"]["model"], "model",
                                                                fill_defaults=True)),
                      frozen=frozen, device=device)


# ----------------------------------------------------------------------------------------------------------------
# SadTalker's public checkpoint
# ----------------------------------------------------------------------------------------------------------------
# Files of SadTalker's release (its checkpoints/ folder) this loader reads, in order of preference.
SADTALKER_RENDERER_FILES = (sadtalker_files.FV2V_FILE, sadtalker_files.combined_file(256))
SADTALKER_MAPPING_FILES = sadtalker_files.MAPPING_FILES  # file -> coefficients it reads (70 or 73)


def sadtalker_renderer_files(folder: str | os.PathLike[str], coeff_dim: int | None = None
                             ) -> tuple[Path, Path | None]:
    """(renderer weights, MappingNet weights or None) in a SadTalker release folder.

    The renderer: ``facevid2vid_00189-model.pth.tar`` (with the head-pose estimator), else the safetensors (without
    it). MappingNet: the first of `SADTALKER_MAPPING_FILES` present whose input size is `coeff_dim` (any when None).
    Raises `WeightsError` naming the files looked for."""
    root = sadtalker_files.checkpoint_folder(folder)
    renderer = sadtalker_files.renderer_source(root, root / sadtalker_files.combined_file(256))
    if renderer is None:
        raise WeightsError(f"{folder}: no SadTalker renderer weights (looked for "
                           f"{' or '.join(str(root / f) for f in SADTALKER_RENDERER_FILES)})")
    mapping = sadtalker_files.mapping_source(root, coeff_dim)
    return renderer, None if mapping is None else mapping[0]


def _read_nested(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: SadTalker checkpoint not found")
    if path.suffix == ".safetensors":  # flat prefixed keys: generator.*, kp_extractor.*, (no he_estimator), ...
        return dict(read_weight_file(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of state dicts, got {type(obj).__name__}")
    return obj


def _flatten_parts(obj: dict[str, Any], parts: tuple[str, ...], path: Path) -> dict[str, torch.Tensor]:
    """Both layouts -> flat ``part.key`` tensors: nested {'generator': {...}, ...} (the .pth.tar release) or flat
    prefixed keys ('generator.first.conv.weight', 'kp_extractor.…'). Other entries (discriminator, optimizers,
    epoch) are ignored."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = _PART_ALIASES.get(key, key)
        if isinstance(value, dict) and name in parts:
            for k, v in value.items():
                if not isinstance(v, torch.Tensor):
                    raise WeightsError(f"{path}: entry {key}.{k} is not a tensor")
                flat[f"{name}.{k}"] = v
        elif isinstance(value, torch.Tensor):
            head, _, rest = key.partition(".")
            head = _PART_ALIASES.get(head, head)
            if head in parts:
                flat[f"{head}.{rest}"] = value
    return flat


def load_sadtalker_renderer(renderer: Renderer, path: str | os.PathLike[str], mapping: MappingNet | None = None,
                            mapping_path: str | os.PathLike[str] | None = None) -> list[str]:
    """Load SadTalker's facevid2vid checkpoint strictly into `renderer` (CERL keeps its identity init).

    Args:
        renderer: a Renderer at SadTalker's shapes (the default RendererConfig).
        path: ``facevid2vid_00189-model.pth.tar`` (top-level dicts 'generator', 'kp_detector', 'he_estimator';
            'discriminator' and optimizer states are ignored) or a flat dict with those prefixes, or SadTalker's
            ``SadTalker_V0.0.2_256.safetensors`` (flat ``generator.*``, ``kp_extractor.*``; no head-pose estimator),
            or a release folder (`sadtalker_renderer_files` picks the files, MappingNet's included when
            `mapping_path` is None and the renderer has one).
        mapping: optional MappingNet to load from the 'mapping' dict of `mapping_path` (SadTalker's
            ``mapping_00229-model.pth.tar``), or of `path` when `mapping_path` is None.
    Returns:
        The parts loaded, e.g. ['generator', 'kp_detector', 'he_estimator', 'mapping'].
    Raises:
        WeightsError: naming the file and the missing, unexpected or mis-shaped keys. A file without any
            he_estimator entry loads the rest and leaves the (training-only) estimator as it is, with a warning.
    """
    path = Path(path)
    if path.is_dir():
        target_map = mapping if mapping is not None else renderer.mapping
        path, found_mapping = sadtalker_renderer_files(
            path, target_map.cfg.coeff_dim if target_map is not None else None)
        if mapping_path is None and target_map is not None:
            if found_mapping is None:
                raise WeightsError(f"{path.parent}: no MappingNet weights for {target_map.cfg.coeff_dim} coefficients "
                                   f"(looked for {', '.join(SADTALKER_MAPPING_FILES)})")
            mapping_path = found_mapping
    flat = _flatten_parts(_read_nested(path), SADTALKER_PARTS, path)
    if not any(k.startswith("generator.") for k in flat):
        raise WeightsError(f"{path}: no 'generator' weights (top-level keys must include {list(SADTALKER_PARTS)})")
    state = map_keys(flat, SADTALKER_RULES, str(path))
    own = renderer.state_dict()
    keep = ("cerl.", "mapping.")  # not in the facevid2vid file: CERL keeps its init, MappingNet is loaded below
    loaded = [p for p in SADTALKER_PARTS if any(k.startswith(p + ".") for k in flat)]
    if "he_estimator" not in loaded:
        log.warning("%s: no he_estimator weights; the head-pose estimator keeps its current weights", path)
        keep = keep + ("he_estimator.",)
    for k, v in own.items():
        if k.startswith(keep):
            state[k] = v
    load_state_strict(renderer, state, str(path))
    if renderer.cfg.align_corners:
        log.warning("%s: SadTalker was trained with grid_sample(align_corners=False); this renderer uses True "
                    "(RendererConfig.align_corners), so its warps differ slightly from SadTalker's", path)
    target = mapping if mapping is not None else renderer.mapping
    if target is not None:
        mpath = Path(mapping_path) if mapping_path is not None else path
        mflat = _flatten_parts(_read_nested(mpath), ("mapping",), mpath)
        mstate = {k[len("mapping."):]: v for k, v in mflat.items()}
        if not mstate:
            if mapping is not None or mapping_path is not None:
                raise WeightsError(f"{mpath}: no 'mapping' weights")
            log.warning("%s: no 'mapping' weights; the renderer's MappingNet keeps its current weights", mpath)
            return loaded
        load_state_strict(target, mstate, f"{mpath} (mapping)")
        loaded.append("mapping")
    return loaded


def sadtalker_layout(renderer: Renderer, mapping: MappingNet | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Our weights in SadTalker's nested checkpoint layout (the inverse of `load_sadtalker_renderer`'s key
    mapping, CERL left out): {'generator': ..., 'kp_detector': ..., 'he_estimator': ..., ['mapping': ...]}."""
    inverse = [(new, old) for old, new in SADTALKER_RULES]
    state = {k: v for k, v in renderer.state_dict().items() if not k.startswith(("cerl.", "mapping."))}
    flat = map_keys(state, inverse, "sadtalker_layout")
    out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in SADTALKER_PARTS}
    for k, v in flat.items():
        part, _, rest = k.partition(".")
        out[part][rest] = v
    mapping = mapping if mapping is not None else renderer.mapping
    if mapping is not None:
        out["mapping"] = dict(mapping.state_dict())
    return out
