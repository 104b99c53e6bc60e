"""The radial spectrum is the orientation-invariant texture code of a prompt region (paper 3.2)."""

import math

import cv2
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.sspe import circular_window, crop_regions, radial_bin_weights, radial_spectrum

S, J = 64, 256
W, WIN = radial_bin_weights(S, J), circular_window(S)


def spectrum(crop: np.ndarray) -> torch.Tensor:
    return radial_spectrum(torch.as_tensor(crop, dtype=torch.float32)[None], W, WIN)[0]


def texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(S, S)).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 3))
    ys, xs = np.mgrid[:S, :S]
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
    return x + np.sin(freq * (xs * np.cos(theta) + ys * np.sin(theta))).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3), flip=st.sampled_from([None, 0, 1]))
def test_exactly_invariant_to_quarter_turns_and_flips(seed, k, flip):
    x = texture(seed)
    y = np.rot90(x, k)
    y = y if flip is None else np.flip(y, flip)
    assert torch.allclose(spectrum(x), spectrum(np.ascontiguousarray(y)), atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(0, 360))
def test_close_for_arbitrary_rotations(seed, angle):
    """Turning the surface by any angle barely moves the spectrum."""
    big = cv2.resize(texture(seed), (2 * S, 2 * S))
    mat = cv2.getRotationMatrix2D((S - 0.5, S - 0.5), angle, 1.0)
    rot = cv2.warpAffine(big, mat, (2 * S, 2 * S), flags=cv2.INTER_LINEAR)
    a = spectrum(big[S // 2 : S // 2 + S, S // 2 : S // 2 + S])
    b = spectrum(rot[S // 2 : S // 2 + S, S // 2 : S // 2 + S])
    assert float(a @ b) > 0.97


def test_unit_length_and_finite():
    out = radial_spectrum(torch.randn(5, S, S), W, WIN)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_flat_region_does_not_produce_nan():
    out = radial_spectrum(torch.full((1, S, S), 0.3), W, WIN)
    assert torch.isfinite(out).all()


def test_every_bin_sees_pixels():
    assert (W.sum(dim=1) > 0).all() and W.shape == (J, S * S)


def test_crop_follows_the_box_under_rotation():
    """Rotating image and box together gives the rotated crop: no orientation leaks into SSPE."""
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.random((1, 3, 96, 96)), dtype=torch.float32)
    box = torch.tensor([[0.1, 0.2, 0.6, 0.5]])
    rot_img = torch.rot90(img, 1, (2, 3))  # counter-clockwise: (x, y) -> (y, 1 - x)
    x0, y0, x1, y1 = box[0].tolist()
    rot_box = torch.tensor([[y0, 1 - x1, y1, 1 - x0]])
    a = crop_regions(img, box, torch.tensor([0]), 32)
    b = crop_regions(rot_img, rot_box, torch.tensor([0]), 32)
    assert torch.allclose(torch.rot90(a, 1, (1, 2)), b, atol=1e-5)
    assert not math.isclose(float((a - b).abs().max()), 0.0)
