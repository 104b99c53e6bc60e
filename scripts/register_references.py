"""Register defect-free reference images of a namespace (anomaly mode) in the prompt store.

    python scripts/register_references.py --images ../shared/datasets/magnetic_tile/Free \
        --suffixes .jpg --limit 200 --seed 42 --namespace tiles --redis-url redis://127.0.0.1:6379/0
    python scripts/register_references.py --images good/*.png --namespace line3 --dry-run

The same records as POST /v1/namespaces/{ns}/references, written in atomic batches. The feature
extractor is configured from the service's INSPECT_ANOMALY_* settings (and INSPECT_MODEL_PATH or
--model for the namespace's model), so run it with the service's environment. Re-running resumes:
images already registered (content-hash ids) are skipped before any feature work. Prints a JSON
summary; exit code 2 when refused, 130 when interrupted. Thin command over
models/anomaly/registration.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import numpy as np

from models.anomaly.registration import DEFAULT_SUFFIXES, find_images, register_references

EXIT_OK, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="register_references.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--namespace", required=True)
    p.add_argument("--redis-url", default=None, help="default: INSPECT_REDIS_URL or local")
    p.add_argument("--model", default=None, help="the service's model file (default: embedded)")
    p.add_argument("--suffixes", default=",".join(DEFAULT_SUFFIXES), help="for folders")
    p.add_argument("--limit", type=int, default=None, help="at most this many (seeded draw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--author", default="register_references")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--dry-run", action="store_true", help="read the store, write nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from models.anomaly.features import FeatureConfig, PatchFeatureExtractor
    from models.checkpoint import load_model
    from models.runtime.select import DEFAULT_MODEL_PATH
    from prompt_store.errors import InvalidInput, StoreError
    from prompt_store.redis_store import RedisPromptStore
    from prompt_store.settings import StoreSettings
    from service.settings import ServiceSettings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        files = find_images(args.images, [s for s in args.suffixes.split(",") if s])
    except FileNotFoundError as exc:
        print(f"register_references: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.limit is not None and args.limit < len(files):
        rng = np.random.default_rng(args.seed)
        files = [files[i] for i in sorted(rng.choice(len(files), args.limit, replace=False))]
    settings = ServiceSettings()
    model_file = load_model(args.model or settings.model_path or DEFAULT_MODEL_PATH)
    config = FeatureConfig(settings.anomaly_backbone, settings.anomaly_image_size)
    if config.source == "model":
        extractor = PatchFeatureExtractor.from_model_file(model_file, config)
    else:
        extractor = PatchFeatureExtractor.imagenet(config)
    store_settings = StoreSettings(url=args.redis_url) if args.redis_url else StoreSettings()
    store = RedisPromptStore.from_settings(store_settings)
    try:
        report = register_references(
            files,
            args.namespace,
            store,
            extractor,
            model_file.fingerprint,
            model_file.config.embed_dim,
            per_reference=settings.anomaly_patches_per_reference,
            max_references=settings.anomaly_max_references,
            batch_size=args.batch_size,
            author=args.author,
            dry_run=args.dry_run,
            max_image_bytes=settings.max_image_bytes,
        )
    except (InvalidInput, StoreError) as exc:
        print(f"register_references: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("register_references: interrupted; re-run to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        store.close()
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
