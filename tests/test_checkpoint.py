"""Checkpoints and weight files (pipeline.checkpoint): format, atomic identical bytes, strict loading, key mapping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import checkpoint as ck
from pipeline.train import common as tc


@dataclass(frozen=True)
class _Cfg:
    width: int = 4


def test_checkpoint_round_trip_and_kind(tmp_path: Path) -> None:
    model = nn.Linear(3, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    path = tmp_path / "m" / "checkpoint.pt"
    fp = tc.fingerprint(_Cfg(), "data-v1")
    ck.save_checkpoint(path, kind="toy", config=_Cfg(), model=model, optimizer=opt, step=5, fingerprint=fp,
                       extra={"history": [{"step": 1.0, "loss": 0.5}]})
    state = ck.load_checkpoint(path, "toy")
    assert state["step"] == 5 and state["config"] == {"width": 4} and state["extra"]["history"][0]["loss"] == 0.5
    other = nn.Linear(3, 4)
    ck.load_state_strict(other, state["model"], str(path))
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(ck.WeightsError, match="expected `other`"):
        ck.load_checkpoint(path, "other")
    assert tc.resumable(path, fp, "toy") is not None
    assert tc.resumable(path, tc.fingerprint(_Cfg(width=8), "data-v1"), "toy") is None
    assert not list(path.parent.glob(".tmp*"))
    again = tmp_path / "again.pt"  # same state, other file name: the same bytes (DVC sees identical outputs)
    ck.save_checkpoint(again, kind="toy", config=_Cfg(), model=model, optimizer=opt, step=5, fingerprint=fp,
                       extra={"history": [{"step": 1.0, "loss": 0.5}]})
    assert again.read_bytes() == path.read_bytes()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ck.WeightsError, match="checkpoint.pt: not a readable checkpoint"):
        ck.load_checkpoint(bad)
    assert tc.resumable(bad, "x", "toy") is None
    with pytest.raises(ck.WeightsError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_strict_loading_lists_what_does_not_fit() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4), "2.weight": torch.zeros(2, 5),
             "extra.weight": torch.zeros(1)}
    with pytest.raises(ck.WeightsError) as err:
        ck.load_state_strict(model, state, "w.pth")
    msg = str(err.value)
    assert "w.pth" in msg and "1 missing [2.bias]" in msg and "1 unexpected [extra.weight]" in msg
    assert "2.weight: file (2, 5) vs model (2, 4)" in msg


def test_map_keys_renames_drops_and_refuses_unmatched() -> None:
    state = {"module.enc.a": torch.zeros(1), "module.fc.w": torch.zeros(1)}
    assert list(ck.map_keys(state, [("module.enc.", "encoder.")], "f", drop=["module.fc."])) == ["encoder.a"]
    with pytest.raises(ck.WeightsError, match="match no mapping rule"):
        ck.map_keys(state, [("module.enc.", "encoder.")], "f")


def test_read_weight_file_unwraps_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3}, path)
    assert set(ck.read_weight_file(path)) == {"a"}
    torch.save({"a": [1, 2]}, path)
    with pytest.raises(ck.WeightsError, match="state dict of tensors"):
        ck.read_weight_file(path)


def test_load_model_rebuilds_freezes_and_names_the_file(tmp_path: Path) -> None:
    model = nn.Linear(3, 4)
    path = tmp_path / "toy.pt"
    ck.save_checkpoint(path, kind="toy", config={"model": {"width": 4}}, model=model, optimizer=None, step=1)

    def build(state):
        return nn.Linear(3, state["config"]["model"]["width"])

    loaded = ck.load_model(path, "toy", build)
    assert torch.equal(loaded.weight, model.weight) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert all(p.requires_grad for p in ck.load_model(path, "toy", build, frozen=False).parameters())
    with pytest.raises(ck.WeightsError, match="toy.pt: the stored config cannot rebuild a `toy` model"):
        ck.load_model(path, "toy", lambda state: nn.Linear(3, state["config"]["missing"]))
    with pytest.raises(ck.WeightsError, match="weights do not fit Linear"):
        ck.load_model(path, "toy", lambda state: nn.Linear(3, 5))
