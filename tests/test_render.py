"""Inference API (pipeline/render.py): frame shapes, determinism, batching invariance, identity motion against the
renderer's own forward, CERL per frame, mode/device restoration, and the checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.checkpoint import WeightsError, save_checkpoint
from pipeline.config import to_dict
from pipeline.models.renderer import (AppearanceConfig, CERLConfig, DenseMotionConfig, DiscriminatorConfig,
                                      GeneratorConfig, HeadMotion, HeadPoseConfig, KeypointDetectorConfig, Renderer,
                                      RendererConfig, transform_keypoints)
from pipeline.models.renderer.renderer import CHECKPOINT_KIND
from pipeline.render import identity_motion, load_renderer, render, source_tensor

S, K, D = 32, 4, 6
TINY = RendererConfig(
    image_size=S, num_kp=K,
    appearance=AppearanceConfig(block_expansion=8, max_features=32, num_down_blocks=2, reshape_channel=4,
                                reshape_depth=4, num_resblocks=1),
    keypoints=KeypointDetectorConfig(block_expansion=8, max_features=32, num_blocks=2, reshape_depth=4,
                                     scale_factor=0.5),
    head_pose=HeadPoseConfig(block_expansion=8, max_features=64),
    dense_motion=DenseMotionConfig(block_expansion=8, max_features=32, num_blocks=2, compress=2),
    generator=GeneratorConfig(block_expansion=8, num_middle_blocks=1, spade_hidden=8),
    discriminator=DiscriminatorConfig(num_blocks=3),
    cerl=CERLConfig(relation_dim=D),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    torch.manual_seed(0)
    model = Renderer(TINY)
    with torch.no_grad():  # CERL starts as the identity (zero last conv): give it weight so relations matter
        model.cerl.conv1.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(S, S, 3), dtype=np.uint8)


def _motion(frames: int, seed: int = 1) -> HeadMotion:
    g = torch.Generator().manual_seed(seed)
    return HeadMotion(yaw=torch.randn(frames, 66, generator=g), pitch=torch.randn(frames, 66, generator=g),
                      roll=torch.randn(frames, 66, generator=g), t=0.05 * torch.randn(frames, 3, generator=g),
                      exp=0.05 * torch.randn(frames, K, 3, generator=g))


def _relation(frames: int, seed: int = 2) -> torch.Tensor:
    f = torch.randn(frames, 2, D, generator=torch.Generator().manual_seed(seed))
    delta = f[:, 0] - f[:, 1]  # (T, D)
    return 0.5 * delta[:, :, None] * delta[:, None, :]  # (T, D, D), TAVCE Eq. 2's rank-1 form


def _expected(renderer: Renderer, source: np.ndarray, kp_source: torch.Tensor, kp_driving: torch.Tensor,
              relation: torch.Tensor | None) -> np.ndarray:
    """Frames from the renderer's own forward (re-encoding the source per frame, as SadTalker does)."""
    src = source_tensor(source, S)
    with torch.inference_mode():
        pred = renderer(src.expand(len(kp_driving), -1, -1, -1), kp_source.expand(len(kp_driving), -1, -1),
                        kp_driving, relation).prediction  # (T, 3, S, S)
    return pred.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_render_shape_dtype_and_determinism(renderer, source):
    frames = render(renderer, source, _motion(5), relation=_relation(5), batch_size=2)
    assert frames.shape == (5, S, S, 3) and frames.dtype == np.uint8
    again = render(renderer, source, _motion(5), relation=_relation(5), batch_size=2)
    np.testing.assert_array_equal(frames, again)
    assert len({frames[i].tobytes() for i in range(5)}) == 5  # different motion, different frames


def test_frames_do_not_depend_on_batch_size(renderer, source):
    for relation in (None, _relation(6)):
        one = render(renderer, source, _motion(6), relation=relation, batch_size=1)
        four = render(renderer, source, _motion(6), relation=relation, batch_size=4)
        assert _max_diff(one, four) <= 1  # float differences of ~1e-5 may round to the next uint8 value


def test_identity_motion_reproduces_the_renderer_forward_with_equal_keypoints(renderer, source):
    src = source_tensor(source, S)
    with torch.inference_mode():
        source_motion = renderer.estimate_motion(src)
        kp_source = transform_keypoints(renderer.canonical_keypoints(src), source_motion)  # (1, K, 3)
    motion = identity_motion(source_motion, 3)
    frames = render(renderer, source, motion, batch_size=2)  # source_motion None: estimated, as above
    expected = _expected(renderer, source, kp_source, kp_source.expand(3, -1, -1), None)
    assert _max_diff(frames, expected) <= 1
    assert _max_diff(frames[0], frames[2]) <= 1  # same motion, no relation: the same frame (other batch)


def test_cerl_relation_is_applied_per_frame(renderer, source):
    motion, relation = _motion(4), _relation(4)
    src = source_tensor(source, S)
    with torch.inference_mode():
        source_motion = renderer.estimate_motion(src)
        kp_c = renderer.canonical_keypoints(src)
        kp_source = transform_keypoints(kp_c, source_motion)
        kp_driving = transform_keypoints(kp_c.expand(4, -1, -1), motion)
    frames = render(renderer, source, motion, source_motion=source_motion, relation=relation, batch_size=3)
    assert _max_diff(frames, _expected(renderer, source, kp_source, kp_driving, relation)) <= 1
    without = render(renderer, source, motion, source_motion=source_motion, batch_size=3)
    assert _max_diff(without, _expected(renderer, source, kp_source, kp_driving, None)) <= 1
    assert _max_diff(frames, without) > 1  # the (non-zero) CERL branch changes the frames


def test_degrees_motion_and_float_source_resized(renderer, source):
    motion = HeadMotion.identity(2, K)  # degrees form, (T,) angles
    big = torch.from_numpy(np.repeat(np.repeat(source, 2, 0), 2, 1)).permute(2, 0, 1).float() / 255  # (3, 2S, 2S)
    frames = render(renderer, big, motion, source_motion=HeadMotion.identity(1, K))
    assert frames.shape == (2, S, S, 3)
    assert _max_diff(frames[0], frames[1]) == 0


def test_render_restores_training_mode_and_checks_inputs(renderer, source):
    renderer.train()
    renderer.kp_detector.eval()  # a mixed state must come back as it was
    try:
        render(renderer, source, _motion(1))
        assert renderer.training and renderer.generator.training and not renderer.kp_detector.training
    finally:
        renderer.eval()
    with pytest.raises(ValueError, match="relation"):
        render(renderer, source, _motion(3), relation=_relation(2))
    with pytest.raises(ValueError, match="motion.exp"):
        render(renderer, source, HeadMotion.identity(2, K + 1))
    with pytest.raises(ValueError, match="square"):
        render(renderer, source[:, :-4], _motion(1))
    with pytest.raises(ValueError, match="batch_size"):
        render(renderer, source, _motion(1), batch_size=0)


def test_load_renderer_round_trip(renderer, source, tmp_path):
    path = tmp_path / "renderer.pt"
    save_checkpoint(path, kind=CHECKPOINT_KIND, config={"model": to_dict(TINY), "lr": 2e-4}, model=renderer,
                    optimizer=None, step=7)
    loaded = load_renderer(path)
    assert loaded.cfg == TINY and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.state_dict(), renderer.state_dict(), rtol=0, atol=0)
    np.testing.assert_array_equal(render(loaded, source, _motion(2), relation=_relation(2)),
                                  render(renderer, source, _motion(2), relation=_relation(2)))

    save_checkpoint(tmp_path / "other.pt", kind="tavc", config={"model": {}}, model=renderer, optimizer=None, step=0)
    with pytest.raises(WeightsError, match="expected `renderer`"):
        load_renderer(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "noconf.pt", kind=CHECKPOINT_KIND, config={"lr": 1.0}, model=renderer,
                    optimizer=None, step=0)
    with pytest.raises(WeightsError, match="noconf.pt.*model"):
        load_renderer(tmp_path / "noconf.pt")


def test_complexity_benchmark_rows_add_up_to_the_whole_renderer():
    from benchmarks.complexity import count_flops, measure, totals
    from pipeline.models.tavc import TAVCConfig
    from pipeline.models import count_parameters

    rows, _ = measure(TINY, TAVCConfig(embed_dim=D, audio_width=0.125, visual_width=0.125), references=False)
    by = {r.key: r for r in rows}
    model = Renderer(TINY).eval()
    parts = ("appearance_2d", "appearance_3d", "cerl", "dense_motion", "decoder", "kp_detector", "he_estimator")
    assert sum(by[k].params for k in parts) == count_parameters(model)
    src, kp = torch.rand(1, 3, S, S), torch.rand(1, K, 3) - 0.5
    forward_flops, _, _ = count_flops(lambda: model(src, kp, kp + 0.1, _relation(1)))
    assert sum(by[k].flops for k in parts[:5]) == forward_flops
    assert "SadTalker-equivalent stack incl. reference values" not in totals(rows)
