"""TAVCE's audio-driven stage `train` (pipeline/train/tavce.py, stages/train.py): the derived configuration, what a
step trains (MappingNet, renderer, CAR; frozen TAVC), the stage end to end with kill / resume, tiny dimensions."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from pipeline.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from pipeline.config import to_dict
from pipeline.losses.renderer import PerceptualConfig
from pipeline.models.renderer.mapping import MappingConfig
from pipeline.models.renderer.renderer import Renderer
from pipeline.tracking import NullTracker
from pipeline.train.tavce import AudioDrivenLossWeights, CARSwitch, CERLSwitch, TrainTAVCEConfig, renderer_config
from tests.killing import Killed, KillAt
from tests.test_renderer_train import TINY, _batch, _snapshot, _changed, _tavc_checkpoint

TINY_MAPPING = MappingConfig(descriptor_dim=16, num_kp=TINY.num_kp, window=9, num_layers=0)


def _cfg(**changes) -> TrainTAVCEConfig:
    base = TrainTAVCEConfig(
        lr=1e-3, renderer_lr=2e-4, steps=4, batch_size=2, mapping=TINY_MAPPING,
        loss_weights=AudioDrivenLossWeights(l1=10.0),
        perceptual=PerceptualConfig(weights=None, fallback="random_vgg19", scales=(1.0, 0.5), layer_weights=(1.0,)),
        eval_pairs_per_clip=2, eval_every=2, landmark_size=128, bootstrap=20, log_every=1, checkpoint_every=2,
        workers=0, cache_mb=16, threads=0)
    return dataclasses.replace(base, **changes)


def _pretrained(path, model=TINY):
    torch.manual_seed(1)
    r = Renderer(model)
    save_checkpoint(path, kind="renderer", config={"model": to_dict(model)}, model=r, optimizer=None, step=1)
    return path


def test_derived_config_drives_the_pretrained_renderer_from_coefficients():
    rc = renderer_config(_cfg(), TINY)
    assert rc.model.motion_source == "coefficients" and rc.model.mapping == TINY_MAPPING
    assert rc.loss_weights.car == 0.1 and rc.loss_weights.equivariance == 0 and rc.mapping_lr == 1e-3
    assert rc.lr == 2e-4 and rc.model.cerl.enabled
    own = dataclasses.replace(TINY, motion_source="coefficients",
                              mapping=dataclasses.replace(TINY_MAPPING, descriptor_dim=8))
    assert renderer_config(_cfg(), own).model.mapping.descriptor_dim == 8  # the pretrained MappingNet's shape
    ablated = renderer_config(_cfg(cerl=CERLSwitch(False), car=CARSwitch(0.0)), TINY)
    assert not ablated.model.cerl.enabled and ablated.loss_weights.car == 0
    with pytest.raises(ValueError, match="num_kp"):
        renderer_config(_cfg(mapping=dataclasses.replace(TINY_MAPPING, num_kp=TINY.num_kp + 1)), TINY)


def test_a_step_trains_mapping_and_renderer_with_car_and_leaves_tavc_frozen():
    from pipeline.models.tavc import TAVC
    from pipeline.train.renderer import RendererTrainer
    from tests.test_renderer_train import TINY_TAVC

    torch.manual_seed(0)
    trainer = RendererTrainer(renderer_config(_cfg(), TINY), 0, TAVC(TINY_TAVC), None, torch.device("cpu"))
    assert [g["lr"] for g in trainer.opt_g.param_groups] == [2e-4, 1e-3]  # renderer, MappingNet
    g = torch.Generator().manual_seed(4)
    lm = torch.rand(2, 2, 68, 2, generator=g) * 16 + 8
    batch = dict(_batch(b=2, seed=3), coeffs=0.1 * torch.randn(2, 2, 70, 9, generator=g),
                 previous=torch.rand(2, 3, 32, 32, generator=g), landmarks=lm, landmarks_previous=lm[:, 0],
                 pose=torch.zeros(2, 2, 3))
    r0, t0 = _snapshot(trainer.renderer), _snapshot(trainer.tavc)
    values = trainer.train_step(batch, 0)
    assert "car" in values and 0 <= values["car"] <= 0.1 + 1e-6  # weighted: 0.1 x (1 - similarity)
    changed = _changed(r0, trainer.renderer)
    assert any(k.startswith("mapping.") for k in changed) and any(k.startswith("generator.") for k in changed)
    assert not any(k.startswith("he_estimator.") for k in changed)
    assert not _changed(t0, trainer.tavc)


@pytest.mark.slow
def test_stage_trains_from_the_pretrained_renderer_resumes_and_loads_for_inference(processed_corpus, tmp_path):
    from pipeline.models.renderer.renderer import load_renderer
    from pipeline.train.tavce import train_tavce
    from stages import train as stage

    tavc = _tavc_checkpoint(tmp_path / "tavc.pt")
    init = _pretrained(tmp_path / "renderer.pt")
    cfg = _cfg()
    params = {"common": {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 128, "device": "cpu", "precision": "fp32", "launcher": "python",
                         "paths": {"raw": "r", "processed": "p", "reports": "rep"}}, "train": to_dict(cfg)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, reports = tmp_path / "train", tmp_path / "reports"
    assert stage.main(["--params", str(tmp_path / "params.yaml"), "--processed", str(processed_corpus),
                       "--init", str(init), "--tavc", str(tavc), "--out", str(out), "--reports", str(reports),
                       "--no-progress", "--no-track"]) == 0
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["ablation"] == {"cerl": True, "car_weight": 0.1}
    t = metrics["heldout_motion"]["tavc_similarity"]
    assert all(0 <= t[k] <= 1 for k in ("generated", "real", "source"))
    assert "car" in metrics["train"]["final_losses"] or (reports / "curves.png").is_file()
    state = load_checkpoint(out / "checkpoint.pt", "renderer")
    assert state["step"] == 4
    renderer = load_renderer(out / "checkpoint.pt")
    assert renderer.mapping is not None and renderer.cfg.motion_source == "coefficients"
    # the shared networks started from the pretrained renderer: a zero-step run equals it
    zero = train_tavce(dataclasses.replace(cfg, steps=0, eval_every=0), 0, processed=processed_corpus,
                       out=tmp_path / "zero", reports=tmp_path / "rz", tracker=NullTracker(), tavc=tavc, init=init,
                       progress=False)
    assert zero.metrics["train"]["steps"] == 0

    # killed after the step-2 checkpoint, then rerun: resumes and ends with the same weights
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train_tavce(cfg, 0, processed=processed_corpus, out=killed, reports=tmp_path / "rk", tracker=KillAt(3),
                    tavc=tavc, init=init, progress=False)
    resumed = train_tavce(cfg, 0, processed=processed_corpus, out=killed, reports=tmp_path / "rk",
                          tracker=NullTracker(), tavc=tavc, init=init, progress=False)
    assert resumed.metrics["train"]["resumed_from"] == 2
    state_b = load_checkpoint(killed / "checkpoint.pt")
    for k, v in state["model"].items():
        assert torch.equal(v, state_b["model"][k]), k

    with pytest.raises(WeightsError, match="checkpoint not found"):
        train_tavce(cfg, 0, processed=processed_corpus, out=tmp_path / "x", reports=tmp_path / "rx",
                    tracker=NullTracker(), tavc=tavc, init=tmp_path / "missing.pt", progress=False)


def test_init_weights_load_strictly_and_name_the_file(tmp_path):
    from pipeline.train.renderer import load_init_weights

    init = _pretrained(tmp_path / "renderer.pt")
    model = dataclasses.replace(TINY, motion_source="coefficients", mapping=TINY_MAPPING)
    r = Renderer(model)
    notes = load_init_weights(r, init)
    assert any("mapping" in n for n in notes)
    src = load_checkpoint(init)["model"]
    assert all(torch.equal(r.state_dict()[k], v) for k, v in src.items())
    no_cerl = Renderer(dataclasses.replace(model, cerl=dataclasses.replace(TINY.cerl, enabled=False)))
    assert any("cerl" in n for n in load_init_weights(no_cerl, init))
    other = Renderer(dataclasses.replace(TINY, num_kp=TINY.num_kp + 1))
    with pytest.raises(WeightsError, match="renderer.pt"):
        load_init_weights(other, init)
