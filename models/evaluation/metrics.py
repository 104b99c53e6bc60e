"""AP50 for boxes and masks (the InsA numbers), the two rates a production line cares about, and
the box-recall ceiling that tells localisation apart from ranking when AP50 is low.

AP is computed by pycocotools, not re-implemented, so the numbers are comparable with the paper's:
IoU 0.5 only, all areas, at most 100 detections per image. Defect-free images take part as images
without ground truth, so every detection on them is a false positive that lowers AP.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.box_ops import best_overlaps
from models.data.records import Instance

MAX_DETECTIONS = 100
IOU_THRESHOLD = 0.5

GroundTruth = dict[str, tuple[int, int, list[Instance]]]  # image_id -> (height, width, instances)


@dataclass
class Prediction:
    """One detection of one image."""

    image_id: str
    class_name: str
    score: float
    box: np.ndarray  # float (4,) x0, y0, x1, y1 in pixels
    mask: np.ndarray | None  # bool (H, W); None means the filled box (box-only detectors)


def _xywh(box: np.ndarray) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _mask_rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _box_rle(box: np.ndarray, height: int, width: int) -> dict:
    return mask_utils.frPyObjects(np.array([_xywh(box)], np.float64), height, width)[0]


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    """An in-memory COCO object, built without pycocotools' chatter."""
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _gt_annotations(gt: GroundTruth, image_ids: dict[str, int], cat_ids: dict[str, int]) -> list:
    annotations = []
    for image_id, (_, _, instances) in gt.items():
        for instance in instances:
            if instance.class_name not in cat_ids:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_ids[image_id],
                    "category_id": cat_ids[instance.class_name],
                    "bbox": _xywh(instance.box),
                    "area": float(instance.mask.sum()),
                    "segmentation": _mask_rle(instance.mask),
                    "iscrowd": 0,
                }
            )
    return annotations


def _dt_annotations(
    gt: GroundTruth,
    predictions: Sequence[Prediction],
    image_ids: dict[str, int],
    cat_ids: dict[str, int],
) -> list:
    annotations = []
    for prediction in predictions:
        if prediction.class_name not in cat_ids:
            continue  # a class left out of this evaluation
        if prediction.image_id not in image_ids:
            raise ValueError(f"prediction for unknown image {prediction.image_id!r}")
        height, width, _ = gt[prediction.image_id]
        if prediction.mask is None:
            rle = _box_rle(prediction.box, height, width)
        else:
            rle = _mask_rle(prediction.mask)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_ids[prediction.image_id],
                "category_id": cat_ids[prediction.class_name],
                "bbox": _xywh(prediction.box),
                "area": float(mask_utils.area(rle)),
                "segmentation": rle,
                "score": float(prediction.score),
                "iscrowd": 0,
            }
        )
    return annotations


def _per_class_ap(coco_gt: COCO, coco_dt: COCO, iou_type: str) -> np.ndarray:
    """AP50 (0..100) per category in category-id order; NaN where a class has no ground truth."""
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.iouThrs = np.array([IOU_THRESHOLD])
    evaluator.params.maxDets = [MAX_DETECTIONS]
    evaluator.params.areaRng = [[0.0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # (R recall thresholds, K)
    ap = np.full(precision.shape[1], np.nan)
    for k in range(precision.shape[1]):
        valid = precision[:, k] > -1
        if valid.any():
            ap[k] = 100.0 * float(precision[valid, k].mean())
    return ap


def evaluate_ap50(
    gt: GroundTruth, predictions: Sequence[Prediction], class_names: Sequence[str]
) -> dict:
    """COCO AP at IoU 0.5 for boxes and masks, per class and averaged over classes with GT.

    Returns {"per_class": {name: {"ap50_box", "ap50_mask", "images"}},
             "mean": {"ap50_box", "ap50_mask"}}, AP on a 0-100 scale.
    """
    names = sorted(set(class_names))
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    image_ids = {image_id: i + 1 for i, image_id in enumerate(sorted(gt))}
    images = [{"id": image_ids[i], "height": h, "width": w} for i, (h, w, _) in gt.items()]
    categories = [{"id": cat_ids[name], "name": name} for name in names]
    coco_gt = _coco(images, _gt_annotations(gt, image_ids, cat_ids), categories)
    detections = _dt_annotations(gt, predictions, image_ids, cat_ids)
    coco_dt = _coco(images, detections, categories)
    box_ap = _per_class_ap(coco_gt, coco_dt, "bbox")
    mask_ap = _per_class_ap(coco_gt, coco_dt, "segm")
    per_class = {
        name: {
            "ap50_box": float(box_ap[k]),
            "ap50_mask": float(mask_ap[k]),
            "images": sum(any(i.class_name == name for i in inst) for _, _, inst in gt.values()),
        }
        for k, name in enumerate(names)
    }
    return {
        "per_class": per_class,
        "mean": {"ap50_box": _nanmean(box_ap), "ap50_mask": _nanmean(mask_ap)},
    }


def _nanmean(values: np.ndarray) -> float:
    """Mean over classes that have ground truth; NaN when none has."""
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def _images_hit(predictions: Iterable[Prediction], threshold: float) -> set[str]:
    return {p.image_id for p in predictions if p.score >= threshold}


def false_alarm_rate(
    predictions: Iterable[Prediction], defect_free_ids: Iterable[str], threshold: float
) -> float:
    """Share of defect-free images that would be rejected: any detection scoring >= threshold."""
    free = set(defect_free_ids)
    if not free:
        return float("nan")
    return len(_images_hit(predictions, threshold) & free) / len(free)


def image_recall(
    predictions: Iterable[Prediction], defect_ids: Iterable[str], threshold: float
) -> float:
    """Share of defective images that would be rejected (any detection, any class, >= threshold)."""
    defective = set(defect_ids)
    if not defective:
        return float("nan")
    return len(_images_hit(predictions, threshold) & defective) / len(defective)


def best_ious(truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per ground-truth box (N, 4) xyxy, its best IoU with any of `boxes` (M, 4); 0 when M = 0."""
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return best_overlaps(torch.as_tensor(truth), torch.as_tensor(boxes))[0].numpy()


def box_recall_ceiling(
    gt: GroundTruth, predictions: Iterable[Prediction], iou_threshold: float = IOU_THRESHOLD
) -> float:
    """Share of ground-truth instances that some prediction of their class overlaps at box IoU >=
    `iou_threshold`, whatever its score: the recall AP50 could reach with a perfect ranking.

    Far below 1 means the boxes are the problem (small or oddly shaped defects), not the scores.
    """
    by_key: dict[tuple[str, str], list[np.ndarray]] = {}
    for p in predictions:
        by_key.setdefault((p.image_id, p.class_name), []).append(np.asarray(p.box, np.float64))
    found = total = 0
    for image_id, (_, _, instances) in gt.items():
        for name in {inst.class_name for inst in instances}:
            truth = [np.asarray(i.box, np.float64) for i in instances if i.class_name == name]
            total += len(truth)
            boxes = by_key.get((image_id, name), [])
            found += int((best_ious(np.stack(truth), np.array(boxes)) >= iou_threshold).sum())
    return found / total if total else float("nan")
