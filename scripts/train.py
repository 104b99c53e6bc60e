"""Train UniSpector (thin command over models.training).

The embedded default model (about 40 minutes on a 2-core CPU):
    python scripts/train.py --out runs/default --steps 3000 \
        --data ../shared/datasets/magnetic_tile --data ../shared/datasets/neu_seg/annotations.json

An open-set run that holds one magnetic-tile class out (chosen by the class-split seed; NEU-Seg
helps the default model but not the held-out classes, so the open-set recipe leaves it out:
models/RESULTS.md):
    python scripts/train.py --out runs/holdout42 --holdout-seed 42 --steps 2000 \
        --data ../shared/datasets/magnetic_tile

With no class held out, the trained file's default score threshold is then calibrated on the first
--data dataset's defect-free images (as scripts/calibrate.py does; --no-calibrate skips it), so the
first command above is the whole recipe of the embedded default. Re-running the same command
resumes from `OUT/last.pt`. The paper-sized model on a GPU:
    python scripts/train.py --preset paper --out runs/paper --data ...
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from models.checkpoint import update_meta
from models.config import get_preset
from models.data.loading import load_dataset
from models.evaluation.calibration import calibrate, calibration_images
from models.evaluation.protocol import holdout_class
from models.predictor import TorchPredictor
from models.training.episodes import EpisodeConfig
from models.training.sources import open_sources
from models.training.trainer import TrainConfig, Trainer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (checkpoints, config, model.pt)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="folder dataset or COCO json, optionally PATH@WEIGHT; repeatable",
    )
    p.add_argument("--preset", default="small", help="model preset: small | paper")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=EpisodeConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument(
        "--freeze-blocks",
        type=int,
        default=None,
        help="EfficientNet blocks to freeze (stem included); default: preset's",
    )
    p.add_argument("--synthetic", type=int, default=20000, help="synthetic images (0: none)")
    p.add_argument("--synthetic-weight", type=float, default=0.5)
    p.add_argument(
        "--cutpaste",
        type=int,
        default=0,
        help="CutPaste images cut from the real datasets' own images (models/data/cutpaste.py)",
    )
    p.add_argument("--cutpaste-weight", type=float, default=0.5)
    p.add_argument(
        "--real-defect-free",
        action="store_true",
        help="also train on the --data datasets' defect-free images (left out by default: an "
        "evaluation on the same dataset would then count false alarms on training images)",
    )
    p.add_argument(
        "--holdout-seed",
        type=int,
        default=None,
        help="hold one class of the first --data dataset out (open-set evaluation)",
    )
    p.add_argument("--exclude-class", action="append", default=[], help="hold out a named class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="leave the default threshold uncalibrated (it is set by default, with no class held "
        "out, on the first --data dataset's defect-free images, as scripts/calibrate.py does)",
    )
    return p.parse_args()


def calibrate_final(path: Path, data: str, threads: int) -> None:
    """Write the default threshold into the trained file, calibrated on the defect-free images of
    `data` (`models/evaluation/calibration.py`); a dataset without any leaves it unset."""
    ds = load_dataset(data.partition("@")[0])
    if not calibration_images(ds.records):
        why = f"{ds.name} has no defect-free images; calibrate on the line's good parts instead"
        why += " (scripts/calibrate.py)"
        print(json.dumps({"event": "calibration skipped", "why": why}))
        return
    info = calibrate(TorchPredictor.load(path, threads), ds)
    update_meta(path, **info)
    print(json.dumps({"event": "calibrated", **info}))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format='{"level":"%(levelname)s","msg":"%(message)s"}')
    args = parse_args()
    overrides = {} if args.freeze_blocks is None else {"freeze_backbone_blocks": args.freeze_blocks}
    model_cfg = get_preset(args.preset, **overrides)
    exclude = set(args.exclude_class)
    if args.holdout_seed is not None:
        first = load_dataset(args.data[0].partition("@")[0])
        exclude.add(holdout_class(first.class_names, args.holdout_seed))
    cfg = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
    )
    cfg = replace(cfg, episode=replace(cfg.episode, batch_size=args.batch_size))
    sources, described = open_sources(
        args.data,
        args.synthetic,
        args.synthetic_weight,
        args.seed,
        model_cfg.image_size,
        frozenset(exclude),
        args.cutpaste,
        args.cutpaste_weight,
        real_defect_free=args.real_defect_free,
    )
    described.append({"held_out_classes": sorted(exclude), "holdout_seed": args.holdout_seed})
    print(json.dumps({"event": "start", "sources": described}))
    trainer = Trainer(model_cfg, cfg, sources, args.out, described)
    final = trainer.run()
    if not (args.no_calibrate or exclude) and args.data:
        calibrate_final(final, args.data[0], args.threads)
    print(json.dumps({"event": "done", "model": str(final), "steps": trainer.step}))


if __name__ == "__main__":
    main()
