"""The exemplar-size prior (models/size_prior.py) and its use in the postprocessing: maths as
properties, then what a user sees: a detection of the taught size outranks an otherwise equal one
of another size, and the class whose exemplars match the size names the defect."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.postprocess import postprocess
from models.preprocess import Letterbox
from models.size_prior import log_sides, size_factors

sides = st.floats(min_value=1.0, max_value=2000.0, allow_nan=False)
sigmas = st.floats(min_value=0.05, max_value=5.0, allow_nan=False)


def square(side: float, x: float = 0.0) -> np.ndarray:
    return np.array([[x, 0.0, x + side, side]])


@given(side=sides, sigma=sigmas, x=st.floats(0, 500))
def test_a_box_of_an_exemplars_size_keeps_its_whole_score(side, sigma, x):
    ref = log_sides(square(side))
    assert size_factors(square(side, x), [ref], sigma)[0, 0] == pytest.approx(1.0)


@given(side=st.floats(60.0, 2000.0), k=st.floats(1.01, 50.0), sigma=sigmas)
def test_larger_and_smaller_by_the_same_ratio_weigh_the_same(side, k, sigma):
    ref = [log_sides(square(side))]
    big, small = (
        size_factors(square(side * k), ref, sigma),
        size_factors(square(side / k), ref, sigma),
    )
    assert big[0, 0] == pytest.approx(small[0, 0], rel=1e-4)
    assert 0.0 <= big[0, 0] < 1.0


@given(side=sides, k1=st.floats(1.0, 20.0), k2=st.floats(1.0, 20.0), sigma=sigmas)
def test_farther_from_the_exemplar_size_never_weighs_more(side, k1, k2, sigma):
    near, far = sorted((k1, k2))
    ref = [log_sides(square(side))]
    f_near = size_factors(square(side * near), ref, sigma)[0, 0]
    f_far = size_factors(square(side * far), ref, sigma)[0, 0]
    assert f_far <= f_near + 1e-6


@settings(max_examples=50)
@given(w=sides, h=sides)
def test_size_is_the_geometric_mean_of_the_sides(w, h):
    assert np.exp(log_sides(np.array([[3.0, 4.0, 3.0 + w, 4.0 + h]])))[0] == pytest.approx(
        np.sqrt(w * h), rel=1e-6
    )


def test_the_nearest_exemplar_counts_so_a_class_taught_two_sizes_keeps_both():
    ref = [log_sides(np.concatenate([square(10), square(200)]))]
    f = size_factors(np.concatenate([square(10), square(200), square(45)]), ref, 0.7)[:, 0]
    assert f[0] == pytest.approx(1.0) and f[1] == pytest.approx(1.0) and f[2] < 0.5


def test_no_exemplar_sizes_or_sigma_zero_change_nothing():
    boxes = np.concatenate([square(5), square(500)])
    assert np.all(size_factors(boxes, [np.zeros(0)], 0.7) == 1.0)
    assert np.all(size_factors(boxes, [log_sides(square(50))], 0.0) == 1.0)


def test_sigma_0_7_keeps_61_percent_at_twice_the_size_and_14_at_four_times():
    ref = [log_sides(square(20))]
    f = size_factors(np.concatenate([square(40), square(80)]), ref, 0.7)[:, 0]
    assert f[0] == pytest.approx(0.61, abs=0.01) and f[1] == pytest.approx(0.14, abs=0.01)


def _raw(boxes_px: list[tuple[float, float, float, float]], probs: list[list[float]]):
    """Raw outputs of a 128 x 128 image (letterbox 128, mask cells of 4 px): queries whose masks
    fill boxes_px."""
    lb = Letterbox.fit(128, 128, 128)
    q = len(boxes_px)
    logits = np.log(np.array(probs) / (1 - np.array(probs))).astype(np.float32)  # (Q, C)
    masks = np.full((q, 32, 32), -10.0, dtype=np.float32)
    net = lb.boxes_to_network(np.array(boxes_px, dtype=np.float32))  # normalised to 128
    for i, (x0, y0, x1, y1) in enumerate(np.round(net * 32).astype(int)):
        masks[i, y0:y1, x0:x1] = 10.0
    cxcywh = np.stack(
        [
            (net[:, 0] + net[:, 2]) / 2,
            (net[:, 1] + net[:, 3]) / 2,
            net[:, 2] - net[:, 0],
            net[:, 3] - net[:, 1],
        ],
        axis=1,
    ).astype(np.float32)
    return logits, cxcywh, masks, lb


def test_the_detection_of_the_taught_size_outranks_an_equal_one_of_another_size():
    # two equally confident detections: an 8 px spot and a 60 px one; the exemplars were 8 px
    logits, boxes, masks, lb = _raw([(8, 8, 68, 68), (80, 80, 88, 88)], [[0.8], [0.8]])
    taught = [log_sides(np.array([[0.0, 0.0, 8.0, 8.0], [5.0, 5.0, 13.0, 13.0]]))]
    plain = postprocess(logits, boxes, masks, lb, 0.01)
    assert plain.scores[0] == pytest.approx(plain.scores[1])
    det = postprocess(logits, boxes, masks, lb, 0.01, class_sides=taught, size_sigma=0.7)
    assert det.boxes[0] == pytest.approx([80, 80, 88, 88], abs=2)
    assert det.scores[0] == pytest.approx(0.8, abs=0.02) and det.scores[1] < 0.05
    # at a threshold of 0.5 only the taught size is reported
    assert len(postprocess(logits, boxes, masks, lb, 0.5, class_sides=taught, size_sigma=0.7)) == 1


def test_the_class_whose_exemplars_match_the_size_names_the_defect():
    # one 40 px detection, equally likely "pit" (exemplars 6 px) or "stain" (exemplars 40 px)
    logits, boxes, masks, lb = _raw([(20, 20, 60, 60)], [[0.7, 0.7]])
    taught = [log_sides(np.array([[0, 0, 6, 6]])), log_sides(np.array([[0, 0, 40, 40]]))]
    det = postprocess(logits, boxes, masks, lb, 0.01, class_sides=taught, size_sigma=0.7)
    assert list(det.class_index) == [1]


def test_exemplar_sizes_for_the_wrong_number_of_classes_are_refused():
    logits, boxes, masks, lb = _raw([(20, 20, 60, 60)], [[0.7, 0.7]])
    with pytest.raises(ValueError, match="exemplar sizes for 1 classes"):
        postprocess(logits, boxes, masks, lb, 0.01, class_sides=[np.zeros(1)], size_sigma=0.7)
