"""CAR (pipeline/losses/car.py, TAVCE Eq. 6): the differentiable mouth ROI against the NumPy one the TAVC metric was
trained on, and the loss's invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.corpus import mouth_roi, to_unit_range
from pipeline.losses.car import CARLoss, mouth_roi_torch
from pipeline.losses.tavc import tavc_similarity
from pipeline.models.tavc import TAVC, TAVCConfig

TINY_TAVC = TAVCConfig(embed_dim=16, audio_width=0.0625, visual_width=0.0625)


def _face_and_landmarks(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(np.repeat(img[::4, ::4], 4, 0), 4, 1))  # smooth-ish blocks
    lm = rng.uniform(0.3 * size, 0.7 * size, (68, 2))
    lm[48:68] = rng.uniform(0.55 * size, 0.75 * size, (20, 2))  # a mouth, partly near the lower edge
    return img, lm


@pytest.mark.parametrize("size", [64, 256])
def test_mouth_roi_torch_matches_the_numpy_roi_of_the_tavc_metric(size):
    imgs, lms = zip(*[_face_and_landmarks(size, s) for s in range(3)])
    expected = np.stack([to_unit_range(mouth_roi(i, l)) for i, l in zip(imgs, lms)])  # (3, 3, 112, 112) in [-1, 1]
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    got = mouth_roi_torch(images, torch.from_numpy(np.stack(lms)).float()).numpy()
    assert got.shape == expected.shape
    # bilinear both ways; the NumPy ROI is rounded to uint8 (1/127.5 in [-1, 1])
    assert np.abs(got - expected).mean() < 2 / 127.5 and np.abs(got - expected).max() < 0.05


def test_roi_needs_square_crops_and_68_landmarks():
    with pytest.raises(ValueError, match="square"):
        mouth_roi_torch(torch.zeros(1, 3, 32, 40), torch.zeros(1, 68, 2))
    with pytest.raises(ValueError, match="landmarks"):
        mouth_roi_torch(torch.zeros(1, 3, 32, 32), torch.zeros(1, 20, 2))


def _setup(seed=0, b=2, s=64):
    torch.manual_seed(seed)
    tavc = TAVC(TINY_TAVC)
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(b, 2, 1, 80, 16, generator=g)
    prev = torch.rand(b, 3, s, s, generator=g)
    lm = torch.from_numpy(np.stack([_face_and_landmarks(s, k)[1] for k in range(b)])).float()
    return tavc, mel, prev, lm


def test_a_still_mouth_gives_the_maximum_and_the_loss_is_in_unit_range():
    tavc, mel, prev, lm = _setup()
    car = CARLoss(tavc)
    still = car(mel, prev, prev.clone(), lm, lm)
    assert float(still.loss) == pytest.approx(1.0)  # no visual change: no correlation with the audio's
    moved = car(mel, prev, (prev + 0.2 * torch.rand_like(prev)).clamp(0, 1), lm, lm)
    assert 0.0 <= float(moved.loss) <= 1.0 and torch.all((moved.similarity >= 0) & (moved.similarity <= 1))


def test_gradients_reach_only_the_generated_frame_and_descent_aligns_the_mouth_change_with_the_audio():
    tavc, mel, prev, lm = _setup(seed=1)
    car = CARLoss(tavc)
    gen = (prev + 0.05 * torch.randn_like(prev)).clamp(0, 1).requires_grad_(True)
    real = prev.clone().requires_grad_(True)
    out = car(mel, real, gen, lm, lm)
    out.loss.backward()
    assert real.grad is None and all(p.grad is None for p in tavc.parameters())
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    # the gradient lives inside the mouth ROI only
    x0 = int(lm[0, 48:68, 0].median() - 72 * 64 / 256 / 2) - 2
    assert gen.grad[0, :, :, : max(x0, 0)].abs().sum() == 0
    # a few steps of descent on the generated pixels raise cos²(Δa, Δv), i.e. the change of the generated mouth
    # follows the change the audio relationship asks for
    opt = torch.optim.Adam([gen], lr=0.01)
    first = float(out.loss.detach())
    for _ in range(15):
        opt.zero_grad()
        loss = car(mel, prev, gen, lm, lm).loss
        loss.backward()
        opt.step()
    assert float(car(mel, prev, gen, lm, lm).loss.detach()) < first - 0.05
    with torch.no_grad():  # the same number as the metric's similarity of these features
        from pipeline.losses.car import mouth_roi_torch as roi

        f_a = tavc.encode_audio(mel.flatten(0, 1)).unflatten(0, (2, 2))
        sim = tavc_similarity(f_a[:, 0], f_a[:, 1], tavc.encode_visual(roi(prev, lm)), tavc.encode_visual(roi(gen, lm)))
    torch.testing.assert_close(car(mel, prev, gen, lm, lm).similarity, sim)
