"""Training plumbing: keyed batches, checkpoints, strict weight loading, curves, bootstrap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.train import common as tc


class _Keyed(torch.utils.data.Dataset):
    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(tc.sample_rng(7, *key).normal(size=3))


def _batches(workers: int, start: int, stop: int) -> list[torch.Tensor]:
    return list(tc.step_loader(_Keyed(), 4, start, stop, workers))


def test_batches_do_not_depend_on_workers_or_resume() -> None:
    full = _batches(0, 0, 6)
    assert len(full) == 6 and full[0].shape == (4, 3)
    assert all(torch.equal(a, b) for a, b in zip(full, _batches(2, 0, 6)))
    assert all(torch.equal(a, b) for a, b in zip(full[3:], _batches(0, 3, 6)))
    assert not torch.equal(full[0], full[1])


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
    tc.save_checkpoint(path, kind="toy", config=_Cfg(), model=model, optimizer=opt, step=5, fingerprint=fp,
                       extra={"history": [{"step": 1.0, "loss": 0.5}]})
    state = tc.load_checkpoint(path, "toy")
    assert state["step"] == 5 and state["config"] == {"width": 4} and state["extra"]["history"][0]["loss"] == 0.5
    other = nn.Linear(3, 4)
    tc.load_state_strict(other, state["model"], str(path))
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(tc.WeightsError, match="expected `other`"):
        tc.load_checkpoint(path, "other")
    assert tc.resumable(path, fp, "toy") is not None
    assert tc.resumable(path, tc.fingerprint(_Cfg(width=8), "data-v1"), "toy") is None
    assert not list(path.parent.glob(".tmp*"))
    again = tmp_path / "again.pt"  # same state, other file name: the same bytes (DVC sees identical outputs)
    tc.save_checkpoint(again, kind="toy", config=_Cfg(), model=model, optimizer=opt, step=5, fingerprint=fp,
                       extra={"history": [{"step": 1.0, "loss": 0.5}]})
    assert again.read_bytes() == path.read_bytes()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(tc.WeightsError, match="checkpoint.pt: not a readable checkpoint"):
        tc.load_checkpoint(bad)
    assert tc.resumable(bad, "x", "toy") is None
    with pytest.raises(tc.WeightsError, match="not found"):
        tc.load_checkpoint(tmp_path / "missing.pt")


def test_strict_loading_lists_what_does_not_fit() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4), "2.weight": torch.zeros(2, 5),
             "extra.weight": torch.zeros(1)}
    with pytest.raises(tc.WeightsError) as err:
        tc.load_state_strict(model, state, "w.pth")
    msg = str(err.value)
    assert "w.pth" in msg and "1 missing [2.bias]" in msg and "1 unexpected [extra.weight]" in msg
    assert "2.weight: file (2, 5) vs model (2, 4)" in msg


def test_map_keys_renames_drops_and_refuses_unmatched() -> None:
    state = {"module.enc.a": torch.zeros(1), "module.fc.w": torch.zeros(1)}
    assert list(tc.map_keys(state, [("module.enc.", "encoder.")], "f", drop=["module.fc."])) == ["encoder.a"]
    with pytest.raises(tc.WeightsError, match="match no mapping rule"):
        tc.map_keys(state, [("module.enc.", "encoder.")], "f")


def test_read_weight_file_unwraps_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3}, path)
    assert set(tc.read_weight_file(path)) == {"a"}
    torch.save({"a": [1, 2]}, path)
    with pytest.raises(tc.WeightsError, match="state dict of tensors"):
        tc.read_weight_file(path)


def test_history_plot_and_truncate(tmp_path: Path) -> None:
    h = tc.History()
    for s in range(1, 11):
        h.add(s, loss=1.0 / s, acc=s / 10)
    h.truncate(5)
    steps, loss = h.series("loss")
    assert steps.tolist() == [1, 2, 3, 4, 5] and loss[-1] == pytest.approx(0.2)
    tc.plot_curves(h, tmp_path / "c.png", {"loss": ["loss"], "acc": ["acc"]}, smooth=2)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_bootstrap_interval_covers_the_mean_and_clusters_widen_it() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=400)
    lo, hi = tc.bootstrap_ci(x, seed=1)
    assert lo < x.mean() < hi and 0.1 < hi - lo < 0.3
    groups = np.repeat(np.arange(8), 50)
    y = np.repeat(rng.normal(0, 1, size=8), 50) + rng.normal(0, 0.1, size=400)  # strongly clustered
    glo, ghi = tc.bootstrap_ci(y, groups=groups, seed=1)
    plo, phi = tc.bootstrap_ci(y, seed=1)
    assert ghi - glo > 3 * (phi - plo)
