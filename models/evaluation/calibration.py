"""Calibrate the default score threshold on defect-free images.

A line tolerates few false rejects, so the default threshold is the score that at most
`target_rate` of defect-free calibration images exceed with any detection, given real prompts of
every class. The calibration images are a fixed, hash-chosen share of the defect-free images, so
the same images are used every time and the rest stay unseen by the calibration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.data.records import DefectDataset, Record
from models.evaluation.protocol import CALIBRATION_SHARE, is_calibration_image, split_prompts
from models.evaluation.runner import AP_SCORE_FLOOR, prompt_inputs, prompt_material
from models.predictor import TorchPredictor


def calibration_images(records: Sequence[Record], share: float = CALIBRATION_SHARE) -> list[Record]:
    return [r for r in records if not r.classes and is_calibration_image(r.image_id, share)]


def max_scores(
    predictor: TorchPredictor,
    ds: DefectDataset,
    seeds: Sequence[int],
    prompts_per_class: int = 5,
    batch_size: int = 8,
) -> np.ndarray:
    """Per (seed, calibration image): the highest detection score with all classes prompted.

    Every detection above a low floor is scored, not only the network's best: the exemplar check
    (`models/template_match.py`) may re-rank them."""
    by_id = {r.image_id: r for r in ds.records}
    images = calibration_images(ds.records)
    out = []
    for seed in seeds:
        split = split_prompts(ds.records, ds.class_names, prompts_per_class, seed)
        material = {c: prompt_material(ds, split.prompts[c], c, by_id) for c in ds.class_names}
        inputs = prompt_inputs(predictor, material)
        for start in range(0, len(images), batch_size):
            batch = [ds.load(by_id[r.image_id])[0] for r in images[start : start + batch_size]]
            for det in predictor.detect(
                batch,
                inputs.prototypes,
                score_threshold=AP_SCORE_FLOOR,
                max_detections=100,
                with_masks=False,
                class_sides=inputs.sides,
                class_crops=inputs.crops,
                proposal_classes=inputs.proposal_classes,
                detection_weights=inputs.detection_weights,
            ):
                out.append(float(det.scores[0]) if len(det) else 0.0)
    return np.asarray(out)


def threshold_for(scores: np.ndarray, target_rate: float) -> float:
    """Smallest threshold with at most `target_rate` of images scoring at or above it."""
    if len(scores) == 0:
        raise ValueError("no defect-free calibration images")
    return float(np.quantile(scores, 1 - target_rate, method="higher") + 1e-4)


def calibrate(
    predictor: TorchPredictor,
    ds: DefectDataset,
    seeds: Sequence[int] = (42, 82, 777),
    target_rate: float = 0.03,
) -> dict:
    """The model-file metadata a calibration writes (`checkpoint.update_meta`): the threshold and
    how it was found, so a reader of the file can tell which good parts it was set on."""
    scores = max_scores(predictor, ds, seeds)
    return {
        "score_threshold": threshold_for(scores, target_rate),
        "calibration": {
            "dataset": ds.name,
            "images": int(len(scores) // len(seeds)),
            "seeds": list(seeds),
            "share": CALIBRATION_SHARE,
            "target_rate": target_rate,
            "score_quantiles": {q: float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.95, 0.99)},
        },
    }
