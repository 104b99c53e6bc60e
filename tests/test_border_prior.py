"""The exemplar-border prior (models/border_prior.py): a class taught only with exemplars inside the
picture has its detections at the image border demoted; a class with an exemplar at the border, or
without exemplars, is left alone; older model files and graphs keep scoring without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.border_prior import BORDER_TOLERANCE, border_factors, touches_border
from models.config import ModelConfig
from models.postprocess import Detections
from models.predictor import Predictor
from models.runtime.base import ModelInfo
from models.template_match import exemplar_crops, interior_classes


def _textured(seed: int, size: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, (size, size, 3), dtype=np.uint8)


def test_exemplar_crops_know_whether_they_touch_their_image_border():
    image = _textured(0)
    boxes = np.array([[0, 30, 20, 50], [40, 40, 60, 60], [100, 100, 120, 120]], np.float32)
    crops = exemplar_crops(image, boxes)
    assert [c.at_border for c in crops] == [True, False, True]
    assert interior_classes([crops[1:2], crops, []]) == [True, False, False]


@settings(max_examples=50, deadline=None)
@given(
    x0=st.floats(3, 60),
    y0=st.floats(3, 100),
    w=st.floats(1, 30),
    h=st.floats(1, 30),
    edge=st.sampled_from(["left", "top", "right", "bottom"]),
    factor=st.floats(0.05, 1.0),
)
def test_only_interior_classes_at_the_border_are_demoted(x0, y0, w, h, edge, factor):
    """An image 100 wide and 150 high: a box kept 3 px inside is never at the border; the same box
    moved onto any one edge always is."""
    height, width = 150, 100
    inside = np.array([[x0, y0, min(x0 + w, width - 3), min(y0 + h, height - 3)]])
    moved = inside.copy()
    bw, bh = moved[0, 2] - moved[0, 0], moved[0, 3] - moved[0, 1]
    moved[0] = {
        "left": (0, y0, bw, y0 + bh),
        "top": (x0, 0, x0 + bw, bh),
        "right": (width - bw, y0, width, y0 + bh),
        "bottom": (x0, height - bh, x0 + bw, height),
    }[edge]
    assert BORDER_TOLERANCE * height < 3
    assert not touches_border(inside, height, width)[0] and touches_border(moved, height, width)[0]
    one = np.array([0])
    assert border_factors(inside, one, [True], height, width, factor)[0] == 1.0
    assert border_factors(moved, one, [True], height, width, factor)[0] == pytest.approx(factor)
    assert border_factors(moved, one, [False], height, width, factor)[0] == 1.0
    assert border_factors(moved, np.array([1]), [True], height, width, factor)[0] == 1.0


class _InfoOnly:
    """The predictor's rescoring reads nothing of its backend but the ModelInfo."""

    def __init__(self, factor: float) -> None:
        base = ModelInfo("f", 64, 8, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 5, 4)
        self.info = replace(base, border_factor=factor)


def test_a_spot_at_the_border_falls_behind_the_interior_defect_it_outscored():
    image = _textured(1)
    interior_exemplar = exemplar_crops(image, np.array([[50, 50, 62, 62]], np.float32))
    at_edge = np.array([0, 40, 12, 52], np.float32)
    inside = np.array([70, 20, 82, 32], np.float32)
    det = Detections(
        class_index=np.zeros(2, np.int64),
        scores=np.array([0.8, 0.6], np.float32),
        boxes=np.stack([at_edge, inside]),
        masks=np.zeros((2, 120, 120), bool),
    )
    predictor = Predictor(_InfoOnly(0.5))  # type: ignore[arg-type]
    out = predictor.check_templates(image, det, [interior_exemplar], 0.1)
    assert np.array_equal(out.boxes[0], inside)
    assert out.scores.tolist() == pytest.approx([0.6, 0.4])
    # an edge exemplar says defects of this class do sit at the border: nothing changes
    edge_exemplar = exemplar_crops(image, np.array([[0, 50, 12, 62]], np.float32))
    out = predictor.check_templates(image, det, [edge_exemplar], 0.1)
    assert np.array_equal(out.boxes[0], at_edge)
    assert out.scores.tolist() == pytest.approx([0.8, 0.6])


def test_model_files_and_graphs_from_before_the_prior_keep_scoring_without_it():
    assert ModelConfig().border_factor == 0.5
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "border_factor"}
    assert ModelConfig.from_dict(legacy).border_factor == 1.0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="border_factor"):
            ModelConfig(border_factor=bad)
    meta = _InfoOnly(0.5).info.to_metadata("detect")
    assert ModelInfo.from_metadata(meta).border_factor == 0.5
    del meta["border_factor"]
    assert ModelInfo.from_metadata(meta).border_factor == 1.0
