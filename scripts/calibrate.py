"""Calibrate a model's default score threshold on defect-free images and store it in the file.

    python scripts/calibrate.py --model runs/default/model.pt \
        --data ../shared/datasets/magnetic_tile --target-rate 0.03

`--score-blend W` first switches the file to blended scores (ModelConfig.relevance_score_weight:
decoder probability^(1-W) x token relevance^W), then calibrates the threshold for them; the file's
fingerprint changes with it.

The threshold is the score exceeded by at most TARGET_RATE of the calibration images (a fixed
30% hash-chosen share of the defect-free images) with every class of the dataset prompted.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from models.checkpoint import set_score_blend, update_meta
from models.data.loading import load_dataset
from models.evaluation.calibration import CALIBRATION_SHARE, max_scores, threshold_for
from models.predictor import TorchPredictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="dataset with defect-free images")
    p.add_argument("--target-rate", type=float, default=0.03)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--score-blend", type=float, default=None, help="set the score blend W first")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the model file")
    args = p.parse_args()
    if args.score_blend is not None and not 0 <= args.score_blend <= 1:
        p.error("--score-blend must lie in [0, 1]")
    ds = load_dataset(args.data)
    predictor = TorchPredictor.load(args.model)
    if args.score_blend is not None:
        predictor.model.relevance_weight = args.score_blend  # score as the rewritten file will
    scores = max_scores(predictor, ds, args.seeds)
    thr = threshold_for(scores, args.target_rate)
    info = {
        "score_threshold": thr,
        "calibration": {
            "dataset": ds.name,
            "images": int(len(scores) // len(args.seeds)),
            "seeds": args.seeds,
            "share": CALIBRATION_SHARE,
            "target_rate": args.target_rate,
            "score_quantiles": {q: float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.95, 0.99)},
        },
    }
    if not args.dry_run:
        if args.score_blend is not None:
            print(json.dumps({"fingerprint": set_score_blend(args.model, args.score_blend)}))
        update_meta(args.model, **info)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
