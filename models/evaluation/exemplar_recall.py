"""Exemplar recall: how many of a class's own prompt instances the network finds again in the very
images they were cut from, at any score that could rank in AP50.

A class the network cannot outline (a band across the whole part, for a model trained on spots
and cracks) gets no box however its detections are scored, and AP50 alone does not say whether
the scoring or the outlining is short. Finding an exemplar in its own image is the easiest case
the network will meet: a class it misses there is one it does not outline, and a lower threshold
or more prompts will not bring it back. It needs no query images, so a class can be checked on its
prompts alone (README, "Open-set": the held-out Uneven bands).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.evaluation import metrics
from models.evaluation.runner import class_crops, class_prototypes, class_sides
from models.postprocess import Detections
from models.predictor import Predictor

MIN_IOU = 0.5  # an exemplar counts as found at the AP50 criterion
SCORE_FLOOR = 0.01  # the evaluation's floor: any detection that could rank in AP50 counts


@dataclass(frozen=True)
class ClassRecall:
    """One class's exemplars: how many were found, and each one's best IoU."""

    found: int
    total: int
    best_iou: tuple[float, ...]


def best_ious(det: Detections, class_index: int, boxes: np.ndarray) -> np.ndarray:
    """Per exemplar box (N, 4) xyxy, its best IoU with a detection of `class_index`; 0 with none."""
    return metrics.best_ious(boxes, det.boxes[det.class_index == class_index])


def exemplar_recall(
    predictor: Predictor,
    material: dict[str, list],
    min_iou: float = MIN_IOU,
    score_floor: float = SCORE_FLOOR,
) -> dict[str, ClassRecall]:
    """Per class of `material` (class -> [(image, its instances of that class)], the evaluation's
    prompt material), its exemplars found again with every class prompted together, as in the
    evaluation and the service: a detection must also name the right class."""
    protos = class_prototypes(predictor, material)
    sides, crops = class_sides(material), class_crops(material)
    out: dict[str, ClassRecall] = {}
    for index, name in enumerate(material):
        images = [image for image, _ in material[name]]
        dets = predictor.detect(images, protos, score_floor, class_sides=sides, class_crops=crops)
        ious: list[float] = []
        for det, (_, insts) in zip(dets, material[name], strict=True):
            ious.extend(best_ious(det, index, np.array([x.box for x in insts])).tolist())
        found = sum(v >= min_iou for v in ious)
        out[name] = ClassRecall(found, len(ious), tuple(round(v, 3) for v in ious))
    return out
