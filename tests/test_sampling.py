"""Keyed sampling (pipeline.data.sampling): batches independent of workers and resumption; torch twin."""

from __future__ import annotations

import torch

from pipeline.data import sampling


class _Keyed(torch.utils.data.Dataset):
    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(sampling.sample_rng(7, *key).normal(size=3))


def _batches(workers: int, start: int, stop: int) -> list[torch.Tensor]:
    return list(sampling.step_loader(_Keyed(), 4, start, stop, workers))


def test_batches_do_not_depend_on_workers_or_resume() -> None:
    full = _batches(0, 0, 6)
    assert len(full) == 6 and full[0].shape == (4, 3)
    assert all(torch.equal(a, b) for a, b in zip(full, _batches(2, 0, 6)))
    assert all(torch.equal(a, b) for a, b in zip(full[3:], _batches(0, 3, 6)))
    assert not torch.equal(full[0], full[1])


def test_sample_generator_is_a_function_of_its_keys() -> None:
    draw = lambda *k: torch.rand(4, generator=sampling.sample_generator(*k))  # noqa: E731
    assert torch.equal(draw(3, 10), draw(3, 10))
    assert not torch.equal(draw(3, 10), draw(3, 11)) and not torch.equal(draw(3, 10), draw(4, 10))
    # the renderer's warp stream since its first run: seed * 1_000_003 + step (mod 2**31)
    assert torch.equal(draw(3, 10), torch.rand(4, generator=torch.Generator().manual_seed(3 * 1_000_003 + 10)))


def test_sample_rng_streams_differ_by_key() -> None:
    a = sampling.sample_rng(0, 1, 2).normal(size=4)
    assert (a == sampling.sample_rng(0, 1, 2).normal(size=4)).all()
    assert not (a == sampling.sample_rng(0, 2, 1).normal(size=4)).all()
