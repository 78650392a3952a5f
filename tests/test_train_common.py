"""What training loops share (pipeline.train.common): resume fingerprint, curves, schedule, thread setting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.train import common as tc
from pipeline.viz import plot_curves


def test_history_plot_and_truncate(tmp_path: Path) -> None:
    h = tc.History()
    for s in range(1, 11):
        h.add(s, loss=1.0 / s, acc=s / 10)
    h.truncate(5)
    steps, loss = h.series("loss")
    assert steps.tolist() == [1, 2, 3, 4, 5] and loss[-1] == pytest.approx(0.2)
    plot_curves(h, tmp_path / "c.png", {"loss": ["loss"], "acc": ["acc"]}, smooth=2)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_history_last_and_save(tmp_path: Path) -> None:
    h = tc.History()
    assert h.last("loss") is None
    h.add(1, loss=2.0)
    h.add(2, acc=0.5)
    assert h.last("loss") == 2.0 and h.last("acc") == 0.5
    h.save(tmp_path / "h.json")
    assert (tmp_path / "h.json").read_text().startswith("[")


def test_scheduled_lr_constant_and_half_cosine() -> None:
    assert tc.scheduled_lr(1e-3, 50, 100, "constant") == 1e-3
    assert tc.scheduled_lr(1e-3, 0, 100, "cosine") == pytest.approx(1e-3)
    assert tc.scheduled_lr(1e-3, 50, 100, "cosine") == pytest.approx(0.5e-3)
    assert tc.scheduled_lr(1e-3, 100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert tc.scheduled_lr(2.0, 25, 100, "cosine") == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with tc.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with tc.torch_threads(0):
        assert torch.get_num_threads() == before


def test_fingerprint_covers_config_data_and_library_source() -> None:
    a = tc.fingerprint({"lr": 1.0}, "data-v1")
    assert a == tc.fingerprint({"lr": 1.0}, "data-v1")
    assert a != tc.fingerprint({"lr": 2.0}, "data-v1") and a != tc.fingerprint({"lr": 1.0}, "data-v2")
    assert len(tc.source_digest()) == 16


def test_dense_history_rows_have_every_series_per_step():
    from pipeline.train.common import History

    h = History()
    h.add(10, loss=1.0)
    h.add(10, heldout=0.5)
    h.add(20, loss=0.5)
    assert h.dense_rows() == [{"step": 10, "heldout": 0.5, "loss": 1.0}, {"step": 20, "heldout": None, "loss": 0.5}]
