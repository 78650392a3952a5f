"""Hopenet pose teacher (pipeline/models/hopenet.py): layout of the public file, strict loading, frozen output."""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpoint import WeightsError
from pipeline.models.hopenet import NUM_BINS, Hopenet, load_hopenet


def test_hopenet_loads_the_public_layout_and_is_frozen(tmp_path):
    torch.manual_seed(0)
    ref = Hopenet().eval()
    state = dict(ref.state_dict())
    state["fc_finetune.weight"] = torch.zeros(3, 2048 + 3)  # in the public file, unused by the forward pass
    state["fc_finetune.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "hopenet.pkl")
    model = load_hopenet(tmp_path / "hopenet.pkl")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        yaw, pitch, roll = model(x)
        expected = ref(x)
    assert yaw.shape == pitch.shape == roll.shape == (2, NUM_BINS)
    for a, b in zip((yaw, pitch, roll), expected):
        torch.testing.assert_close(a, b)


def test_hopenet_rejects_other_files(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pkl")
    with pytest.raises(WeightsError, match="missing"):
        load_hopenet(tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match="expects"):
        Hopenet()(torch.zeros(1, 64, 64))
