"""Evaluate a model with the InsA exemplar protocol (AP50 box/mask, false alarms, speed) beside
the template-matching baseline.

    python scripts/evaluate.py --data ../shared/datasets/magnetic_tile --out runs/eval.json
    python scripts/evaluate.py --data ../shared/datasets/magnetic_tile --classes Blowhole \
        --model runs/holdout42/model.pt --out runs/holdout42/eval.json

Anomaly mode (reference-based, prompt-free): image AUROC, pixel AUROC, AUPRO (FPR <= 0.3), pixel
AP / F1-max and the false-reject rate at the threshold calibrated from the references, with
--references defect-free images drawn from `Free` and every other image as a query
(models/evaluation/anomaly_runner.py):

    python scripts/evaluate.py --anomaly --data ../shared/datasets/magnetic_tile \
        --out runs/anomaly_eval.json --references 200 --seeds 42
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.data.loading import load_dataset
from models.evaluation.report_json import report_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder dataset or COCO json")
    p.add_argument("--out", required=True, help="REPORT.json to write")
    p.add_argument("--model", default=None, help="model file (default: the embedded model)")
    p.add_argument("--prompts-per-class", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--classes", nargs="+", default=None)
    p.add_argument("--split", default=None, help="COCO image split to use (e.g. test)")
    p.add_argument("--no-baseline", action="store_true", help="skip template matching")
    p.add_argument("--threads", type=int, default=0)
    a = p.add_argument_group("anomaly mode")
    a.add_argument("--anomaly", action="store_true", help="evaluate the anomaly signal instead")
    a.add_argument("--references", type=int, default=200, help="defect-free references per seed")
    a.add_argument("--anomaly-backbone", choices=("imagenet", "model"), default="imagenet")
    a.add_argument("--anomaly-image-size", type=int, default=320)
    a.add_argument("--max-patches", type=int, default=20_000, help="memory bound")
    a.add_argument("--patches-per-reference", type=int, default=400)
    a.add_argument("--calibration-references", type=int, default=64)
    a.add_argument("--quantile", type=float, default=0.99)
    args = p.parse_args()
    ds = load_dataset(args.data, split=args.split)
    if args.anomaly:
        _anomaly(args, ds)
        return
    from models.evaluation.runner import EvalSettings, evaluate
    from models.predictor import TorchPredictor

    settings = EvalSettings(
        args.prompts_per_class,
        tuple(args.seeds),
        tuple(args.classes) if args.classes else None,
        baseline=not args.no_baseline,
    )
    report = evaluate(TorchPredictor.load(args.model, args.threads), ds, settings)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report_json(report))
    summary = {
        "model": report["mean"],
        "false_alarm_rate": report["false_alarm_rate"],
        "false_alarm_rate_outside_calibration": report["false_alarm_rate_outside_calibration"],
        "image_recall": report["image_recall"],
        "images_per_s": report["images_per_s"],
        "ap50_defect_images_only": report["ap50_defect_images_only"],
        "box_recall_ceiling": report["box_recall_ceiling"],
    }
    if "baseline" in report:
        summary["baseline"] = report["baseline"]["mean"]
    print(report_json(summary))


def _anomaly(args: argparse.Namespace, ds) -> None:
    import torch

    from models.anomaly.features import FeatureConfig, PatchFeatureExtractor
    from models.evaluation.anomaly_runner import PUBLISHED, AnomalyEvalSettings, evaluate_anomaly

    if args.threads:
        torch.set_num_threads(args.threads)
    features = FeatureConfig(args.anomaly_backbone, args.anomaly_image_size)
    settings = AnomalyEvalSettings(
        references=args.references,
        seeds=tuple(args.seeds),
        features=features,
        patches_per_reference=args.patches_per_reference,
        max_patches=args.max_patches,
        calibration_references=args.calibration_references,
        quantile=args.quantile,
    )
    extractor = PatchFeatureExtractor.build(features, args.model)
    report = evaluate_anomaly(extractor, ds, settings)
    report["published_for_comparison"] = PUBLISHED
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report_json(report))
    keys = ("image_auroc", "pixel_auroc", "aupro_0.3", "pixel_ap", "pixel_f1_max")
    keys += ("false_reject_rate", "false_reject_rate_verdict", "detection_rate")
    print(report_json({k: report[k] for k in keys}))


if __name__ == "__main__":
    main()
