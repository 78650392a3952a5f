"""The full-size configuration (configs/params.full.yaml, for GPU users) loads strictly, builds the papers'
networks with the expected parameter counts, and runs a forward pass on the CPU. params.yaml (the small CPU
configuration) must have exactly the same structure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import CommonConfig, from_dict
from pipeline.models import count_parameters
from pipeline.models.audio2coeff import Audio2Coeff, generate_motion
from pipeline.models.syncer import Syncer
from pipeline.models.tavc import TAVC
from pipeline.train.audio2coeff import TrainAudio2CoeffConfig
from pipeline.train.syncers import TrainSyncersConfig, build_syncers, syncer_config
from pipeline.train.syncnet import TrainSyncNetConfig, build_model
from pipeline.train.renderer import TrainRendererConfig
from pipeline.train.tavc import TrainTAVCConfig
from pipeline.train.tavce import TrainTAVCEConfig

ROOT = Path(__file__).resolve().parents[1]
FULL = yaml.safe_load((ROOT / "configs/params.full.yaml").read_text())
SMALL = yaml.safe_load((ROOT / "params.yaml").read_text())
SECTIONS = {"train_tavc": TrainTAVCConfig, "train_syncnet": TrainSyncNetConfig, "train_syncers": TrainSyncersConfig,
            "pretrain_renderer": TrainRendererConfig, "train_audio2coeff": TrainAudio2CoeffConfig,
            "train": TrainTAVCEConfig}


def _keys(d: object, prefix: str = "") -> set[str]:
    if not isinstance(d, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}") for k, v in d.items())) if d else {prefix}


def test_full_and_small_configs_have_the_same_keys() -> None:
    assert set(FULL) == set(SMALL)
    for section in FULL:
        assert _keys(FULL[section]) == _keys(SMALL[section]), section
    from_dict(CommonConfig, FULL["common"], "common")
    for section, cls in SECTIONS.items():
        from_dict(cls, FULL[section], section)
        from_dict(cls, SMALL[section], section)


@torch.no_grad()
def test_full_tavc_metric() -> None:
    cfg = from_dict(TrainTAVCConfig, FULL["train_tavc"], "train_tavc")
    assert (cfg.model.embed_dim, cfg.batch_size, cfg.lr, cfg.steps) == (128, 16, 1e-4, 40_000)
    model = TAVC(cfg.model).eval()
    # Wav2Lip mel encoder 2.81 M + FC 512->128, ResNet18 trunk 11.18 M + FC 512->128 (paper: ResNet18 + FC -> 128)
    assert count_parameters(model.audio_encoder) == 2_812_672
    assert count_parameters(model) == 14_120_512
    f_a, f_v = model(torch.zeros(2, 1, 80, 16), torch.zeros(2, 3, 112, 112))
    assert f_a.shape == f_v.shape == (2, 128)


@torch.no_grad()
def test_full_syncnet_is_syncnet_v2() -> None:
    cfg = from_dict(TrainSyncNetConfig, FULL["train_syncnet"], "train_syncnet")
    model = build_model(cfg).eval()
    assert count_parameters(model) == 13_631_616
    video = torch.zeros(1, 3, 5, 224, 224)
    audio = torch.zeros(1, 1, 13, 20)
    assert model.forward_lip(video).shape == model.forward_aud(audio).shape == (1, 1024)
    assert "netcnnlip.18.weight" in model.state_dict() and "netfcaud.3.weight" in model.state_dict()


@torch.no_grad()
def test_full_syncers() -> None:
    cfg = from_dict(TrainSyncersConfig, FULL["train_syncers"], "train_syncers")
    syncers = build_syncers(cfg)
    assert sorted(syncers) == ["ms1", "ms2", "ms3", "ms4", "rigid1", "rigid2", "rigid3"]
    assert count_parameters(syncers) == 36_968_704
    for family, channels in (("ms", 136), ("rigid", 62)):
        sc = syncer_config(cfg, family)
        assert sc.embed_dim == 512 and sc.motion_channels == channels
        scores = Syncer(sc).eval()(torch.zeros(2, 26, 20), torch.zeros(2, 3, channels, 5))
        assert scores.shape == (2, 3)


@torch.no_grad()
def test_full_audio2coeff_is_sadtalkers_and_ms_syncs() -> None:
    """SPEC §4's measured SadTalker figures: ExpNet 2.85 M, PoseVAE 11.25 M with its training-only encoder and
    discriminator (decoder 3.16 M); MS-Sync's generator at its paper size (512-d, 4 layers x 8 heads)."""
    cfg = from_dict(TrainAudio2CoeffConfig, FULL["train_audio2coeff"], "train_audio2coeff")
    model = Audio2Coeff(cfg.model).eval()
    assert count_parameters(model.expnet) == 2_849_664
    assert count_parameters(model.pose) == 11_251_897
    assert count_parameters(model.pose.netG.decoder) == 3_156_497
    ms = Audio2Coeff(replace(cfg.model, pose_generator="ms_sync")).eval()
    layer = ms.pose.generator.temporal.layers[0]
    assert len(ms.pose.generator.temporal.layers) == 4 and layer.self_attn.num_heads == 8
    assert layer.self_attn.embed_dim == 512 and len(ms.pose.generator.branches) == 4
    mel = torch.zeros(40, 1, 80, 16).numpy()
    for m in (model, ms):
        assert generate_motion(m, mel, torch.zeros(73).numpy()).shape == (40, 70)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_small_configs_are_much_smaller(section: str) -> None:
    """The default pipeline's models are the same architectures, narrowed for the CPU."""
    small = from_dict(SECTIONS[section], SMALL[section], section)
    full = from_dict(SECTIONS[section], FULL[section], section)
    if section == "train_tavc":
        n_small, n_full = count_parameters(TAVC(small.model)), count_parameters(TAVC(full.model))
    elif section == "train_syncnet":
        n_small, n_full = count_parameters(build_model(small)), count_parameters(build_model(full))
    elif section == "train_syncers":
        n_small, n_full = count_parameters(build_syncers(small)), count_parameters(build_syncers(full))
    elif section == "train_audio2coeff":
        sizes = [sum(count_parameters(Audio2Coeff(replace(c.model, pose_generator=g))) for g in ("posevae", "ms_sync"))
                 for c in (small, full)]
        n_small, n_full = sizes
    elif section == "train":  # the stage's own network: MappingNet (the renderer comes from pretrain_renderer)
        from pipeline.models.renderer.mapping import MappingNet

        n_small, n_full = count_parameters(MappingNet(small.mapping)), count_parameters(MappingNet(full.mapping))
        assert n_full == 10_195_190  # SadTalker's MappingNet, 10.20 M (SPEC §5)
        assert (full.lr, full.steps, full.car.weight, full.cerl.enabled) == (2e-4, 12_500, 0.1, True)
    else:
        from pipeline.models.renderer.renderer import Renderer

        n_small, n_full = count_parameters(Renderer(small.model)), count_parameters(Renderer(full.model))
    assert n_small * 10 < n_full


@torch.no_grad()
def test_full_renderer_is_sadtalkers_face_vid2vid_plus_cerl() -> None:
    """Parameter counts of SadTalker's public renderer (method.md §4.4, measured there) plus CERL; one 256 x 256
    frame."""
    from pipeline.models.renderer.keypoints import transform_keypoints
    from pipeline.models.renderer.renderer import Renderer, build_discriminator

    cfg = from_dict(TrainRendererConfig, FULL["pretrain_renderer"], "pretrain_renderer")
    assert (cfg.model.image_size, cfg.model.num_kp, cfg.lr, cfg.betas) == (256, 15, 2e-4, (0.5, 0.999))
    torch.manual_seed(0)
    r = Renderer(cfg.model).eval()
    # SadTalker's generator = our appearance extractor + generator: 100.99 M (SPADE decoder 55.36, dense motion 43.55)
    assert count_parameters(r.appearance) + count_parameters(r.generator) == 100_988_176
    assert count_parameters(r.generator.decoder) == 55_360_195
    assert count_parameters(r.generator.dense_motion_network) == 43_545_549
    assert count_parameters(r.kp_detector) == 41_940_047
    assert count_parameters(r.he_estimator) == 30_254_838
    assert count_parameters(r.cerl) == 131_200  # TAVCE Eq. 5: 1x1 512->128 (+bias) and 1x1 128->512 (no bias)
    assert count_parameters(build_discriminator(cfg.model)) == 2_758_849
    src = torch.rand(1, 3, 256, 256)
    kp_c = r.canonical_keypoints(src)
    kp = transform_keypoints(kp_c, r.estimate_motion(src))
    out = r(src, kp, kp, torch.randn(1, 128, 128))
    assert out.prediction.shape == (1, 3, 256, 256) and torch.isfinite(out.prediction).all()
    assert out.deformation.shape == (1, 16, 64, 64, 3) and out.occlusion.shape == (1, 1, 64, 64)


# Settings of the machine a run happens on, not of the method: their defaults suit a CPU, the full config a GPU box.
RUN_ENVIRONMENT_KEYS = {"device", "workers", "threads", "cache_mb", "roi_cache_mb", "prefetch_frames"}


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_config_defaults_are_the_full_configuration(section: str) -> None:
    """One place per number: a training config either has no defaults (its values come from params only) or its
    defaults are exactly configs/params.full.yaml (the papers' sizes and schedules), run-environment keys aside."""
    from dataclasses import MISSING, fields

    from pipeline.config import to_dict

    cls = SECTIONS[section]
    if any(f.default is MISSING and f.default_factory is MISSING for f in fields(cls)):
        return  # no defaults: params only
    defaults = _flat(to_dict(cls()))
    full = _flat(to_dict(from_dict(cls, FULL[section], section)))
    differ = {k: (defaults[k], full[k]) for k in full
              if defaults[k] != full[k] and k.split(".")[-1] not in RUN_ENVIRONMENT_KEYS}
    assert not differ, f"{section}: dataclass default vs configs/params.full.yaml: {differ}"
