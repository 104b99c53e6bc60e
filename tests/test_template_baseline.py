"""Template-matching baseline: finds a pasted template, in any of the 8 orientations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.data.instances import box_mask
from models.data.records import Instance
from models.evaluation.template_baseline import TemplateMatcher, nms

H, W = 160, 200


def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 6, (H, W)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 1.0)


def _patch() -> np.ndarray:
    """A distinctive, asymmetric 24 x 24 mark."""
    rng = np.random.default_rng(99)
    patch = cv2.resize(rng.uniform(30, 230, (6, 6)).astype(np.float32), (24, 24))
    patch[2:6, 2:20] = 20  # a bar along one side breaks the symmetry
    return patch


def _paste(background: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    image = background.copy()
    image[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    gray = np.clip(image, 0, 255).astype(np.uint8)
    return np.dstack([gray] * 3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _matcher() -> TemplateMatcher:
    prompt = _paste(_background(0), _patch(), 20, 30)
    box = np.array([20, 30, 44, 54], np.float32)
    return TemplateMatcher({"mark": [(prompt, [Instance("mark", box, box_mask(box, W, H))])]})


@pytest.mark.parametrize("turns", [0, 1, 3])
def test_finds_pasted_template(turns: int) -> None:
    query = _paste(_background(1), np.rot90(_patch(), turns), 130, 90)
    predictions = _matcher().predict("q", query)
    assert predictions and len(predictions) <= 100
    best = predictions[0]
    assert best.image_id == "q" and best.class_name == "mark" and best.mask is None
    assert best.score > 0.9
    assert _iou(best.box, np.array([130, 90, 154, 114])) > 0.7
    assert all(a.score >= b.score for a, b in zip(predictions, predictions[1:], strict=False))


def test_nms_keeps_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
