"""benchmarks/animate_fps.py's core (one timed animate call) on the tiny models of tests/test_animate.py, so the
benchmark cannot silently rot when animate changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import pipeline.animate as A
from benchmarks.animate_fps import STAGES, measure, table
from pipeline import media
from tests.mediagen import astronaut
from tests.test_animate import _audio, models  # noqa: F401  (the tiny models fixture)


def test_measure_times_every_stage_and_restores_animate(models, tmp_path: Path) -> None:  # noqa: F811
    image = tmp_path / "portrait.png"
    Image.fromarray(astronaut(256)).save(image)
    audio = _audio(tmp_path / "speech.wav", 1.0)
    originals = (A.render, A.read_speech, A.generate_motion, media.write_video)
    loaded = A.load_models(models)
    r = measure("small", image, audio, tmp_path / "out.mp4", preloaded=loaded, chunk_seconds=0.4, batch_size=4)
    assert r.frames == 25 and abs(r.audio_s - 1.0) < 1e-6 and (tmp_path / "out.mp4").stat().st_size > 0
    assert set(r.stages_s) == {*STAGES, "other"}
    for stage in ("read_audio", "portrait", "audio2coeff", "mapping", "relation", "renderer", "encoding"):
        assert r.stages_s[stage] > 0, stage
    assert sum(r.stages_s.values()) == pytest.approx(r.wall_s, abs=0.05)
    assert r.frames_per_s > 0 and r.realtime_factor > 0 and r.peak_rss_mb > 0
    # The wrappers are gone afterwards: animate and the renderer are as they were.
    assert (A.render, A.read_speech, A.generate_motion, media.write_video) == originals
    assert "map_motion" not in vars(loaded.renderer)
    assert "renderer" in table([r])


def test_portrait_cache_is_written_then_read_back(models, tmp_path: Path) -> None:  # noqa: F811
    """--portrait-cache (machines without mediapipe): the first run finds the portrait and keeps it, the second
    reads it back, reports the stage as 0 and says so; the videos are the same."""
    image = tmp_path / "portrait.png"
    Image.fromarray(astronaut(256)).save(image)
    audio = _audio(tmp_path / "speech.wav", 0.6)
    loaded = A.load_models(models)
    cache = tmp_path / "portrait_small.pkl"
    first = measure("small", image, audio, tmp_path / "a.mp4", preloaded=loaded, chunk_seconds=0.4, batch_size=4,
                    portrait_cache=cache, encoder_threads=1)
    assert cache.is_file() and first.stages_s["portrait"] > 0 and "written" in first.notes[-1]
    find = A.find_portrait
    A.find_portrait = None  # the second run must not look for the face
    try:
        second = measure("small", image, audio, tmp_path / "b.mp4", preloaded=loaded, chunk_seconds=0.4,
                         batch_size=4, portrait_cache=cache, encoder_threads=1)
    finally:
        A.find_portrait = find
    assert second.stages_s["portrait"] == 0 and "read from portrait_small.pkl" in second.notes[-1]
    assert second.encoder_threads == 1 and second.device == "cpu" and second.peak_gpu_mb is None
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
