"""One self-describing model file (``tavce export``): every network `animate` runs + the expression basis + a manifest.

A bundle is a zip archive (stored, not compressed: checkpoints do not compress) holding the files of a ``models/``
folder in the same layout (``renderer/checkpoint.pt`` or ``train/checkpoint.pt``, ``audio2coeff/checkpoint.pt``,
``tavc/checkpoint.pt``, ``expression_basis.npz``) and ``manifest.json``:

- ``format``: :data:`BUNDLE_FORMAT`;
- ``files``: name -> {sha256, bytes}, checked when the bundle is read;
- ``configs``: name -> the model config stored in that checkpoint (and its kind and step), readable without torch;
- ``versions``: what the caller records about the code and data that trained the models (the CLI: git revision and
  dirty flag, and the ``dvc.lock`` entries — input hashes — of the stages that wrote each file);
- ``preprocess``: the crop settings the training corpus was made with (``crop_scale``), so `animate` frames faces
  the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

from pipeline.checkpoint import load_checkpoint
from pipeline.io import atomic_path

BUNDLE_FORMAT = "tavce-bundle/1"
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle that cannot be read; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_bundle(files: Mapping[str, str | os.PathLike[str]], out: str | os.PathLike[str], *,
                  versions: Mapping[str, Any] | None = None, preprocess: Mapping[str, Any] | None = None) -> dict:
    """Write a bundle atomically.

    Args:
        files: bundle name (``renderer/checkpoint.pt``, ``expression_basis.npz``, ...) -> file on disk.
        out: the ``.tavce`` file.
        versions: code/data versions to record (free-form JSON).
        preprocess: crop settings to record (``crop_scale``).
    Returns:
        The manifest.
    """
    manifest: dict[str, Any] = {"format": BUNDLE_FORMAT, "files": {}, "configs": {},
                                "versions": dict(versions or {}), "preprocess": dict(preprocess or {})}
    for name, path in sorted(files.items()):
        path = Path(path)
        manifest["files"][name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        if name.endswith(".pt"):
            ckpt = load_checkpoint(path)
            manifest["configs"][name] = {"kind": ckpt["kind"], "step": ckpt["step"],
                                         "model": ckpt["config"].get("model", ckpt["config"])}
    with atomic_path(out, suffix=".tavce") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            # Fixed timestamps: the same models give the same bundle bytes.
            info = zipfile.ZipInfo(MANIFEST, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, json.dumps(manifest, indent=1, sort_keys=True, default=str))
            for name, path in sorted(files.items()):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                with open(path, "rb") as src, z.open(info, "w") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a bundle, without extracting it."""
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read(MANIFEST))
    except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not a tavce bundle ({err})") from err
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    return manifest


def extract_bundle(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Unpack a bundle's files into `folder` (a ``models/`` layout), checking their hashes; returns the manifest."""
    manifest = read_manifest(path)
    folder = Path(folder)
    with zipfile.ZipFile(path) as z:
        for name, meta in manifest["files"].items():
            target = (folder / name).resolve()
            if folder.resolve() not in target.parents:
                raise BundleError(f"{path}: member {name!r} points outside the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with z.open(name) as src, open(target, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)
            except KeyError as err:
                raise BundleError(f"{path}: the manifest lists {name} but the archive lacks it") from err
            except zipfile.BadZipFile as err:
                raise BundleError(f"{path}: {name} is damaged ({err})") from err
            if _sha256(target) != meta["sha256"]:
                raise BundleError(f"{path}: {name} is damaged (sha256 differs from the manifest)")
    return manifest
