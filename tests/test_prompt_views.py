"""Prompt views: an exemplar's embedding does not depend on which way its part was photographed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.predictor import PromptRegion
from models.prompt_views import prompt_views
from tests.tiny import random_tiny_predictor


@st.composite
def image_with_box(draw):
    h, w = draw(st.integers(4, 24)), draw(st.integers(4, 24))
    x0, y0 = draw(st.integers(0, w - 2)), draw(st.integers(0, h - 2))
    x1, y1 = draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))
    seed = draw(st.integers(0, 2**16))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, np.array([[x0, y0, x1, y1]], np.float32)


@settings(max_examples=60, deadline=None)
@given(image_with_box(), st.sampled_from([1, 2, 4, 8]))
def test_each_view_keeps_the_region_on_the_same_pixels(sample, count):
    """The crop a view's box cuts from the view is the original crop, flipped or turned."""
    image, boxes = sample
    x0, y0, x1, y1 = boxes[0].astype(int)
    mask = np.zeros(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    crop = image[y0:y1, x0:x1]
    seen = []
    for view, view_boxes, (view_mask,) in prompt_views(image, boxes, [mask], count):
        a0, b0, a1, b1 = view_boxes[0].astype(int)
        view_crop = view[b0:b1, a0:a1]
        assert view_mask[b0:b1, a0:a1].all() and view_mask.sum() == mask.sum()
        candidates = [np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in range(4)]
        assert any(c.shape == view_crop.shape and (c == view_crop).all() for c in candidates)
        seen.append(view.tobytes() + view_boxes.tobytes())
    assert len(seen) == count


@settings(max_examples=30, deadline=None)
@given(image_with_box(), st.sampled_from([(2, "h"), (4, "v"), (4, "r"), (8, "t")]))
def test_the_views_of_a_flipped_image_are_the_same_views(sample, case):
    """The views form a group: flipping the input only reorders them."""
    count, how = case
    image, boxes = sample
    views = list(prompt_views(image, boxes, [None], 8))  # as given, h, v, half turn, transpose
    flipped, flipped_boxes, _ = views[{"h": 1, "v": 2, "r": 3, "t": 4}[how]]

    def keys(im, bx):
        return sorted(v.tobytes() + b.tobytes() for v, b, _ in prompt_views(im, bx, [None], count))

    assert keys(flipped, flipped_boxes) == keys(image, boxes)


def test_a_view_count_outside_the_groups_is_refused():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="prompt_views must be one of"):
        list(prompt_views(image, np.array([[0, 0, 4, 4]]), [None], 3))
    with pytest.raises(ValueError, match="prompt_views must be one of"):
        ModelConfig(prompt_views=3)


def test_a_flipped_photo_of_the_exemplar_registers_the_same_embedding(tmp_path):
    """With four views an engineer gets one embedding whichever way up the part was shot; with
    one view (older model files) the embedding moves."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image[20:40, 10:50] = 255  # an asymmetric bright defect
    mask = np.zeros((70, 90), bool)
    mask[20:40, 10:50] = True
    region = PromptRegion(np.array([10, 20, 50, 40], np.float32), mask)
    flipped = PromptRegion(np.array([40, 30, 80, 50], np.float32), mask[::-1, ::-1])
    image_flipped = np.ascontiguousarray(image[::-1, ::-1])
    gaps = {}
    for views in (1, 4):
        pred = random_tiny_predictor(tmp_path / f"views{views}.pt", prompt_views=views)
        assert pred.info.prompt_views == views
        a = pred.encode_prompts(image, [region])
        b = pred.encode_prompts(image_flipped, [flipped])
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        gaps[views] = float(np.abs(a - b).max())
    assert gaps[4] < 1e-4 < gaps[1]
