"""Calibrate a model's default score threshold on defect-free images and store it in the file.

    python scripts/calibrate.py --model runs/default/model.pt \
        --data ../shared/datasets/magnetic_tile --target-rate 0.03

`--score-blend W`, `--background-weight B` and `--size-prior-sigma S` first switch the file's
inference score (ModelConfig.relevance_score_weight, background_weight, size_prior_sigma: decoder
probability^(1-W) x token relevance^W x (1 - the token's match to its own image)^B x the
exemplar-size prior of width S, models/size_prior.py), then calibrate the threshold for it;
`--mask-score-weight M` multiplies that score by the mask confidence to the power M
(models/mask_score.py). `--mask-hull-min-fill F` sets the convex filling of compact masks
(models/mask_hull.py; it moves no score). `--template-match-weight T` sets the exemplar check's
exponent (models/template_match.py) and `--template-proposal-score P` the score of exemplar-matched
proposals (models/template_proposals.py), made only for classes whose own exemplars the network
outlines at a mean best IoU below `--proposal-gate-iou G` (models/outline_gate.py; 1: every
class); `--border-factor E` sets the exemplar-border prior
(models/border_prior.py); `--prompt-views V` the flips each exemplar is encoded in
(models/prompt_views.py); `--image-views I` the mirrorings each inspected image is scored in
(models/view_fusion.py). The file's fingerprint changes with them.

The threshold is the score exceeded by at most TARGET_RATE of the calibration images (a fixed
30% hash-chosen share of the defect-free images) with every class of the dataset prompted.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from models.checkpoint import set_scoring, update_meta
from models.config import ModelConfig
from models.data.loading import load_dataset
from models.evaluation.calibration import calibrate
from models.predictor import TorchPredictor

# command-line flag -> the model-file inference setting it sets (ModelConfig field)
SCORING_FLAGS = {
    "score_blend": "relevance_score_weight",
    "background_weight": "background_weight",
    "size_prior_sigma": "size_prior_sigma",
    "mask_hull_min_fill": "mask_hull_min_fill",
    "mask_score_weight": "mask_score_weight",
    "template_match_weight": "template_match_weight",
    "template_proposal_score": "template_proposal_score",
    "proposal_gate_iou": "proposal_gate_iou",
    "border_factor": "border_factor",
    "prompt_views": "prompt_views",
    "image_views": "image_views",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model",
        required=True,
        help="model file to calibrate and rewrite (no default: the embedded model is never "
        "rewritten by accident; copy it first)",
    )
    p.add_argument("--data", required=True, help="dataset with defect-free images")
    p.add_argument("--target-rate", type=float, default=0.03)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--score-blend", type=float, default=None, help="set the score blend W first")
    p.add_argument(
        "--background-weight", type=float, default=None, help="set the background weight B first"
    )
    p.add_argument(
        "--size-prior-sigma", type=float, default=None, help="set the size prior width S first"
    )
    p.add_argument(
        "--mask-hull-min-fill", type=float, default=None, help="set the mask hull fill F first"
    )
    p.add_argument(
        "--mask-score-weight", type=float, default=None, help="set the mask score weight M first"
    )
    p.add_argument(
        "--template-match-weight", type=float, default=None, help="set the template check T first"
    )
    p.add_argument(
        "--template-proposal-score",
        type=float,
        default=None,
        help="set the exemplar-matched proposals' score P first",
    )
    p.add_argument(
        "--proposal-gate-iou",
        type=float,
        default=None,
        help="set the outline below which a class gets proposals, G, first",
    )
    p.add_argument(
        "--border-factor", type=float, default=None, help="set the exemplar-border prior E first"
    )
    p.add_argument(
        "--prompt-views",
        type=int,
        default=None,
        help="set the flips each exemplar is encoded in, V (1, 2, 4 or 8), first",
    )
    p.add_argument(
        "--image-views",
        type=int,
        default=None,
        help="set the mirrorings each inspected image is scored in, I (1, 2 or 4), first",
    )
    p.add_argument("--dry-run", action="store_true", help="print, do not write the model file")
    args = p.parse_args()
    scoring: dict[str, float | int] = {}
    for flag, field in SCORING_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        try:  # the config owns each field's valid range
            ModelConfig(**{field: value})
        except ValueError as exc:
            p.error(f"--{flag.replace('_', '-')}: {exc}")
        scoring[field] = value
    ds = load_dataset(args.data)
    predictor = TorchPredictor.load(args.model)
    predictor.model.relevance_weight = scoring.get(  # score as the rewritten file will
        "relevance_score_weight", predictor.model.relevance_weight
    )
    predictor.model.background_weight = scoring.get(
        "background_weight", predictor.model.background_weight
    )
    predictor.backend.info = replace(
        predictor.info,
        size_prior_sigma=scoring.get("size_prior_sigma", predictor.info.size_prior_sigma),
        mask_score_weight=scoring.get("mask_score_weight", predictor.info.mask_score_weight),
        template_match_weight=scoring.get(
            "template_match_weight", predictor.info.template_match_weight
        ),
        template_proposal_score=scoring.get(
            "template_proposal_score", predictor.info.template_proposal_score
        ),
        proposal_gate_iou=scoring.get("proposal_gate_iou", predictor.info.proposal_gate_iou),
        border_factor=scoring.get("border_factor", predictor.info.border_factor),
        prompt_views=int(scoring.get("prompt_views", predictor.info.prompt_views)),
        image_views=int(scoring.get("image_views", predictor.info.image_views)),
    )
    info = calibrate(predictor, ds, args.seeds, args.target_rate)
    if not args.dry_run:
        if scoring:
            print(json.dumps({"fingerprint": set_scoring(args.model, **scoring)}))
        update_meta(args.model, **info)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
