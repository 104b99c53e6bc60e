"""The exemplar-appearance check (models/template_match.py): the maths as properties, then what a
user sees: a detection that looks like an exemplar keeps its score (in any of the four turns),
one on plain surface loses part of it, and a detection matching nothing keeps only the floor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.postprocess import Detections
from models.predictor import Predictor
from models.runtime.base import ModelInfo
from models.template_match import (
    FLOOR,
    MAX_STORED_SIDE,
    ExemplarCrop,
    exemplar_crops,
    largest,
    match_score,
    template_factors,
)


def _surface(seed: int, size: int = 160) -> np.ndarray:
    """A textured grey surface (smoothed noise), (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 6, (size // 8, size // 8))
    surface = np.kron(base, np.ones((8, 8))) + rng.normal(0, 2, (size, size))
    return np.repeat(np.clip(surface, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _defect(seed: int) -> np.ndarray:
    """A dark, asymmetric 'L'-shaped mark with a bright rim, (24, 16) uint8."""
    rng = np.random.default_rng(seed)
    mark = np.full((24, 16), 150, np.float64)
    mark[2:22, 3:8] = 40
    mark[16:22, 3:14] = 40
    return np.clip(mark + rng.normal(0, 3, mark.shape), 0, 255).astype(np.uint8)


def _paste(image: np.ndarray, patch: np.ndarray, y: int, x: int) -> np.ndarray:
    out = image.copy()
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch[..., None]
    return out


def _box(y: int, x: int, patch: np.ndarray) -> np.ndarray:
    return np.array([x, y, x + patch.shape[1], y + patch.shape[0]], np.float32)


@pytest.fixture(scope="module")
def prompt_crops() -> list[ExemplarCrop]:
    """Crops of one exemplar drawn on a prompt image."""
    defect = _defect(0)
    prompt = _paste(_surface(1), defect, 30, 40)
    return exemplar_crops(prompt, _box(30, 40, defect)[None])


def test_the_same_defect_elsewhere_keeps_its_score_in_any_quarter_turn(prompt_crops):
    for turns in range(4):
        defect = np.ascontiguousarray(np.rot90(_defect(7), turns))
        image = _paste(_surface(2), defect, 90, 70)
        assert match_score(image, _box(90, 70, defect), prompt_crops) > 0.8


def test_plain_surface_of_the_same_size_scores_low(prompt_crops):
    grain = np.random.default_rng(3).normal(128, 4, (160, 160))  # finely ground, no marks
    image = np.clip(grain, 0, 255).astype(np.uint8)
    assert match_score(image, np.array([60, 60, 76, 84], np.float32), prompt_crops) < 0.4


def test_a_box_far_off_every_exemplar_size_matches_nothing(prompt_crops):
    image = _paste(_surface(4), _defect(7), 60, 60)
    assert match_score(image, np.array([0, 0, 160, 160], np.float32), prompt_crops) == 0.0


def test_flat_or_tiny_exemplars_give_no_crop_and_large_ones_are_stored_small():
    image = _surface(5, 640)
    flat = np.full((640, 640, 3), 90, np.uint8)
    assert exemplar_crops(flat, np.array([[10, 10, 60, 60]], np.float32)) == []
    assert exemplar_crops(image, np.array([[10, 10, 12, 60]], np.float32)) == []
    (big,) = exemplar_crops(image, np.array([[0, 0, 600, 300]], np.float32))
    assert max(big.pixels.shape) == MAX_STORED_SIDE
    assert big.camera_size == pytest.approx((300, 600), rel=0.01)


def test_largest_keeps_the_biggest_exemplars_first():
    crops = [ExemplarCrop(np.zeros((s, s), np.uint8)) for s in (5, 30, 10, 20, 8)]
    assert [c.pixels.shape[0] for c in largest(crops, 3)] == [30, 20, 10]


boxes_st = st.lists(
    st.tuples(st.integers(0, 140), st.integers(0, 140), st.integers(4, 60), st.integers(4, 60)),
    min_size=1,
    max_size=6,
).map(lambda b: np.array([[x, y, x + w, y + h] for x, y, w, h in b], np.float32))


@settings(max_examples=40, deadline=None)
@given(boxes=boxes_st, seed=st.integers(0, 1000), w=st.floats(0.0, 4.0))
def test_factors_lie_in_0_1_and_weight_0_or_no_crops_change_nothing(prompt_crops, boxes, seed, w):
    image = _surface(seed)
    cls = np.zeros(len(boxes), np.int64)
    f = template_factors(image, boxes, cls, [prompt_crops], w)
    assert f.shape == (len(boxes),) and np.all((f >= 0) & (f <= 1))
    assert np.all(template_factors(image, boxes, cls, [prompt_crops], 0.0) == 1)
    assert np.all(template_factors(image, boxes, cls, [[]], w) == 1)
    assert np.all(template_factors(image, boxes, cls, [prompt_crops], 1.0) >= FLOOR)


def _info(weight: float = 0.0) -> ModelInfo:
    base = ModelInfo("f", 64, 8, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 5, 4)
    return replace(base, template_match_weight=weight)


class _InfoOnly:
    """The predictor's rescoring reads nothing of its backend but the ModelInfo."""

    def __init__(self, weight: float) -> None:
        self.info = _info(weight)


def test_the_check_reranks_and_drops_what_falls_under_the_threshold(prompt_crops):
    defect = _defect(9)
    image = _paste(_surface(6), defect, 100, 20)
    on_plain = np.array([60, 10, 76, 34], np.float32)
    on_defect = _box(100, 20, defect)
    det = Detections(
        class_index=np.zeros(2, np.int64),
        scores=np.array([0.8, 0.6], np.float32),
        boxes=np.stack([on_plain, on_defect]),
        masks=np.zeros((2, 160, 160), bool),
    )
    predictor = Predictor(_InfoOnly(1.0))  # type: ignore[arg-type]
    out = predictor.check_templates(image, det, [prompt_crops], 0.5)
    assert len(out) == 1 and np.array_equal(out.boxes[0], on_defect)
    assert 0.55 < out.scores[0] <= 0.6 and out.masks is not None and len(out.masks) == 1


def test_model_files_from_before_the_check_keep_scoring_without_it():
    assert ModelConfig().template_match_weight == 2.0
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "template_match_weight"}
    assert ModelConfig.from_dict(legacy).template_match_weight == 0.0
    with pytest.raises(ValueError, match="template_match_weight"):
        ModelConfig(template_match_weight=5.0)
    meta = _info(1.0).to_metadata("detect")
    assert ModelInfo.from_metadata(meta).template_match_weight == 1.0
    del meta["template_match_weight"]  # a graph exported before the check existed
    assert ModelInfo.from_metadata(meta).template_match_weight == 0.0
