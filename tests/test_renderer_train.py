"""Renderer pretraining loop and stage (pipeline/train/renderer.py, stages/pretrain_renderer.py), tiny dimensions."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.losses.renderer import PerceptualConfig, RendererLossWeights
from pipeline.models.renderer.appearance import AppearanceConfig
from pipeline.models.renderer.cerl import CERLConfig
from pipeline.models.renderer.dense_motion import DenseMotionConfig
from pipeline.models.renderer.discriminator import DiscriminatorConfig
from pipeline.models.renderer.generator import GeneratorConfig
from pipeline.models.renderer.head_pose import HeadPoseConfig
from pipeline.models.renderer.keypoint_detector import KeypointDetectorConfig
from pipeline.models.renderer.keypoints import transform_keypoints
from pipeline.models.renderer.renderer import RendererConfig
from pipeline.models.tavc import TAVC, TAVCConfig
from pipeline.train.renderer import audio_relation
from tests.killing import Killed, KillAt

RELATION_DIM = 16
TINY_TAVC = TAVCConfig(embed_dim=RELATION_DIM, audio_width=0.0625, visual_width=0.0625)
TINY = RendererConfig(
    image_size=32, num_kp=4,
    appearance=AppearanceConfig(block_expansion=8, max_features=32, num_down_blocks=2, reshape_channel=4,
                                reshape_depth=4, num_resblocks=1),
    keypoints=KeypointDetectorConfig(block_expansion=8, max_features=32, num_blocks=2, reshape_depth=4,
                                     temperature=0.1, scale_factor=0.5),
    head_pose=HeadPoseConfig(block_expansion=8, max_features=64, num_bins=66),
    dense_motion=DenseMotionConfig(block_expansion=4, max_features=16, num_blocks=2, compress=2, kp_variance=0.01),
    generator=GeneratorConfig(block_expansion=8, num_middle_blocks=1, spade_hidden=8, spectral_norm=True,
                              estimate_occlusion_map=True),
    discriminator=DiscriminatorConfig(scales=(1.0,), block_expansion=8, max_features=32, num_blocks=2,
                                      spectral_norm=True),
    cerl=CERLConfig(enabled=True, mode="matmul", relation_dim=RELATION_DIM),
)


def _cfg(**changes):
    from pipeline.train.renderer import TrainRendererConfig

    base = TrainRendererConfig(
        model=TINY, perceptual=PerceptualConfig(weights=None, fallback="random_vgg19", scales=(1.0, 0.5),
                                                layer_weights=(1.0,)),
        loss_weights=RendererLossWeights(l1=10.0), batch_size=2, lr=1e-3, steps=4, eval_pairs_per_clip=2,
        eval_every=2, landmark_size=128, bootstrap=20, log_every=1, checkpoint_every=2, workers=0, cache_mb=16,
        threads=0)
    return dataclasses.replace(base, **changes)


def _tavc_checkpoint(path):
    torch.manual_seed(0)
    model = TAVC(TINY_TAVC)
    save_checkpoint(path, kind="tavc", config={"model": to_dict(TINY_TAVC)}, model=model, optimizer=None, step=1)
    return path


def _trainer(cfg=None):
    from pipeline.train.renderer import RendererTrainer

    torch.manual_seed(0)
    tavc = TAVC(TINY_TAVC).eval().requires_grad_(False)
    return RendererTrainer(cfg or _cfg(), 0, tavc, None, torch.device("cpu"))


def _batch(b=2, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(b, 3, s, s, generator=g)
    return {"source": src, "driving": (src + 0.05 * torch.randn(b, 3, s, s, generator=g)).clamp(0, 1),
            "mel": torch.randn(b, 2, 1, 80, 16, generator=g)}


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    """Parameters that differ from the snapshot (buffers such as BN statistics and spectral norm's power-iteration
    vectors move with every training-mode forward pass and are not optimizer updates)."""
    return sorted(k for k, v in module.named_parameters() if not torch.equal(before[k], v))


def test_config_is_strict_and_checks_types():
    from pipeline.train.renderer import TrainRendererConfig

    section = to_dict(_cfg())
    assert from_dict(TrainRendererConfig, section, "pretrain_renderer") == _cfg()
    with pytest.raises(ConfigError, match="pretrain_renderer.gan_start: missing"):
        from_dict(TrainRendererConfig, {k: v for k, v in section.items() if k != "gan_start"}, "pretrain_renderer")
    with pytest.raises(ConfigError, match="cerl.mode"):
        bad = {**section, "model": {**section["model"], "cerl": {**section["model"]["cerl"], "mode": "add"}}}
        from_dict(TrainRendererConfig, bad, "pretrain_renderer")
    with pytest.raises(ConfigError, match="lr"):
        from_dict(TrainRendererConfig, {**section, "lr": "2e-4"}, "pretrain_renderer")
    with pytest.raises(ConfigError, match="overlap"):
        from_dict(TrainRendererConfig, {**section, "eval_splits": ["train"]}, "pretrain_renderer")


def test_generator_and_discriminator_steps_change_only_their_parameters():
    trainer = _trainer()
    batch = _batch()
    r0, d0, t0 = _snapshot(trainer.renderer), _snapshot(trainer.discriminator), _snapshot(trainer.tavc)
    p0 = _snapshot(trainer.perceptual)
    values, pred = trainer.generator_update(batch, step=0)
    assert {"perceptual", "l1", "gan", "feature_matching", "equivariance", "keypoint_prior",
            "deformation_prior"} <= set(values) and "head_pose" not in values  # no pose teacher configured
    assert _changed(r0, trainer.renderer), "generator step must update the renderer"
    changed_cerl = [k for k in _changed(r0, trainer.renderer) if k.startswith("cerl.")]
    assert changed_cerl, "CERL is trained with the renderer"
    assert not _changed(d0, trainer.discriminator), "generator step must not touch the discriminator"
    assert not _changed(t0, trainer.tavc) and not _changed(p0, trainer.perceptual)

    r1 = _snapshot(trainer.renderer)
    trainer.discriminator_update(batch["driving"], pred)
    assert _changed(d0, trainer.discriminator), "discriminator step must update D"
    assert not _changed(r1, trainer.renderer), "discriminator step must not touch the renderer"


def test_gan_start_delays_the_discriminator():
    trainer = _trainer(_cfg(gan_start=5))
    d0 = _snapshot(trainer.discriminator)
    values = trainer.train_step(_batch(), step=0)
    assert "gan" not in values and "discriminator" not in values
    assert not _changed(d0, trainer.discriminator)
    assert "discriminator" in trainer.train_step(_batch(), step=5)


def test_cerl_disabled_needs_no_relation():
    from pipeline.train.renderer import RendererTrainer

    cfg = _cfg(model=dataclasses.replace(TINY, cerl=CERLConfig(enabled=False, mode="matmul",
                                                                relation_dim=RELATION_DIM)))
    trainer = RendererTrainer(cfg, 0, None, None, torch.device("cpu"))
    assert trainer.renderer.cerl is None
    assert np.isfinite(trainer.train_step(_batch(), 0)["generator_total"])


def test_short_training_lowers_the_reconstruction_loss():
    # Reconstruction terms only, 60 steps on one batch: with the keypoint/equivariance priors on as well, 30 steps
    # left L1 at 0.80-0.93 of its start depending on the CPU's float kernels and the thread count (a chaotic
    # trajectory, not a property of the code); without them it falls to 0.43-0.54 of its start on 1 or 2 threads.
    cfg = _cfg(loss_weights=RendererLossWeights(perceptual=10.0, gan=0.0, feature_matching=0.0, equivariance=0.0,
                                                keypoint_prior=0.0, head_pose=0.0, deformation_prior=0.0,
                                                l1=10.0), lr=2e-3)
    trainer = _trainer(cfg)
    batch = _batch(b=4, seed=1)
    l1 = [trainer.train_step(batch, step)["l1"] for step in range(60)]
    assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:3]), l1


def test_equivariance_warps_are_keyed_by_step():
    """The random warp of a step depends on (seed, step) only, so a resumed run repeats it."""
    trainer = _trainer()
    batch = _batch()
    trainer.renderer.eval()  # BN in eval mode: the same inputs give the same losses
    a = trainer.generator_step(batch, 3).terms["equivariance"].item()
    b = trainer.generator_step(batch, 3).terms["equivariance"].item()
    c = trainer.generator_step(batch, 4).terms["equivariance"].item()
    assert a == b and a != c


@pytest.mark.slow
def test_stage_smoke_resume_reuse_and_inference_loading(processed_corpus, tmp_path):
    from pipeline.models.renderer.renderer import load_renderer
    from pipeline.tracking import NullTracker
    from pipeline.train.renderer import pretrain_renderer
    from stages import pretrain_renderer as stage

    tavc = _tavc_checkpoint(tmp_path / "tavc.pt")
    cfg = _cfg()
    params = {"common": {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 128, "device": "cpu", "precision": "fp32", "launcher": "python",
                         "paths": {"raw": "r", "processed": "p", "reports": "rep"}},
              "pretrain_renderer": to_dict(cfg)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    full, reports = tmp_path / "full", tmp_path / "reports"
    assert stage.main(["--params", str(tmp_path / "params.yaml"), "--processed", str(processed_corpus),
                       "--tavc", str(tavc), "--out", str(full), "--reports", str(reports), "--no-progress",
                       "--no-track"]) == 0
    metrics = json.loads((reports / "metrics.json").read_text())
    h = metrics["heldout"]
    import pandas as pd

    manifest = pd.read_parquet(processed_corpus / "manifest.parquet")
    held = manifest[manifest["split"].isin(["val", "test"])]
    assert h["clips"] == len(held) and h["pairs"] == 2 * len(held)
    assert set(h["speakers"]).isdisjoint(manifest.loc[manifest["split"] == "train", "speaker"])
    assert h["l1"]["generated"] > 0 and h["l1"]["source_baseline"] > 0
    assert "lmd" in h and metrics["extractors"]["perceptual"] == "vgg19_random_seed0"
    assert metrics["extractors"]["head_pose"] is None
    for name in ("curves.png", "samples.png", "heldout_pairs.csv", "samples/step_000000.png",
                 "samples/step_000002.png", "samples/step_000004.png"):
        assert (reports / name).is_file(), name
    state = load_checkpoint(full / "checkpoint.pt", "renderer")
    assert state["step"] == 4 and {"discriminator", "optimizer_d"} <= set(state["extra"])

    # killed after the step-2 checkpoint, then rerun: resumes and ends with the same weights
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        pretrain_renderer(cfg, 0, processed=processed_corpus, out=killed, reports=tmp_path / "rk", tracker=KillAt(3),
                          tavc=tavc, progress=False)
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 2
    resumed = pretrain_renderer(dataclasses.replace(cfg, workers=1), 0, processed=processed_corpus, out=killed,
                                reports=tmp_path / "rk", tracker=NullTracker(), tavc=tavc, progress=False)
    assert resumed.metrics["train"]["resumed_from"] == 2
    state_b = load_checkpoint(killed / "checkpoint.pt")
    for k, v in state["model"].items():
        assert torch.equal(v, state_b["model"][k]), k
    for k, v in state["extra"]["discriminator"].items():
        assert torch.equal(v, state_b["extra"]["discriminator"][k]), k

    # complete checkpoint: evaluated only; the inference loader rebuilds the renderer from it
    again = pretrain_renderer(cfg, 0, processed=processed_corpus, out=full, reports=tmp_path / "ra",
                              tracker=NullTracker(), tavc=tavc, progress=False)
    assert again.metrics["train"]["resumed_from"] == 4 and again.metrics["heldout"]["l1"] == h["l1"]
    renderer = load_renderer(full / "checkpoint.pt")
    assert renderer.cfg == TINY and not renderer.training


def test_tavc_dimension_mismatch_is_reported(processed_corpus, tmp_path):
    from pipeline.tracking import NullTracker
    from pipeline.train.renderer import pretrain_renderer

    tavc = _tavc_checkpoint(tmp_path / "tavc.pt")
    cfg = _cfg(model=dataclasses.replace(TINY, cerl=CERLConfig(enabled=True, mode="matmul", relation_dim=8)))
    with pytest.raises(ValueError, match="relation_dim"):
        pretrain_renderer(cfg, 0, processed=processed_corpus, out=tmp_path / "m", reports=tmp_path / "r",
                          tracker=NullTracker(), tavc=tavc, progress=False)
    with pytest.raises(ValueError, match="--tavc"):
        pretrain_renderer(_cfg(), 0, processed=processed_corpus, out=tmp_path / "m", reports=tmp_path / "r",
                          tracker=NullTracker(), tavc=None, progress=False)


@pytest.mark.slow
def test_train_step_benchmark_runs_the_stage_code_paths(tmp_path, capsys):
    from benchmarks.train_step import main

    assert main(["--configs", "small", "--warmup", "0", "--steps", "1", "--json", str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["loop"] for r in rows] == ["pretrain_renderer", "train (MappingNet + CERL + CAR)", "train_tavc"]
    assert all(r["s_per_step"] > 0 and r["peak_gpu_MB"] is None for r in rows)
    out = capsys.readouterr().out
    assert "| small | pretrain_renderer |" in out and "| small | train (MappingNet + CERL + CAR) |" in out


def test_joint_estimator_normalises_source_and_driving_together():
    """`estimator_batch: joint` (the fix): one estimator call per step over source, driving and warped driving, so
    in training mode a driving frame's motion is normalised with the source frames' statistics (it changes when
    the sources change); `separate` (the reference code's per-call batches) normalises each group alone."""
    calls = []
    batch = _batch(b=3, seed=4)
    other_sources = _batch(b=3, seed=5)["source"]
    results = {}
    for mode in ("joint", "separate"):
        trainer = _trainer(dataclasses.replace(_cfg(), estimator_batch=mode))
        handle = trainer.renderer.he_estimator.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        calls.clear()
        trainer.generator_step(batch, 0)
        results[mode] = list(calls)
        handle.remove()
        trainer.renderer.train()
        with torch.no_grad():
            he_d = trainer.estimate_motions([batch["source"], batch["driving"]])[1]
            he_d_other = trainer.estimate_motions([other_sources, batch["driving"]])[1]
        changed = not torch.allclose(he_d.exp, he_d_other.exp)
        assert changed == (mode == "joint"), mode
    assert results["joint"] == [3 * 3]  # source, driving, equivariance-warped driving in ONE call
    assert results["separate"] == [3, 3, 3]


def test_own_motion_reconstruction_is_the_renderer_driven_by_the_source_keypoints():
    from pipeline.data.renderer import RendererEvalSet

    trainer = _trainer()
    b = _batch(b=2, seed=6)
    data = RendererEvalSet(source=b["source"], driving=b["driving"], mel=b["mel"], clip_ids=np.array(["a", "b"]),
                           speakers=np.array(["s", "t"]), positions=np.zeros((2, 2), np.int64),
                           mouth_box=np.array([[0, 0, 8, 8]] * 2), mouth_delta=np.zeros(2), pose_delta=np.zeros(2))
    own = trainer.reconstruct(data, own_motion=True)
    r = trainer.renderer.eval()
    with torch.no_grad():
        kp_c = r.canonical_keypoints(b["source"])
        he_s = r.estimate_motion(torch.cat([b["source"], b["driving"]])).split([2, 2])[0]
        kp_s = transform_keypoints(kp_c, he_s)
        relation = audio_relation(trainer.tavc, b["mel"])
        expected = r(b["source"], kp_s, kp_s, relation).prediction
    torch.testing.assert_close(own, expected)
    assert not torch.allclose(own, trainer.reconstruct(data))  # the driving motion changes the output


def test_coefficient_pose_teacher_supervises_source_and_driving_angles():
    cfg = _cfg(pose_teacher="coefficients", loss_weights=RendererLossWeights(l1=10.0, equivariance=0.0))
    trainer = _trainer(cfg)
    batch = dict(_batch(b=2, seed=7), pose=torch.tensor([[[10.0, -5.0, 2.0], [-20.0, 3.0, 0.0]]] * 2))
    g = trainer.generator_step(batch, 0)
    assert "head_pose" in g.terms and g.terms["head_pose"].item() > 0
    assert g.prediction.shape == batch["source"].shape
    he_s, he_d = trainer.estimate_motions([batch["source"], batch["driving"]])[:2]  # same weights, train mode
    from pipeline.losses.renderer import pose_bin_cross_entropy

    ref = [torch.cat([batch["pose"][:, 0, k], batch["pose"][:, 1, k]]) for k in range(3)]
    expected = sum((torch.cat([a, b]) - r).abs().mean() for (a, b), r in zip(zip(he_s.degrees(), he_d.degrees()), ref))
    expected = expected + pose_bin_cross_entropy(
        [torch.cat([he_s.yaw, he_d.yaw]), torch.cat([he_s.pitch, he_d.pitch]), torch.cat([he_s.roll, he_d.roll])], ref)
    assert g.terms["head_pose"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert "head_pose" not in _trainer().generator_step(_batch(b=2, seed=7), 0).terms  # hopenet without weights: off


def test_summary_reports_both_baselines_and_the_motion_target():
    from pipeline.train.renderer import motion_target, summarize

    rng = np.random.default_rng(0)
    clips = np.repeat(np.array(["c0", "c1", "c2", "c3"]), 8)
    res = {}
    for metric in ("l1", "mouth_l1", "lmd", "mouth_lmd"):
        src = 1.0 + rng.random(32)
        res[f"{metric}_source"] = src
        res[f"{metric}_source_motion"] = src - 0.1
        res[f"{metric}_generated"] = src - 0.5  # better than both baselines on every pair
    s = summarize(res, clips, 200, 0)
    m = s["mouth_lmd"]
    assert m["improvement"] == pytest.approx(0.5) and m["improvement_vs_source_motion"] == pytest.approx(0.4)
    assert m["improvement_ci_low"] > 0 and m["beats_baseline"] and m["beats_source_motion"]
    assert motion_target(s)["met"]
    res["mouth_l1_generated"] = res["mouth_l1_source_motion"] + 0.01  # the motion path adds nothing on mouth L1
    target = motion_target(summarize(res, clips, 200, 0))
    assert not target["met"] and target["mouth_l1_beats_source"] and not target["mouth_l1_beats_source_motion"]


def test_landmark_flow_term_supervises_the_dense_motion_with_the_batch_landmarks():
    cfg = _cfg(loss_weights=RendererLossWeights(l1=10.0, landmark_flow=10.0))
    trainer = _trainer(cfg)
    g = torch.Generator().manual_seed(3)
    points = torch.rand(2, 2, 68, 2, generator=g) * 31  # (B, source/driving, 68, 2) px of the 32-px frames
    batch = dict(_batch(b=2, seed=3), landmarks=points)
    step = trainer.generator_step(batch, 0)
    assert "landmark_flow" in step.terms and step.terms["landmark_flow"].item() > 0
    trainer.renderer.zero_grad(set_to_none=True)
    step.terms["landmark_flow"].backward()
    dense = trainer.renderer.generator.dense_motion_network
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dense.mask.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.renderer.he_estimator.parameters())
    assert "landmark_flow" not in _trainer().generator_step(_batch(b=2, seed=3), 0).terms  # weight 0: off, no landmarks needed


def test_coefficient_motion_source_trains_mapping_net_instead_of_the_estimator():
    from pipeline.data.renderer import RendererEvalSet
    from pipeline.models.renderer.mapping import MappingConfig

    model = dataclasses.replace(TINY, motion_source="coefficients",
                                mapping=MappingConfig(descriptor_dim=16, num_kp=TINY.num_kp, window=9, num_layers=0))
    cfg = _cfg(model=model, pose_teacher="coefficients")
    trainer = _trainer(cfg)
    assert not trainer.from_images
    g = torch.Generator().manual_seed(3)
    coeffs = 0.1 * torch.randn(2, 2, 70, 9, generator=g)
    batch = dict(_batch(b=2, seed=8), coeffs=coeffs, pose=torch.tensor([[[10.0, -5.0, 2.0], [-20.0, 3.0, 0.0]]] * 2))
    r0 = _snapshot(trainer.renderer)
    values, _ = trainer.generator_update(batch, step=0)
    assert "equivariance" not in values and "head_pose" in values  # no image estimator; MappingNet's angles supervised
    changed = _changed(r0, trainer.renderer)
    assert any(k.startswith("mapping.") for k in changed)
    assert not any(k.startswith("he_estimator.") for k in changed)  # H is not used with this motion source
    # evaluation drives the renderer with the windows of the eval set: the source's own vs the driving frame's
    b = _batch(b=2, seed=9)
    data = RendererEvalSet(source=b["source"], driving=b["driving"], mel=b["mel"], clip_ids=np.array(["a", "b"]),
                           speakers=np.array(["s", "t"]), positions=np.zeros((2, 2), np.int64),
                           mouth_box=np.array([[0, 0, 8, 8]] * 2), mouth_delta=np.zeros(2), pose_delta=np.zeros(2),
                           coeffs=coeffs)
    r = trainer.renderer.eval()
    with torch.no_grad():
        kp_c = r.canonical_keypoints(b["source"])
        he_s = r.map_motion(coeffs[:, 0])
        kp_s = transform_keypoints(kp_c, he_s)
        expected = r(b["source"], kp_s, kp_s, audio_relation(trainer.tavc, b["mel"])).prediction
    torch.testing.assert_close(trainer.reconstruct(data, own_motion=True), expected)
    assert not torch.allclose(trainer.reconstruct(data), expected)  # the driving frame's coefficients move it


def test_keypoint_anchor_term_ties_the_chosen_landmarks_to_the_keypoints_and_validates_its_list():
    from pipeline.losses.renderer import keypoint_anchor_loss, pixels_to_grid

    from pipeline.models.renderer.mapping import MappingConfig

    anchors = (8, 30, 48, 54)  # TINY has 4 keypoints
    mapping = MappingConfig(descriptor_dim=16, num_kp=TINY.num_kp, window=9, num_layers=0)
    cfg = _cfg(model=dataclasses.replace(TINY, motion_source="coefficients", mapping=mapping),
               loss_weights=RendererLossWeights(l1=10.0, keypoint_anchor=10.0), keypoint_landmarks=anchors,
               augment=False)
    trainer = _trainer(cfg)
    g = torch.Generator().manual_seed(3)
    points = torch.rand(2, 2, 68, 2, generator=g) * 31  # (B, source/driving, 68, 2) px of the 32-px frames
    batch = dict(_batch(b=2, seed=3), landmarks=points, coeffs=torch.randn(2, 2, 70, 9, generator=g))
    step = trainer.generator_step(batch, 0)
    term = step.terms["keypoint_anchor"]
    chosen = pixels_to_grid(points[:, :, list(anchors)], 32, TINY.align_corners)
    assert torch.isclose(term, keypoint_anchor_loss(step.kp_source, step.kp_driving, chosen[:, 0], chosen[:, 1]))
    other = pixels_to_grid(points[:, :, [0, 1, 2, 3]], 32, TINY.align_corners)  # other landmarks: another value
    assert not torch.isclose(term, keypoint_anchor_loss(step.kp_source, step.kp_driving, other[:, 0], other[:, 1]))
    trainer.renderer.zero_grad(set_to_none=True)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.renderer.mapping.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.renderer.kp_detector.parameters())
    with pytest.raises(ValueError, match="one landmark per keypoint"):
        _cfg(loss_weights=RendererLossWeights(keypoint_anchor=1.0), keypoint_landmarks=(8, 30)).validate()
    with pytest.raises(ValueError, match="distinct indices"):
        _cfg(keypoint_landmarks=(8, 8, 30, 70)).validate()


def test_mouth_term_is_computed_at_the_driving_frames_mouth_and_reaches_the_generator():
    """`loss_weights.mouth` (this project's): the step's `mouth` term is `mouth_reconstruction_l1` at the driving
    frame's landmarks (index 1 of the batch's pair), and its gradient reaches the generator."""
    from pipeline.losses.renderer import mouth_reconstruction_l1

    cfg = _cfg(loss_weights=RendererLossWeights(l1=10.0, mouth=50.0), augment=False)
    trainer = _trainer(cfg)
    g = torch.Generator().manual_seed(5)
    points = 8 + torch.rand(2, 2, 68, 2, generator=g) * 16  # (B, source/driving, 68, 2) px of the 32-px frames
    batch = dict(_batch(b=2, seed=5), landmarks=points)
    step = trainer.generator_step(batch, 0)
    drv = batch["driving"]
    term = step.terms["mouth"]
    assert torch.isclose(term, mouth_reconstruction_l1(step.prediction, drv, points[:, 1]))
    assert not torch.isclose(term, mouth_reconstruction_l1(step.prediction, drv, points[:, 0]))
    trainer.renderer.zero_grad(set_to_none=True)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.renderer.generator.parameters())
    off = _trainer(_cfg(loss_weights=RendererLossWeights(l1=10.0), augment=False))
    assert "mouth" not in off.generator_step(batch, 0).terms  # weight 0: not computed
