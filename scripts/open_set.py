"""The open-set experiment of the paper (4.1.2) on one dataset: for each class-split seed, hold one
class out of training, train on the rest (plus the extra datasets and synthetic defects), evaluate
on the held-out class under three prompt seeds; report the mean of the 3 x 3 runs.

    python scripts/open_set.py --data ../shared/datasets/magnetic_tile --out runs/open_set

`--extra-data` adds other training datasets; NEU-Seg was measured that way and left out (it made
no measurable difference to the held-out magnetic-tile classes: models/RESULTS.md, sessions 17-18).

Every stage resumes: a finished split is skipped, an interrupted training continues.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.config import get_preset
from models.data.loading import load_dataset
from models.evaluation.protocol import holdout_class
from models.evaluation.report_json import report_json
from models.evaluation.runner import EvalSettings, evaluate, evaluate_baseline
from models.predictor import TorchPredictor
from models.training.sources import open_sources
from models.training.trainer import TrainConfig, Trainer


def run_split(args: argparse.Namespace, seed: int) -> dict:
    out = Path(args.out) / f"split{seed}"
    report_path = out / "eval.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        if "baseline" not in report and not args.no_baseline:  # scored earlier with --no-baseline
            settings = EvalSettings(classes=(report["held_out"],), seeds=tuple(args.prompt_seeds))
            add_baseline(report, split_baseline(args, out, settings))
            report_path.write_text(report_json(report))
        return report
    held = holdout_class(load_dataset(args.data).class_names, seed)
    model_path = out / "model.pt"
    if not model_path.exists():
        cfg = TrainConfig(steps=args.steps, threads=args.threads, seed=args.train_seed)
        cfg = replace(cfg, episode=replace(cfg.episode, batch_size=args.batch_size))
        model_cfg = get_preset(args.preset, **freeze_override(args.freeze_blocks))
        sources, described = open_sources(
            [args.data, *args.extra_data],
            args.synthetic,
            0.5,
            args.train_seed,
            model_cfg.image_size,
            frozenset({held}),
            args.cutpaste,
            real_defect_free=args.real_defect_free,
        )
        described.append({"held_out_classes": [held], "holdout_seed": seed})
        model_path = Trainer(model_cfg, cfg, sources, out, described).run()
    predictor = TorchPredictor.load(model_path, args.threads)
    settings = EvalSettings(classes=(held,), seeds=tuple(args.prompt_seeds), baseline=False)
    report = evaluate(predictor, load_dataset(args.data), settings)
    report["held_out"] = held
    if not args.no_baseline:
        add_baseline(report, split_baseline(args, out, settings))
    report_path.write_text(report_json(report))
    return report


def freeze_override(blocks: int | None) -> dict:
    return {} if blocks is None else {"freeze_backbone_blocks": blocks}


def split_baseline(args: argparse.Namespace, out: Path, settings: EvalSettings) -> dict:
    """The template baseline of one split, cached in `baseline.json` beside the split's model: it
    does not depend on the model, so retraining a split never pays for it twice."""
    path = out / "baseline.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["settings"]["seeds"] == list(settings.seeds):
            return cached
    report = evaluate_baseline(load_dataset(args.data), settings)
    path.write_text(report_json(report))
    return report


def add_baseline(report: dict, baseline: dict) -> None:
    """Put the baseline's figures beside the model's, per prompt seed and in the mean."""
    by_seed = {run["seed"]: run["baseline"] for run in baseline["runs"]}
    for run in report["runs"]:
        run["baseline"] = by_seed[run["seed"]]
    report["baseline"] = {k: v for k, v in baseline.items() if k not in ("settings", "runs")}
    report["settings"]["baseline"] = True


def main() -> None:
    logging.basicConfig(level=logging.INFO, format='{"level":"%(levelname)s","msg":"%(message)s"}')
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="dataset whose classes are held out in turn")
    p.add_argument("--extra-data", action="append", default=[], help="more training datasets")
    p.add_argument("--out", required=True)
    p.add_argument("--split-seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--prompt-seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--synthetic", type=int, default=20000)
    p.add_argument("--cutpaste", type=int, default=0, help="CutPaste images (train.py --cutpaste)")
    p.add_argument(
        "--real-defect-free",
        action="store_true",
        help="also train on the datasets' defect-free images, the evaluation's good tiles "
        "(train.py --real-defect-free)",
    )
    p.add_argument("--preset", default="small")
    p.add_argument(
        "--freeze-blocks",
        type=int,
        default=None,
        help="EfficientNet blocks to freeze (stem included); default: preset's",
    )
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true")
    args = p.parse_args()
    reports = [run_split(args, s) for s in args.split_seeds]
    runs = [(r["held_out"], run) for r in reports for run in r["runs"]]
    summary = {
        "runs": len(runs),
        "held_out": [r["held_out"] for r in reports],
        "model": {
            m: float(np.mean([run["model"]["mean"][m] for _, run in runs]))
            for m in ("ap50_box", "ap50_mask")
        },
        "per_split": {
            r["held_out"]: {"model": r["mean"], "baseline": r.get("baseline", {}).get("mean")}
            for r in reports
        },
    }
    if not args.no_baseline:
        summary["baseline"] = {
            m: float(np.mean([run["baseline"]["mean"][m] for _, run in runs]))
            for m in ("ap50_box", "ap50_mask")
        }
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
