from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pipeline.config import CommonConfig, ConfigError, flatten, from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    a: int = 1
    b: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Outer:
    lr: float
    mode: Literal["matmul", "diag"] = "matmul"
    enabled: bool = True
    weights: str | None = None
    inner: Inner = field(default_factory=Inner)


def _full(**over: object) -> dict:
    """A complete `Outer` section with some keys replaced (None values delete the key)."""
    d: dict = {"lr": 1.0, "mode": "matmul", "enabled": True, "weights": None, "inner": {"a": 1, "b": [1.0]}}
    for k, v in over.items():
        if k == "inner":
            d["inner"] = {**d["inner"], **v}  # type: ignore[dict-item]
        elif v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return d


_DROP = object()


def test_valid_section_round_trip() -> None:
    cfg = from_dict(Outer, _full(lr=2.0e-4, mode="diag", inner={"a": 3, "b": [1, 2.5]}), "train")
    assert cfg == Outer(lr=2.0e-4, mode="diag", inner=Inner(a=3, b=(1.0, 2.5)))
    assert to_dict(cfg)["inner"]["b"] == [1.0, 2.5]
    assert flatten(to_dict(cfg))["inner.a"] == 3


def test_int_accepted_for_float() -> None:
    assert from_dict(Outer, _full(lr=1), "train").lr == 1.0


@pytest.mark.parametrize("data, key", [
    (_full(lrr=2), "train.lrr"),                              # unknown key
    (_full(lr=_DROP), "train.lr"),                            # missing key
    (_full(enabled=_DROP), "train.enabled"),                  # missing key that has a default in code
    ({"lr": 1.0, "mode": "matmul", "enabled": True, "weights": None, "inner": {"a": 1}}, "train.inner.b"),
    (_full(lr="fast"), "train.lr"),                           # wrong type
    (_full(mode="both"), "train.mode"),                       # not a choice
    (_full(enabled="yes"), "train.enabled"),                  # string for bool
    (_full(inner={"a": 1.5}), "train.inner.a"),               # float for int
    (_full(inner={"a": True}), "train.inner.a"),              # bool for int
    (_full(inner={"b": ["x"]}), "train.inner.b[0]"),
    (_full(inner={"c": 1}), "train.inner.c"),
    (_full(lr=None), "train.lr"),
])
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        from_dict(Outer, data, "train")


def test_yaml_exponent_trap_is_explained() -> None:
    data = yaml.safe_load("lr: 2e-4\n")
    assert data["lr"] == "2e-4"  # PyYAML (YAML 1.1) reads this as a string
    with pytest.raises(ConfigError, match=r"train\.lr.*2\.0e-4"):
        from_dict(Outer, data, "train")


def test_validate_hook_names_section() -> None:
    paths = {"raw": "r", "processed": "p", "reports": "q"}
    with pytest.raises(ConfigError, match="common"):
        from_dict(CommonConfig, {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 100, "device": "cpu", "precision": "fp32", "launcher": "python", "paths": paths},
                  "common")
    with pytest.raises(ConfigError, match="common.*fps 25 and sample_rate 16000"):
        from_dict(CommonConfig, {"seed": 0, "fps": 30, "sample_rate": 16000, "image_size": 256, "device": "cpu", "precision": "fp32", "launcher": "python", "paths": paths},
                  "common")


def test_project_params_load() -> None:
    """params.yaml's sections load strictly into their dataclasses."""
    from pipeline.preprocess import PreprocessConfig
    from pipeline.synth.corpus import SynthConfig

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    common = from_dict(CommonConfig, params["common"], "common")
    assert (common.fps, common.sample_rate) == (25, 16000)
    from_dict(PreprocessConfig, params["preprocess"], "preprocess")
    from_dict(SynthConfig, params["synth"], "synth")


def test_stage_cli_reports_bad_params(tmp_path: Path) -> None:
    """A wrong type in params.yaml stops a stage with the key's name, before any work."""
    from stages import preprocess

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["preprocess"]["workers"] = "two"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"preprocess\.workers"):
        preprocess.main(["--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(p)])


@dataclass(frozen=True)
class Pairs:
    size: tuple[int, float] = (1, 2.0)


def test_fixed_length_tuple() -> None:
    assert from_dict(Pairs, {"size": [3, 4]}, "s").size == (3, 4.0)
    with pytest.raises(ConfigError, match=r"s\.size\[0\]"):
        from_dict(Pairs, {"size": [3.5, 4]}, "s")
    with pytest.raises(ConfigError, match=r"s\.size: expected a list of 2"):
        from_dict(Pairs, {"size": [3]}, "s")


def test_fill_defaults_completes_configs_stored_before_a_key_existed() -> None:
    old = {"lr": 2.0, "inner": {"a": 3}}  # written before mode / enabled / weights / inner.b existed
    with pytest.raises(ConfigError, match="missing"):
        from_dict(Outer, old, "model")
    got = from_dict(Outer, old, "model", fill_defaults=True)
    assert got == Outer(lr=2.0, inner=Inner(a=3))
    with pytest.raises(ConfigError, match="model.lr: missing"):  # a key without a default is still required
        from_dict(Outer, {"inner": {}}, "model", fill_defaults=True)
    with pytest.raises(ConfigError, match="missing"):  # and the strict mode is back afterwards
        from_dict(Outer, old, "model")


def test_common_training_settings_are_validated_with_their_names() -> None:
    base = {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 256, "device": "cpu", "precision": "fp32",
            "launcher": "python", "paths": {"raw": "r", "processed": "p", "reports": "q"}}
    assert from_dict(CommonConfig, {**base, "launcher": "torchrun --nproc_per_node=2"}, "common").launcher
    for key, bad, msg in (("device", "tpu", "common.*device 'tpu'"), ("precision", "fp8", "common.*precision 'fp8'"),
                          ("launcher", "mpirun -n 2", "common.*launcher 'mpirun -n 2'")):
        with pytest.raises(ConfigError, match=msg):
            from_dict(CommonConfig, {**base, key: bad}, "common")
