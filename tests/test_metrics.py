"""AP50 via pycocotools, the false-alarm and recall rates used for a pass/reject verdict, and the
box-recall ceiling that separates localisation from ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.data.instances import box_mask
from models.data.records import Instance
from models.evaluation.metrics import (
    Prediction,
    box_recall_ceiling,
    evaluate_ap50,
    false_alarm_rate,
    image_recall,
)

H, W = 64, 80


def _instance(name: str, box: list[float]) -> Instance:
    array = np.array(box, np.float32)
    return Instance(name, array, box_mask(array, W, H))


def _ground_truth() -> dict:
    return {
        "img1": (
            H,
            W,
            [_instance("scratch", [10, 10, 30, 20]), _instance("pit", [50, 40, 60, 50])],
        ),
        "img2": (H, W, [_instance("scratch", [5, 30, 45, 40])]),
        "free1": (H, W, []),
        "free2": (H, W, []),
    }


def _perfect(score: float = 0.9, with_masks: bool = True) -> list[Prediction]:
    return [
        Prediction(image_id, inst.class_name, score, inst.box, inst.mask if with_masks else None)
        for image_id, (_, _, instances) in _ground_truth().items()
        for inst in instances
    ]


def test_perfect_predictions_score_100() -> None:
    result = evaluate_ap50(_ground_truth(), _perfect(), ["pit", "scratch"])
    assert result["mean"] == pytest.approx({"ap50_box": 100.0, "ap50_mask": 100.0})
    scratch = result["per_class"]["scratch"]
    assert scratch == pytest.approx({"ap50_box": 100.0, "ap50_mask": 100.0, "images": 2})
    box_only = evaluate_ap50(_ground_truth(), _perfect(with_masks=False), ["pit", "scratch"])
    assert box_only["mean"]["ap50_mask"] == pytest.approx(100.0)  # mask None means the filled box


def test_shifted_box_scores_less() -> None:
    predictions = _perfect()
    gt_box = predictions[0].box  # scratch 20x10 at (10, 10): shift by 12 px -> IoU 8/32 < 0.5
    shifted = gt_box + np.array([12, 0, 12, 0], np.float32)
    predictions[0] = Prediction("img1", "scratch", 0.9, shifted, box_mask(shifted, W, H))
    result = evaluate_ap50(_ground_truth(), predictions, ["pit", "scratch"])
    assert result["per_class"]["scratch"]["ap50_box"] < 100.0
    assert result["per_class"]["scratch"]["ap50_mask"] < 100.0
    assert result["per_class"]["pit"]["ap50_box"] == pytest.approx(100.0)


def test_false_detections_on_defect_free_images() -> None:
    clean = _perfect(score=0.5)
    box = np.array([0, 0, 20, 20], np.float32)
    false = [Prediction(i, "scratch", 0.95, box, box_mask(box, W, H)) for i in ("free1", "free2")]
    before = evaluate_ap50(_ground_truth(), clean, ["pit", "scratch"])
    after = evaluate_ap50(_ground_truth(), clean + false, ["pit", "scratch"])
    assert after["per_class"]["scratch"]["ap50_box"] < before["per_class"]["scratch"]["ap50_box"]
    assert after["mean"]["ap50_mask"] < before["mean"]["ap50_mask"]
    assert false_alarm_rate(clean, ["free1", "free2"], threshold=0.3) == 0.0
    assert false_alarm_rate(clean + false, ["free1", "free2"], threshold=0.3) == 1.0
    assert false_alarm_rate(clean + false, ["free1", "free2"], threshold=0.99) == 0.0


def test_class_without_ground_truth_is_nan_and_left_out() -> None:
    result = evaluate_ap50(_ground_truth(), _perfect(), ["pit", "scratch", "crack"])
    assert math.isnan(result["per_class"]["crack"]["ap50_box"])
    assert result["per_class"]["crack"]["images"] == 0
    assert result["mean"]["ap50_box"] == pytest.approx(100.0)


def test_no_predictions_scores_zero() -> None:
    result = evaluate_ap50(_ground_truth(), [], ["pit", "scratch"])
    assert result["mean"] == {"ap50_box": 0.0, "ap50_mask": 0.0}


def test_image_recall() -> None:
    predictions = [p for p in _perfect() if p.image_id == "img1"]
    assert image_recall(predictions, ["img1", "img2"], threshold=0.5) == 0.5
    assert image_recall(predictions, ["img1", "img2"], threshold=0.95) == 0.0


def test_box_recall_ceiling_counts_localised_instances_whatever_their_score() -> None:
    assert box_recall_ceiling(_ground_truth(), _perfect(score=0.01)) == pytest.approx(1.0)
    predictions = _perfect()
    # the first scratch box shifted by 12 of its 20 px: IoU 8/32 < 0.5, localised at 0.2 only
    shifted = predictions[0].box + np.array([12, 0, 12, 0], np.float32)
    predictions[0] = Prediction("img1", "scratch", 0.9, shifted, None)
    assert box_recall_ceiling(_ground_truth(), predictions) == pytest.approx(2 / 3)
    assert box_recall_ceiling(_ground_truth(), predictions, iou_threshold=0.2) == pytest.approx(1.0)
    # a box on the right spot under the wrong class name does not count
    renamed = [Prediction(p.image_id, "pit", p.score, p.box, None) for p in _perfect()]
    assert box_recall_ceiling(_ground_truth(), renamed) == pytest.approx(1 / 3)
    assert math.isnan(box_recall_ceiling({"free1": (H, W, [])}, []))
