"""Which classes get exemplar-matched proposals: the ones the network does not outline.

The exemplar-matched proposals (`models/template_proposals.py`) are plain template matching: they
find some of the defects the network never outlines (the magnetic-tile Uneven bands, held out of
training), but on a class the network does outline they outrank its true detections that score
lower and cost AP (README, "Open-set"). Which case a class is in can be read off its prompts,
before any query: the easiest case the network will ever meet is an exemplar in the very image it
was cut from. So each class's exemplars are looked for again in their own images, every class
prompted together (a detection must also name the right class) and at any score that could rank
in AP50, and the class's *outline* is the mean over its exemplars of the best IoU any detection of
that class reaches with the exemplar's box. Proposals are made only for classes whose outline is
below the model file's `proposal_gate_iou` G, and such a class's own network detections are scored
by outline / (G / 2), at most 1, at every threshold (`detection_weights`): the network mostly
misplaces what it never outlines, and at full score those misplaced detections alarm on good parts
and outrank the proposals that do find the defect, while a class it half outlines (loosely drawn
exemplars, say) keeps its detections.

Measured on the magnetic tiles (prompt seeds 42 / 82 / 777): the held-out Uneven class outlines
at 0.28 / 0.13 / 0.35, while every class the default model trained on outlines at 0.45 or more
(its worst, Break on seed 777, at 0.45), so a gate of 0.4 leaves the default model's figures
as they were (README, "Open-set"). The weighting lifts held-out Uneven from 6.4 / 4.4 AP50 (box /
mask, mean of two training runs) to about 9.5 / 6.3; weighting by outline / G instead cost the
default model 1.1 box points on NEU-Seg's steel strip, whose classes it outlines at 0.21-0.41
(models/RESULTS.md, session 19).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.box_ops import best_overlaps
from models.postprocess import Detections

SCORE_FLOOR = 0.01  # any detection that could rank in AP50 counts, as the evaluation counts it

# Per class: (image, its exemplar boxes of that class (n, 4) xyxy in the image's pixels) pairs.
ClassPrompts = Sequence[tuple[np.ndarray, np.ndarray]]


def best_ious(det: Detections, class_index: int, boxes: np.ndarray) -> np.ndarray:
    """Per exemplar box (n, 4) xyxy, its best IoU with a detection of `class_index`; 0 with none."""
    truth = torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))
    found = torch.as_tensor(np.asarray(det.boxes[det.class_index == class_index], np.float64))
    return best_overlaps(truth, found.reshape(-1, 4))[0].numpy()


def exemplar_ious(
    predictor,
    prompts: Sequence[ClassPrompts],
    prototypes: np.ndarray,
    class_sides: Sequence[np.ndarray] | None = None,
    class_crops: Sequence[Sequence] | None = None,
    score_floor: float = SCORE_FLOOR,
) -> list[np.ndarray]:
    """Per class (rows of `prototypes`), the best IoU of each of its exemplars with a detection of
    that class in the exemplar's own image, every class prompted. Scored as an inspection is,
    exemplar check included, but without proposals: they are what this decides on."""
    none = np.zeros(len(prompts), dtype=bool)
    out = []
    for index, pairs in enumerate(prompts):
        if not pairs:
            out.append(np.zeros(0))
            continue
        dets = predictor.detect(
            [image for image, _ in pairs],
            prototypes,
            score_floor,
            with_masks=False,
            class_sides=class_sides,
            class_crops=class_crops,
            proposal_classes=none,
        )
        ious = [best_ious(det, index, boxes) for det, (_, boxes) in zip(dets, pairs, strict=True)]
        out.append(np.concatenate(ious))
    return out


def outline(ious: Sequence[np.ndarray]) -> np.ndarray:
    """Per class, the mean best IoU of its exemplars (1 for a class without any: nothing says the
    network misses it)."""
    return np.array([float(np.mean(v)) if len(v) else 1.0 for v in ious], dtype=np.float32)


def gated_classes(outlines: np.ndarray, gate: float) -> np.ndarray:
    """(C,) bool: the classes that get proposals, those outlined below `gate` (1: every class)."""
    outlines = np.asarray(outlines, dtype=np.float32)
    if gate >= 1.0:
        return np.ones(len(outlines), dtype=bool)
    return outlines < gate


def detection_weights(outlines: np.ndarray, gate: float) -> np.ndarray:
    """(C,) float32: per class, the factor on its network detections: for a class outlined below
    the gate, its outline over half the gate (0 for a class whose exemplars the network never
    finds, full weight from half the gate up), 1 for the rest. With gate 1 (proposals for every
    class, as older model files make them) nothing is weighted: the weight belongs to the gate's
    reading of an outline, not to the proposals."""
    outlines = np.clip(np.asarray(outlines, dtype=np.float32), 0.0, 1.0)
    if gate >= 1.0 or gate <= 0.0:
        return np.ones(len(outlines), dtype=np.float32)
    return np.minimum(outlines / (gate / 2), 1.0).astype(np.float32)
