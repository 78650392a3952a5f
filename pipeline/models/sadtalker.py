"""SadTalker's released checkpoints, end to end (issue 18): one place that turns a release folder into the files each
of this project's loaders reads, and fills the networks strictly.

A release folder is SadTalker's repository root (with ``checkpoints/``) or its ``checkpoints/`` folder itself:

====================================== =====================================================================
file                                   fills
====================================== =====================================================================
SadTalker_V0.0.2_256.safetensors       everything below but MappingNet and the head-pose estimator:
                                       ``audio2exp.*`` ExpNet, ``audio2pose.*`` PoseVAE, ``generator.*`` +
                                       ``kp_extractor.*`` the renderer, ``face_3drecon.*`` the Deep3DFaceRecon
                                       network (SadTalker_V0.0.2_512.safetensors: the same at 512 px)
auido2exp_00300-model.pth              ExpNet (older release; used when both .pth parts are present)
auido2pose_00140-model.pth             PoseVAE (older release)
facevid2vid_00189-model.pth.tar        the renderer: appearance, keypoint detector, generator, head-pose
                                       estimator (preferred over the safetensors: it has the estimator)
mapping_00229-model.pth.tar            MappingNet reading 70 coefficients (SadTalker's crop mode; this project)
mapping_00109-model.pth.tar            MappingNet reading 73 (SadTalker's full mode: + the portrait's alignment
                                       scale and translation); used when 00229 is absent
epoch_20.pth                           Deep3DFaceRecon's ReconNet (key ``net_recon``), else the safetensors'
BFM_Fitting/BFM_model_front.mat        the BFM landmark model (projection; the fit's quality measure)
BFM_Fitting/similarity_Lm3D_all.mat    the standard landmarks of the 5-point alignment (also in SadTalker's
                                       ``src/config/``, looked up there too)
====================================== =====================================================================
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.faces import bfm as bfm_mod
from pipeline.faces import deep3d as deep3d_mod
from pipeline.models.audio2coeff import Audio2Coeff, Audio2CoeffConfig, load_sadtalker_weights
from pipeline.models.renderer.cerl import CERLConfig
from pipeline.models.renderer.mapping import MappingConfig
from pipeline.models.renderer.renderer import Renderer, RendererConfig, load_sadtalker_renderer
from pipeline.models.sadtalker_files import (FV2V_FILE, MAPPING_FILES, PART_FILES, audio2coeff_source,
                                             checkpoint_folder, combined_file, mapping_source, renderer_source)

BFM_SUBFOLDER = "BFM_Fitting"
SIZES = (256, 512)  # SadTalker's released renderer resolutions

# Every file of the release this project reads -> what it fills (README "SadTalker's release and Deep3DFaceRecon
# coefficients"; the table above).
RELEASE_FILES: dict[str, str] = {
    combined_file(256): "ExpNet, PoseVAE, renderer (no head-pose estimator), Deep3DFaceRecon network",
    PART_FILES["audio2exp"]: "ExpNet",
    PART_FILES["audio2pose"]: "PoseVAE",
    FV2V_FILE: "renderer incl. head-pose estimator",
    **{name: f"MappingNet ({dim} coefficients)" for name, dim in MAPPING_FILES.items()},
    deep3d_mod.CHECKPOINT_FILE: "Deep3DFaceRecon network (coefficient backend deep3d)",
    f"{BFM_SUBFOLDER}/{bfm_mod.BFM_FILE}": "BFM landmark model (deep3d)",
    f"{BFM_SUBFOLDER}/{bfm_mod.STANDARD_LANDMARKS_FILE}": "5-point alignment standard (deep3d)",
}


class SadTalkerReleaseError(FileNotFoundError):
    """A release folder lacks files; the message names every file looked for and what it would fill."""


@dataclass(frozen=True)
class SadTalkerRelease:
    """The files of one SadTalker release, resolved.

    Attributes:
        folder: the checkpoints folder.
        audio2coeff: the checkpoints folder (both .pth parts) or the safetensors.
        renderer: ``facevid2vid_00189-model.pth.tar`` or the safetensors.
        mapping: the MappingNet file; ``mapping_dim`` its input size (70 or 73).
        recon: ``epoch_20.pth`` or the safetensors.
        bfm_folder: the folder with ``BFM_model_front.mat`` and ``similarity_Lm3D_all.mat``.
        size: the renderer's resolution (256 or 512).
    """

    folder: Path
    audio2coeff: Path
    renderer: Path
    mapping: Path
    mapping_dim: int
    recon: Path
    bfm_folder: Path
    size: int


def resolve_release(path: str | os.PathLike[str], size: int = 256) -> SadTalkerRelease:
    """Find each file of a SadTalker release (module table).

    Args:
        path: SadTalker's repository root, its ``checkpoints/`` folder, or the ``SadTalker_V0.0.2_<size>.safetensors``
            file itself (its folder is searched for the rest).
        size: 256 (``.pth`` files or the 256 safetensors) or 512 (the 512 safetensors only).
    Raises:
        SadTalkerReleaseError: listing every missing file, what it fills, and the alternatives looked for.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    path = Path(path)
    if not path.exists():
        raise SadTalkerReleaseError(f"{path}: no such SadTalker release folder or file")
    folder = path.parent if path.is_file() else checkpoint_folder(path)
    combined = path if path.is_file() else folder / combined_file(size)
    missing: list[str] = []

    audio2coeff = audio2coeff_source(folder, combined, size)
    if audio2coeff is None:
        audio2coeff = folder
        missing.append(f"ExpNet + PoseVAE: {combined.name}"
                       + (f", or {' + '.join(PART_FILES.values())}" if size == 256 else ""))

    renderer = renderer_source(folder, combined, size)
    if renderer is None:
        renderer = combined
        missing.append(f"renderer: {combined.name}" + (f", or {FV2V_FILE}" if size == 256 else ""))

    mapping, mapping_dim = (mapping_source(folder)
                            or (folder / next(iter(MAPPING_FILES)), 70))
    if not mapping.is_file():
        missing.append(f"MappingNet: {' or '.join(MAPPING_FILES)}")

    recon = folder / deep3d_mod.CHECKPOINT_FILE
    if not recon.is_file():
        recon = combined
    if not recon.is_file():
        missing.append(f"Deep3DFaceRecon network: {deep3d_mod.CHECKPOINT_FILE}, or {combined.name}")

    bfm_candidates = [folder / BFM_SUBFOLDER, folder, folder.parent / "src" / "config"]
    need = (bfm_mod.BFM_FILE, bfm_mod.STANDARD_LANDMARKS_FILE)
    found = {n: next((c / n for c in bfm_candidates if (c / n).is_file()), None) for n in need}
    bfm_folder = folder / BFM_SUBFOLDER
    if all(found.values()):
        if found[need[0]].parent != found[need[1]].parent:  # type: ignore[union-attr]
            missing.append(f"BFM files in one folder: {found[need[0]]} and {found[need[1]]} are apart")
        bfm_folder = found[need[0]].parent  # type: ignore[union-attr]
    else:
        missing += [f"{n}: in {' or '.join(str(c) for c in bfm_candidates)}" for n, p in found.items() if p is None]
    if missing:
        raise SadTalkerReleaseError(f"{path}: incomplete SadTalker release (checkpoints folder {folder}); missing:\n"
                                    + "\n".join(f"  {m}" for m in missing))
    return SadTalkerRelease(folder, audio2coeff, renderer, mapping, mapping_dim, recon, bfm_folder, size)


def renderer_config(release: SadTalkerRelease, image_size: int | None = None) -> RendererConfig:
    """SadTalker's renderer at full size, driven by coefficients through its MappingNet, without CERL, with its
    grid_sample convention (align_corners False). `image_size` overrides the release's resolution (the networks are
    convolutional; a smaller side only makes checks faster)."""
    return RendererConfig(image_size=image_size or release.size, align_corners=False,
                          cerl=dataclasses.replace(CERLConfig(), enabled=False), motion_source="coefficients",
                          mapping=dataclasses.replace(MappingConfig(), coeff_dim=release.mapping_dim))


def load_renderer(release: SadTalkerRelease, *, image_size: int | None = None,
                  device: str | torch.device = "cpu") -> Renderer:
    """The renderer + MappingNet of a release, filled strictly, frozen, in eval mode."""
    renderer = Renderer(renderer_config(release, image_size))
    load_sadtalker_renderer(renderer, release.renderer, mapping_path=release.mapping)
    return renderer.eval().requires_grad_(False).to(device)


def load_audio2coeff(release: SadTalkerRelease, device: str | torch.device = "cpu") -> Audio2Coeff:
    """ExpNet + PoseVAE of a release at SadTalker's sizes (pose statistics 0 / 1: SadTalker's poses are not
    normalised), filled strictly, frozen, in eval mode."""
    model = Audio2Coeff(Audio2CoeffConfig(pose_generator="posevae"))
    load_sadtalker_weights(model, release.audio2coeff)
    return model.eval().requires_grad_(False).to(device)


def load_coefficient_estimator(release: SadTalkerRelease, *, batch_size: int = 16,
                               device: str | torch.device = "cpu") -> deep3d_mod.Deep3DEstimator:
    """Deep3DFaceRecon + the BFM files of a release (the `deep3d` coefficient backend)."""
    return deep3d_mod.Deep3DEstimator.from_files(release.recon, release.bfm_folder, batch_size=batch_size,
                                                 device=device)


@dataclass
class SadTalkerModels:
    """SadTalker's networks from one release: renderer (+ MappingNet), Audio2Coeff, and the coefficient estimator."""

    renderer: Renderer
    audio2coeff: Audio2Coeff
    estimator: deep3d_mod.Deep3DEstimator
    release: SadTalkerRelease

    def sources(self) -> dict[str, str]:
        r = self.release
        return {"renderer": str(r.renderer), "mapping": str(r.mapping), "audio2coeff": str(r.audio2coeff),
                "coeff_estimator": str(r.recon), "bfm_folder": str(r.bfm_folder)}


def load_release(path: str | os.PathLike[str], *, size: int = 256, image_size: int | None = None,
                 device: str | torch.device = "cpu") -> SadTalkerModels:
    """Resolve a release (`resolve_release`) and fill every network it feeds (`tavce animate --sadtalker`)."""
    release = resolve_release(path, size)
    return SadTalkerModels(load_renderer(release, image_size=image_size, device=device),
                           load_audio2coeff(release, device), load_coefficient_estimator(release, device=device),
                           release)
