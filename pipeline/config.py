"""Strict translation of plain mappings (parsed YAML) into frozen config dataclasses.

Every stage's section of params.yaml maps onto a frozen dataclass. Unknown keys, missing keys and values of the
wrong type fail with a `ConfigError` that names the dotted key (``preprocess.workers``), so a typo in params.yaml
or in ``dvc exp run -S`` never silently falls back to a default.

Type rules (deliberately strict, because YAML is not):
- ``float`` fields accept ints (``lr: 1`` is 1.0) but not strings: PyYAML reads a hand-written ``2e-4`` as the
  *string* '2e-4' (YAML 1.1 needs a dot: ``2.0e-4``); the error says so.
- ``int`` fields reject floats and bools; ``bool`` fields accept only true/false.
- ``Literal[...]`` fields accept only the listed choices; ``tuple[X, ...]`` fields accept YAML lists;
  ``X | None`` accepts null; nested dataclasses accept mappings.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_FLOAT_LIKE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(ValueError):
    """A params section does not match its config dataclass; the message names the dotted key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)} ({'; '.join(errors)})")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_convert(k, kt, f"{key}.<key>"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if value is None:
        raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and _FLOAT_LIKE.match(value.strip()):
                hint = (f" (YAML reads '{value}' as a string; write it with a dot and a signed exponent, "
                        f"e.g. 2.0e-4, or pass it with `dvc exp run -S`)")
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config field type {tp!r}")


_FILL_DEFAULTS: contextvars.ContextVar[bool] = contextvars.ContextVar("fill_defaults", default=False)


def from_dict(cls: type[T], data: Any, where: str, *, fill_defaults: bool = False) -> T:
    """Build the frozen dataclass `cls` from the mapping `data` (a params.yaml section called `where`).

    Args:
        fill_defaults: let missing keys (of this and every nested dataclass) take their defaults. For configs stored
            inside checkpoints written before a key existed (a new key's default keeps the old behaviour); params
            sections never use it.

    Raises:
        ConfigError: for unknown keys, missing keys or wrong types, naming the dotted key.
    """
    if fill_defaults:
        token = _FILL_DEFAULTS.set(True)
        try:
            return from_dict(cls, data, where)
        finally:
            _FILL_DEFAULTS.reset(token)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)} "
                          f"(known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name not in data and _FILL_DEFAULTS.get() and (
                field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING):
            continue  # the dataclass's default
        if name not in data:
            # Defaults serve code that builds configs directly; a params section must spell out every key,
            # so that params.yaml (and `dvc params diff`) always shows the full configuration of a run.
            raise ConfigError(f"{key}: missing")
        kwargs[name] = _convert(data[name], hints[name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from err
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists), e.g. for logging params."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclasses.dataclass(frozen=True)
class PathsConfig:
    """Data and report locations, relative to the project root (dvc.yaml interpolates the same values)."""

    raw: str = "data/raw"
    processed: str = "data/processed"
    reports: str = "reports"


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # common.device
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")  # common.precision


@dataclasses.dataclass(frozen=True)
class CommonConfig:
    """`common` section of params.yaml: settings every stage shares (method.md §1)."""

    seed: int
    fps: int
    sample_rate: int
    image_size: int
    paths: PathsConfig = PathsConfig()
    device: str = "auto"  # training stages: auto (CUDA when torch sees one) | cpu | cuda
    precision: str = "fp32"  # training stages: fp32 | bf16 (autocast; CPU or CUDA) | fp16 (autocast + GradScaler, CUDA)
    launcher: str = "python"  # what dvc.yaml runs the training stages with: python | torchrun --nproc_per_node=N ...

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not self.launcher.strip() or self.launcher.split()[0] not in ("python", "python3", "torchrun"):
            raise ValueError(f"launcher {self.launcher!r}: expected `python` or `torchrun <options>` (dvc.yaml runs "
                             "`<launcher> -m stages.<stage>`)")
        # The audio features and their frame pairing (method.md §1.1: 80 mel frames/s = 16 kHz / hop 200, 4 MFCC
        # rows per video frame, mel windows at int(80 (k-2) / 25)) and public pretrained encoders assume exactly these.
        if self.fps != 25 or self.sample_rate != 16000:
            raise ValueError(f"fps {self.fps} / sample_rate {self.sample_rate}: the method.md §1.1 features require "
                             "fps 25 and sample_rate 16000 (inputs of any rate are resampled to these)")
        if self.image_size <= 0:
            raise ValueError("image_size must be positive")
        if self.image_size % 32:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 32")
