"""Mask confidence in the score (models/mask_score.py): the maths as properties, then what a user
sees: of two equally likely detections, the one whose mask the model is sure of ranks first, and a
query with no mask at all does not come back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.mask_score import mask_confidence, mask_factors
from models.postprocess import postprocess
from models.preprocess import Letterbox
from models.runtime.base import ModelInfo

logit_maps = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).normal(0, 4, (3, 8, 8)).astype(np.float32)
)


@settings(max_examples=60, deadline=None)
@given(logits=logit_maps, w=st.floats(0.0, 4.0))
def test_factors_lie_in_0_1_and_a_stronger_weight_never_raises_them(logits, w):
    f = mask_factors(logits, w)
    assert np.all((f >= 0) & (f <= 1))
    assert np.all(mask_factors(logits, w + 0.5) <= f + 1e-6)


@settings(max_examples=60, deadline=None)
@given(logits=logit_maps)
def test_confidence_of_a_non_empty_mask_is_at_least_one_half(logits):
    conf = mask_confidence(logits)
    has_mask = (logits > 0).reshape(3, -1).any(axis=1)
    assert np.all(conf[has_mask] >= 0.5) and np.all(conf[~has_mask] == 0)


def test_decisive_masks_score_near_one_hesitant_near_half_empty_zero():
    logits = np.full((3, 8, 8), -8.0, np.float32)
    logits[0, 2:6, 2:6] = 8.0  # sure of its mask
    logits[1, 2:6, 2:6] = 0.1  # barely above the threshold
    conf = mask_confidence(logits)
    assert conf[0] == pytest.approx(1.0, abs=1e-3)
    assert conf[1] == pytest.approx(0.525, abs=1e-3)
    assert conf[2] == 0.0
    assert np.all(mask_factors(logits, 0.0) == 1.0)  # off: even the empty mask keeps its score


def _two_queries(second_mask_logit: float):
    """Two equally likely queries (p = 0.8) of a 128 x 128 image with masks over disjoint areas."""
    lb = Letterbox.fit(128, 128, 128)
    logits = np.full((2, 1), np.log(0.8 / 0.2), np.float32)
    boxes = np.array([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]], np.float32)
    masks = np.full((2, 32, 32), -8.0, np.float32)
    masks[0, 5:11, 5:11] = 8.0
    masks[1, 21:27, 21:27] = second_mask_logit
    return logits, boxes, masks, lb


def test_the_detection_with_the_surer_mask_ranks_first():
    logits, boxes, masks, lb = _two_queries(0.2)
    plain = postprocess(logits, boxes, masks, lb, 0.01)
    assert plain.scores[0] == pytest.approx(plain.scores[1])
    det = postprocess(logits, boxes, masks, lb, 0.01, mask_score_weight=1.0)
    assert det.boxes[0][0] < 64  # the sure mask is in the top-left quarter
    assert det.scores[0] == pytest.approx(0.8, abs=0.01)
    assert det.scores[1] == pytest.approx(0.8 * 0.55, abs=0.01)
    # at 0.5 only the sure one is reported
    assert len(postprocess(logits, boxes, masks, lb, 0.5, mask_score_weight=1.0)) == 1


def test_a_query_without_a_mask_is_not_reported():
    logits, boxes, masks, lb = _two_queries(-8.0)
    assert len(postprocess(logits, boxes, masks, lb, 0.01)) == 2
    det = postprocess(logits, boxes, masks, lb, 0.01, mask_score_weight=1.0)
    assert len(det) == 1 and det.masks[0].any()


def test_the_setting_is_validated_and_old_files_score_as_before():
    with pytest.raises(ValueError, match="mask_score_weight"):
        ModelConfig(mask_score_weight=-1.0)
    assert ModelConfig().mask_score_weight == 1.0
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "mask_score_weight"}
    assert ModelConfig.from_dict(legacy).mask_score_weight == 0.0
    info = ModelInfo("f" * 64, 128, 64, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 50, 4, 0.7, 0.3, 1.0)
    meta = info.to_metadata("detector")
    assert ModelInfo.from_metadata(meta).mask_score_weight == 1.0
    del meta["mask_score_weight"]  # a graph exported before the setting existed
    assert ModelInfo.from_metadata(meta).mask_score_weight == 0.0
