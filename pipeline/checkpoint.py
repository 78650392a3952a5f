"""Checkpoints and weight files: the one place where tensors are written to and read from disk.

A tavce checkpoint is ``{format, kind, config, model, optimizer, step, fingerprint, extra}``:

- ``kind`` names the model family (``tavc``, ``syncnet``, ``syncers``, ``renderer``; each model file defines its
  ``CHECKPOINT_KIND`` beside its class);
- ``config`` is the (training) config dataclass stored as a dict, holding the model dimensions, so that loading
  rebuilds the network from the file alone (whisper's ``dims`` beside the weights);
- ``model`` / ``optimizer`` are state dicts; ``step`` the number of optimiser steps done; ``fingerprint`` decides
  whether a run may resume it (:mod:`pipeline.train.common`); ``extra`` holds what else a loop needs to resume.

Files are read with ``torch.load(..., weights_only=True)`` and loaded strictly: a file that does not fit the model
raises :class:`WeightsError` naming the file and the keys at fault. :func:`load_model` is the single loader every
trained model goes through (``load_tavc``, ``load_syncnet``, ``load_syncers``, ``load_renderer`` beside their
classes are thin wrappers that say how to rebuild their network). Public third-party weight files (Wav2Lip,
syncnet_v2, SadTalker, torchvision, Hopenet ...) are read with :func:`read_weight_file` and renamed with
:func:`map_keys`: one explicit rule list per format, no prefix stripping scattered around.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from pipeline.config import to_dict
from pipeline.io import atomic_path

CHECKPOINT_FORMAT = 1

M = TypeVar("M", bound=nn.Module)


class WeightsError(ValueError):
    """A checkpoint or pretrained weight file does not fit the model; the message names the file and the keys."""


# ----------------------------------------------------------------------------------------------------------------
# tavce checkpoints
# ----------------------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike[str], *, kind: str, config: Any, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, step: int, fingerprint: str = "",
                    extra: Mapping[str, Any] | None = None) -> None:
    """Atomically write a checkpoint; `config` is the model/training config dataclass (stored as a dict)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": to_dict(config) if dataclasses.is_dataclass(config) else dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "fingerprint": fingerprint,
        "extra": dict(extra or {}),
    }
    # Serialised through a buffer: torch.save names the zip's top folder after the file, and the temporary file
    # has a random name, so saving to it directly would make identical checkpoints differ byte for byte (DVC hashes).
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``), checking its kind."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise WeightsError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a tavce checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if kind is not None and state.get("kind") != kind:
        raise WeightsError(f"{path}: a `{state.get('kind')}` checkpoint, expected `{kind}`")
    return state


def load_model(path: str | os.PathLike[str], kind: str, build: Callable[[Mapping[str, Any]], M], *,
               frozen: bool = True, device: str | torch.device = "cpu") -> M:
    """A trained model from a tavce checkpoint: rebuilt from the stored config, loaded strictly, in eval mode.

    Args:
        path: checkpoint file.
        kind: the checkpoint kind the caller expects (e.g. ``"tavc"``); another kind raises.
        build: makes the untrained network from the checkpoint dict (it reads ``state["config"]`` and, for
            families stored as several networks, ``state["extra"]``). A ``KeyError``/``TypeError``/``ValueError``
            it raises becomes a :class:`WeightsError` naming the file.
        frozen: set ``requires_grad = False`` on every parameter (inference); False to fine-tune.
        device: where the returned model lives.

    Raises:
        WeightsError: the file is missing, unreadable, of another kind, has no usable config, or its weights do not
            fit the rebuilt model (with the keys at fault).
    """
    state = load_checkpoint(path, kind)
    try:
        model = build(state)
    except WeightsError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # ConfigError is a ValueError
        raise WeightsError(f"{Path(path)}: the stored config cannot rebuild a `{kind}` model "
                           f"({type(err).__name__}: {err})") from err
    load_state_strict(model, state["model"], str(path))
    model.eval()
    if frozen:
        model.requires_grad_(False)
    return model.to(device)


# ----------------------------------------------------------------------------------------------------------------
# State dicts and public weight files
# ----------------------------------------------------------------------------------------------------------------
def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)` with one error that lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")
        parts = [f"{len(missing)} missing [{head(missing)}]" if missing else "",
                 f"{len(unexpected)} unexpected [{head(unexpected)}]" if unexpected else "",
                 f"{len(shapes)} with other shapes [{head(shapes)}]" if shapes else ""]
        raise WeightsError(f"{source}: weights do not fit {type(module).__name__}: "
                           + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


# safetensors dtype names -> torch dtypes (the format's table; https://github.com/huggingface/safetensors).
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file (SadTalker's release), CPU.

    The format is an 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}}``
    (plus an optional ``__metadata__``), then the raw little-endian tensor bytes; read here without the
    `safetensors` package, so no extra dependency is needed and nothing is executed.
    """
    import json
    import struct

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
    except (OSError, struct.error, ValueError) as err:
        raise WeightsError(f"{path}: not a readable .safetensors file ({type(err).__name__}: {err})") from err
    out: dict[str, torch.Tensor] = {}
    view = memoryview(data)  # slices without a copy; bytearray() makes the one each tensor keeps
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            t = torch.frombuffer(bytearray(view[start:end]), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise WeightsError(f"{path}: entry {name!r} is malformed ({type(err).__name__}: {err})") from err
    return out


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write tensors in the ``.safetensors`` layout (`read_safetensors`); for tests and conversions."""
    import json
    import struct

    names = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, t in state.items():
        b = t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else \
            t.detach().cpu().contiguous().view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def read_weight_file(path: str | os.PathLike[str], nested_keys: Sequence[str] = ("state_dict", "model")
                     ) -> dict[str, torch.Tensor]:
    """Tensors of a public weight file (a state dict, possibly nested under 'state_dict'/'model'), CPU, weights only.
    A ``.safetensors`` file is read with `read_safetensors` (flat: `nested_keys` do not apply)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    for key in nested_keys:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def map_keys(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]], source: str,
             drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Rename keys by the first matching prefix rule ``(old_prefix, new_prefix)``; keys starting with a `drop`
    prefix are discarded; a key no rule matches is an error (so a wrong file cannot load half-way)."""
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    for key, value in state.items():
        if any(key.startswith(d) for d in drop):
            continue
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise WeightsError(f"{source}: {len(unmatched)} key(s) match no mapping rule, e.g. {unmatched[:5]} "
                           f"(rules: {[r[0] for r in rules]})")
    return out
