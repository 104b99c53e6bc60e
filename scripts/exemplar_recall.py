"""How many of each class's prompt instances the model finds again in their own prompt images, with
the evaluation's prompts (scripts/evaluate.py: the InsA draw, K per class, every class prompted
together). A class the model misses there is one it does not outline at all
(models/evaluation/exemplar_recall.py).

    python scripts/exemplar_recall.py --data ../shared/datasets/magnetic_tile \
        --model runs/open_set/split777/model.pt --classes Uneven

Prints, per prompt seed and class, the exemplars found at IoU 0.5 out of all; `--out` also writes
every exemplar's best IoU as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder dataset or COCO json")
    p.add_argument("--model", default=None, help="model file (default: the embedded model)")
    p.add_argument("--prompts-per-class", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 82, 777])
    p.add_argument("--classes", nargs="+", default=None, help="default: every class")
    p.add_argument("--split", default=None, help="COCO image split to use (e.g. test)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON report to write")
    args = p.parse_args()

    from models.data.loading import load_dataset
    from models.evaluation.exemplar_recall import exemplar_recall
    from models.evaluation.protocol import split_prompts
    from models.evaluation.runner import prompt_material
    from models.predictor import TorchPredictor

    ds = load_dataset(args.data, split=args.split)
    classes = args.classes or list(ds.class_names)
    unknown = sorted(set(classes) - set(ds.class_names))
    if unknown:  # before the model loads: a typo costs no wait
        p.error(f"classes not in {args.data}: {unknown}; it has {list(ds.class_names)}")
    predictor = TorchPredictor.load(args.model, args.threads)
    by_id = {r.image_id: r for r in ds.records}
    report: dict = {"model": predictor.fingerprint, "classes": classes, "seeds": {}}
    for seed in args.seeds:
        split = split_prompts(ds.records, classes, args.prompts_per_class, seed)
        material = {c: prompt_material(ds, split.prompts[c], c, by_id) for c in classes}
        found = exemplar_recall(predictor, material)
        report["seeds"][str(seed)] = {c: asdict(r) for c, r in found.items()}
        for c, r in found.items():
            print(
                f"seed {seed}  {c}: {r.found} of {r.total} exemplars found, outline {r.outline:.2f}"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
