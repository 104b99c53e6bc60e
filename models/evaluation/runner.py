"""The InsA exemplar evaluation of a model (and the template-matching baseline) on one dataset.

For each prompt seed: K prompt images per evaluated class (only images showing that class alone),
every other image a query; the prompts of all evaluated classes are given together, so a detection
must also name the right class. Defect-free images are queries with no ground truth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm import tqdm

from models.data.records import DefectDataset, Instance
from models.evaluation.metrics import (
    Prediction,
    box_recall_ceiling,
    evaluate_ap50,
    false_alarm_rate,
    image_recall,
)
from models.evaluation.protocol import is_calibration_image, split_prompts
from models.evaluation.template_baseline import TemplateMatcher
from models.outline_gate import detection_weights, exemplar_ious, gated_classes, outline
from models.predictor import PromptRegion, TorchPredictor, prototypes_from
from models.size_prior import log_sides
from models.template_match import ExemplarCrop, exemplar_crops, largest

AP_SCORE_FLOOR = 0.01  # detections kept for AP: low scores still rank the precision-recall curve


@dataclass(frozen=True)
class EvalSettings:
    prompts_per_class: int = 5
    seeds: tuple[int, ...] = (42, 82, 777)
    classes: tuple[str, ...] | None = None  # None: every class of the dataset
    batch_size: int = 8
    baseline: bool = True


def prompt_material(ds: DefectDataset, ids: list[str], name: str, by_id: dict):
    """(image, instances of `name`) for each prompt image."""
    out = []
    for image_id in ids:
        image, inst = ds.load(by_id[image_id])
        out.append((image, [x for x in inst if x.class_name == name]))
    return out


def class_sides(material: dict[str, list]) -> list[np.ndarray]:
    """Per class, the log sizes of every prompt instance (the size prior's exemplars)."""
    return [
        log_sides(np.array([x.box for _, insts in material[name] for x in insts]).reshape(-1, 4))
        for name in material
    ]


def class_crops(material: dict[str, list]) -> list[list[ExemplarCrop]]:
    """Per class, the grey crops of its largest prompt instances (the template check's input)."""
    return [
        largest(
            [
                crop
                for image, insts in material[name]
                for crop in exemplar_crops(image, np.array([x.box for x in insts]).reshape(-1, 4))
            ]
        )
        for name in material
    ]


def class_prototypes(predictor: TorchPredictor, material: dict[str, list]) -> np.ndarray:
    """(C, d): per class, every instance of its prompt images encoded, then averaged."""
    rows = []
    for name in material:
        embs = [
            predictor.encode_prompts(image, [PromptRegion(x.box, x.mask) for x in insts])
            for image, insts in material[name]
        ]
        rows.append(prototypes_from(np.concatenate(embs)))
    return np.stack(rows)


def class_prompts(material: dict[str, list]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per class, (image, its instances' boxes (n, 4)) pairs: the outline gate's input."""
    return [
        [(image, np.array([x.box for x in insts]).reshape(-1, 4)) for image, insts in material[n]]
        for n in material
    ]


@dataclass(frozen=True)
class PromptInputs:
    """What detection needs of a seed's prompts, computed once per seed."""

    prototypes: np.ndarray  # (C, d)
    sides: list[np.ndarray]  # the size prior's input
    crops: list[list[ExemplarCrop]]  # the exemplar check's and the proposals' input
    outlines: np.ndarray | None  # per class, its outline (models/outline_gate.py); None: not gated
    proposal_classes: np.ndarray | None  # (C,) bool, the classes that get proposals
    detection_weights: np.ndarray | None  # (C,) their network detections' factor; None: 1


def prompt_inputs(predictor: TorchPredictor, material: dict[str, list]) -> PromptInputs:
    """Prototypes, sizes and crops of the prompts and, when the model file makes exemplar-matched
    proposals behind a gate, each class's outline and whether it gets them, as the service does."""
    protos, sides, crops = (
        class_prototypes(predictor, material),
        class_sides(material),
        class_crops(material),
    )
    info = predictor.info
    if predictor.proposal_score <= 0 or info.proposal_gate_iou >= 1:
        return PromptInputs(protos, sides, crops, None, None, None)
    ious = exemplar_ious(predictor, class_prompts(material), protos, sides, crops)
    outlines = outline(ious)
    gate = info.proposal_gate_iou
    return PromptInputs(
        protos,
        sides,
        crops,
        outlines,
        gated_classes(outlines, gate),
        detection_weights(outlines, gate),
    )


def _summary(gt, preds, classes, free_ids, defect_ids, threshold) -> dict:
    """AP50 and the rates, plus two figures that say where AP50 is lost: AP50 with the defect-free
    images left out (the gap to AP50 is false alarms on good parts) and the box-recall ceiling
    (instances that no kept detection localises at IoU 0.5, whatever the scores). The false-alarm
    rate is also given on the good parts outside the calibration share, the ones a calibrated
    threshold was not chosen on."""
    defective = set(defect_ids)
    unseen_free = [i for i in free_ids if not is_calibration_image(i)]
    ap_defect = evaluate_ap50(
        {i: gt[i] for i in defective}, [p for p in preds if p.image_id in defective], classes
    )
    return {
        **evaluate_ap50(gt, preds, classes),
        "false_alarm_rate": false_alarm_rate(preds, free_ids, threshold),
        "false_alarm_rate_outside_calibration": false_alarm_rate(preds, unseen_free, threshold),
        "image_recall": image_recall(preds, defect_ids, threshold),
        "ap50_defect_images_only": ap_defect["mean"],
        "box_recall_ceiling": box_recall_ceiling(gt, preds),
    }


def evaluate_seed(
    predictor: TorchPredictor | None,
    ds: DefectDataset,
    classes: Sequence[str],
    seed: int,
    settings: EvalSettings,
    progress: bool = True,
) -> dict:
    by_id = {r.image_id: r for r in ds.records}
    split = split_prompts(ds.records, classes, settings.prompts_per_class, seed)
    material = {c: prompt_material(ds, split.prompts[c], c, by_id) for c in classes}
    inputs = prompt_inputs(predictor, material) if predictor is not None else None
    gt: dict[str, tuple[int, int, list[Instance]]] = {}
    model_preds: list[Prediction] = []
    base_preds: list[Prediction] = []
    matcher = TemplateMatcher(material) if settings.baseline else None
    model_time = base_time = 0.0
    queries = split.queries
    for start in tqdm(
        range(0, len(queries), settings.batch_size), disable=not progress, desc=f"seed {seed}"
    ):
        ids = queries[start : start + settings.batch_size]
        loaded = [ds.load(by_id[i]) for i in ids]
        for image_id, (image, inst) in zip(ids, loaded, strict=True):
            gt[image_id] = (
                image.shape[0],
                image.shape[1],
                [x for x in inst if x.class_name in classes],
            )
        dets = []
        if predictor is not None:
            t0 = time.perf_counter()
            assert inputs is not None
            dets = predictor.detect(
                [im for im, _ in loaded],
                inputs.prototypes,
                AP_SCORE_FLOOR,
                class_sides=inputs.sides,
                class_crops=inputs.crops,
                proposal_classes=inputs.proposal_classes,
                detection_weights=inputs.detection_weights,
            )
            model_time += time.perf_counter() - t0
        for image_id, det in zip(ids, dets, strict=False):
            for j in range(len(det)):
                model_preds.append(
                    Prediction(
                        image_id,
                        classes[det.class_index[j]],
                        float(det.scores[j]),
                        det.boxes[j],
                        det.masks[j],
                    )
                )
        if matcher is not None:
            t0 = time.perf_counter()
            for image_id, (image, _) in zip(ids, loaded, strict=True):
                base_preds.extend(matcher.predict(image_id, image))
            base_time += time.perf_counter() - t0
    free = [i for i in queries if not gt[i][2]]
    defect = [i for i in queries if gt[i][2]]
    result: dict = {"seed": seed, "prompts": split.prompts, "queries": len(queries)}
    if predictor is not None:
        result["model"] = {
            **_summary(gt, model_preds, list(classes), free, defect, predictor.score_threshold),
            "images_per_s": len(queries) / max(model_time, 1e-9),
        }
        if inputs is not None and inputs.outlines is not None:
            assert inputs.proposal_classes is not None
            result["model"]["outline"] = {
                c: round(float(v), 4) for c, v in zip(classes, inputs.outlines, strict=True)
            }
            assert inputs.detection_weights is not None
            result["model"]["detection_weights"] = {
                c: round(float(v), 4)
                for c, v in zip(classes, inputs.detection_weights, strict=True)
                if v < 1
            }
            result["model"]["proposals_for"] = [
                c for c, on in zip(classes, inputs.proposal_classes, strict=True) if on
            ]
    if matcher is not None:
        base_thr = matcher.config.min_score
        result["baseline"] = {
            **_summary(gt, base_preds, list(classes), free, defect, base_thr),
            "images_per_s": len(queries) / max(base_time, 1e-9),
        }
    return result


def _mean_over_seeds(runs: list[dict], key: str, classes: Sequence[str]) -> dict:
    parts = [r[key] for r in runs]
    per_class = {
        c: {
            "ap50_box": float(np.nanmean([p["per_class"][c]["ap50_box"] for p in parts])),
            "ap50_mask": float(np.nanmean([p["per_class"][c]["ap50_mask"] for p in parts])),
            "images": int(np.mean([p["per_class"][c]["images"] for p in parts])),
        }
        for c in classes
    }

    def mean_ap(field: str) -> dict:
        return {
            m: float(np.nanmean([p[field][m] for p in parts])) for m in ("ap50_box", "ap50_mask")
        }

    rates = {
        k: float(np.mean([p[k] for p in parts]))
        for k in (
            "false_alarm_rate",
            "false_alarm_rate_outside_calibration",
            "image_recall",
            "images_per_s",
            "box_recall_ceiling",
        )
    }
    return {
        "per_class": per_class,
        "mean": mean_ap("mean"),
        "ap50_defect_images_only": mean_ap("ap50_defect_images_only"),
        **rates,
    }


def evaluate(
    predictor: TorchPredictor, ds: DefectDataset, settings: EvalSettings, progress: bool = True
) -> dict:
    """The full report (REPORT.json's content)."""
    classes = list(settings.classes or ds.class_names)
    unknown = set(classes) - set(ds.class_names)
    if unknown:
        raise ValueError(f"classes {sorted(unknown)} are not in {ds.name}: {ds.class_names}")
    runs = [evaluate_seed(predictor, ds, classes, s, settings, progress) for s in settings.seeds]
    report = {
        **_mean_over_seeds(runs, "model", classes),
        "settings": {
            **asdict(settings),
            "classes": classes,
            "dataset": ds.name,
            "score_threshold": predictor.score_threshold,
            "size_prior_sigma": predictor.info.size_prior_sigma,
            "mask_hull_min_fill": predictor.info.mask_hull_min_fill,
            "mask_score_weight": predictor.info.mask_score_weight,
            "template_match_weight": predictor.info.template_match_weight,
            "border_factor": predictor.info.border_factor,
            "template_proposal_score": predictor.info.template_proposal_score,
            "proposal_gate_iou": predictor.info.proposal_gate_iou,
            "prompt_views": predictor.info.prompt_views,
            "image_views": predictor.info.image_views,
            "model_fingerprint": predictor.fingerprint,
        },
        "runs": runs,
    }
    if settings.baseline:
        report["baseline"] = _mean_over_seeds(runs, "baseline", classes)
    return report


def evaluate_baseline(ds: DefectDataset, settings: EvalSettings, progress: bool = True) -> dict:
    """The template-matching baseline alone, on the same prompt splits as `evaluate`.

    It depends on the data, the classes and the prompt seeds only, never on a model, so an
    experiment that trains several models on one split scores the baseline once and reuses it.
    """
    classes = list(settings.classes or ds.class_names)
    settings = replace(settings, baseline=True)
    runs = [evaluate_seed(None, ds, classes, s, settings, progress) for s in settings.seeds]
    return {
        **_mean_over_seeds(runs, "baseline", classes),
        "settings": {**asdict(settings), "classes": classes, "dataset": ds.name},
        "runs": [{k: r[k] for k in ("seed", "prompts", "queries", "baseline")} for r in runs],
    }
