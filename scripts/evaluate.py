"""Evaluate a model with the InsA exemplar protocol (AP50 box/mask, false alarms, speed) beside
the template-matching baseline.

    python scripts/evaluate.py --data ../shared/datasets/magnetic_tile --out runs/eval.json
    python scripts/evaluate.py --data ../shared/datasets/magnetic_tile --classes Blowhole \
        --model runs/holdout42/model.pt --out runs/holdout42/eval.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.data.loading import load_dataset
from models.evaluation.runner import EvalSettings, evaluate
from models.predictor import TorchPredictor


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
    args = p.parse_args()
    ds = load_dataset(args.data, split=args.split)
    settings = EvalSettings(
        args.prompts_per_class,
        tuple(args.seeds),
        tuple(args.classes) if args.classes else None,
        baseline=not args.no_baseline,
    )
    report = evaluate(TorchPredictor.load(args.model, args.threads), ds, settings)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    summary = {
        "model": report["mean"],
        "false_alarm_rate": report["false_alarm_rate"],
        "image_recall": report["image_recall"],
        "images_per_s": report["images_per_s"],
    }
    if "baseline" in report:
        summary["baseline"] = report["baseline"]["mean"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
