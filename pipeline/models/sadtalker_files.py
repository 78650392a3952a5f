"""Where SadTalker's release keeps each network's weights: the file names and the lookup rules, shared by the
loaders' folder branches (`pipeline.models.audio2coeff.sadtalker_audio2coeff_source`,
`pipeline.models.renderer.renderer.sadtalker_renderer_files`) and `pipeline.models.sadtalker.resolve_release`, so
that the three agree on which file fills which network. Paths only: nothing here reads a file."""

from __future__ import annotations

import os
from pathlib import Path

# ExpNet and PoseVAE of the 256 release, one file each (SadTalker's spelling "auido").
PART_FILES = {"audio2exp": "auido2exp_00300-model.pth", "audio2pose": "auido2pose_00140-model.pth"}
# facevid2vid with the head-pose estimator (the 256 release only).
FV2V_FILE = "facevid2vid_00189-model.pth.tar"
# MappingNet: 00229 reads 70 coefficients (SadTalker's `crop`/`resize` modes, this pipeline's layout); 00109 reads 73
# (its `full` mode: the 70 plus the portrait's alignment scale and translation, `pipeline.faces.bfm.Alignment`).
MAPPING_FILES = {"mapping_00229-model.pth.tar": 70, "mapping_00109-model.pth.tar": 73}


def combined_file(size: int = 256) -> str:
    """The safetensors holding ExpNet, PoseVAE, the renderer (no head-pose estimator) and the recon network."""
    return f"SadTalker_V0.0.2_{size}.safetensors"


def checkpoint_folder(path: str | os.PathLike[str]) -> Path:
    """A SadTalker release folder -> the folder holding its checkpoint files (``<path>/checkpoints`` if present)."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def audio2coeff_source(folder: Path, combined: Path, size: int = 256) -> Path | None:
    """Audio2Coeff's weights: `folder` when it holds both part files (256 only), else `combined` if it exists."""
    if size == 256 and all((folder / f).is_file() for f in PART_FILES.values()):
        return folder
    return combined if combined.is_file() else None


def renderer_source(folder: Path, combined: Path, size: int = 256) -> Path | None:
    """The renderer's weights: facevid2vid (256 only, with the head-pose estimator), else `combined` if it exists."""
    fv2v = folder / FV2V_FILE
    if size == 256 and fv2v.is_file():
        return fv2v
    return combined if combined.is_file() else None


def mapping_source(folder: Path, coeff_dim: int | None = None) -> tuple[Path, int] | None:
    """The first MappingNet file present (in `MAPPING_FILES` order) reading `coeff_dim` inputs (any when None),
    with its input size."""
    return next(((folder / f, dim) for f, dim in MAPPING_FILES.items()
                 if (folder / f).is_file() and coeff_dim in (None, dim)), None)
