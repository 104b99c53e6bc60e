"""Encode a dataset's exemplars with the prompt encoder and write them to the prompt store.

    python scripts/extract_prompts.py --data ../shared/datasets/magnetic_tile --namespace tiles \
        --per-class 5 --redis-url redis://127.0.0.1:6379/0
    python scripts/extract_prompts.py --data coco/annotations.json --split train \
        --namespace line3 --classes scratch dent --model runs/default/model.pt --dry-run

Per class, up to --per-class images that show the class alone (seeded draw, --seed), every
instance in them one exemplar. Re-running resumes (stored exemplars are skipped before encoding).
Prints a JSON summary; exit code 2 when refused (the message says what to do), 130 when
interrupted. Thin command over models/prompt_extraction.py.
"""

from __future__ import annotations

import sys

from models.prompt_extraction import main

if __name__ == "__main__":
    sys.exit(main())
