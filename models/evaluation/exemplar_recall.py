"""Exemplar recall: how many of a class's own prompt instances the network finds again in the very
images they were cut from, at any score that could rank in AP50.

A class the network cannot outline (a band across the whole part, for a model trained on spots
and cracks) gets no box however its detections are scored, and AP50 alone does not say whether
the scoring or the outlining is short. Finding an exemplar in its own image is the easiest case
the network will meet: a class it misses there is one it does not outline, and a lower threshold
or more prompts will not bring it back. It needs no query images, so a class can be checked on its
prompts alone (README, "Open-set": the held-out Uneven bands). The mean of the best IoUs is the
class's outline, which decides whether it gets exemplar-matched proposals
(`models/outline_gate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.evaluation.runner import class_crops, class_prompts, class_prototypes, class_sides
from models.outline_gate import SCORE_FLOOR, exemplar_ious, outline
from models.predictor import Predictor

MIN_IOU = 0.5  # an exemplar counts as found at the AP50 criterion


@dataclass(frozen=True)
class ClassRecall:
    """One class's exemplars: how many were found, each one's best IoU, and their mean."""

    found: int
    total: int
    best_iou: tuple[float, ...]
    outline: float


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
    ious = exemplar_ious(
        predictor,
        class_prompts(material),
        protos,
        class_sides(material),
        class_crops(material),
        score_floor,
    )
    outlines = outline(ious)
    return {
        name: ClassRecall(
            int((v >= min_iou).sum()),
            len(v),
            tuple(round(float(x), 3) for x in v),
            round(float(o), 3),
        )
        for name, v, o in zip(material, ious, outlines, strict=True)
    }
