"""Offline prompt extraction: encode a dataset's exemplars and register them in the prompt store.

Which exemplars: for every class, up to K prompt images drawn (seeded, per class) from the images
that show that class alone (the InsA prompt rule of models/evaluation/protocol.py); every instance
of the class in such an image is one exemplar, its region being the instance box and its mask as
COCO compressed RLE. Defect-free and multi-class images are never prompts.

Resuming: exemplar ids are content hashes of (source image bytes, region, class)
(`prompt_store.records.exemplar_id`), so the ids of a planned exemplar are known before any model
work. Ids already in the namespace are skipped before encoding, and an interrupted run re-run with
the same arguments finishes the job without duplicates. An image whose exemplars are partly stored
is re-encoded whole (one call, as on a clean run) so that a resumed job stores bit-identical
embeddings; only its missing exemplars are written.

Stored source image: the original file bytes when the dataset reader knows the file (folder and
COCO readers), else a lossless PNG of the decoded pixels. Either way the store can re-encode the
exemplar from what it keeps (re-extraction for a new model).

`main` is the command line (scripts/extract_prompts.py is a thin wrapper over it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from models.data.records import DefectDataset, Instance, Record
from models.evaluation.protocol import draw_prompts
from models.predictor import PromptRegion, TorchPredictor
from prompt_store.base import PromptStore
from prompt_store.errors import InvalidInput, ModelMismatch, NotFound, StoreError
from prompt_store.records import (
    MAX_NOTE_CHARS,
    NewExemplar,
    Region,
    exemplar_id,
    image_hash,
    validate_label,
    validate_namespace,
)
from prompt_store.settings import DEFAULT_MAX_IMAGE_BYTES

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130
DEFAULT_AUTHOR = "extract_prompts"
DEFAULT_BATCH_SIZE = 64


class ExtractionRefused(Exception):
    """A precondition failed; the message (one line) says what to do. The CLI exits with 2."""


@dataclass(frozen=True)
class ExtractionSettings:
    """What to extract and how to write it."""

    namespace: str
    per_class: int | None = None  # prompt images per class; None: every single-class image
    seed: int = 0
    classes: tuple[str, ...] | None = None  # None: every class of the dataset
    batch_size: int = DEFAULT_BATCH_SIZE  # exemplars per add_exemplars call
    author: str = DEFAULT_AUTHOR
    dry_run: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # the store's limit on source images
    source: str = ""  # shown in notes: where the dataset came from (its path)

    def __post_init__(self) -> None:
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {self.per_class}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")


@dataclass
class ClassReport:
    """Per-class outcome (exemplars_written counts would-be writes in a dry run)."""

    images: int = 0
    exemplars_written: int = 0
    exemplars_skipped: int = 0  # already in the store (before encoding, or raced in)


@dataclass
class ExtractionReport:
    """What a run did; `to_json` is the summary the CLI prints."""

    namespace: str
    dataset: str
    fingerprint: str = ""
    dry_run: bool = False
    classes: dict[str, ClassReport] = field(default_factory=dict)
    version: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    images_skipped: list[str] = field(default_factory=list)  # too large to store
    would_write: list[dict[str, Any]] = field(default_factory=list)  # dry run only

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "dataset": self.dataset,
            "model_fingerprint": self.fingerprint,
            "dry_run": self.dry_run,
            "classes": {
                name: {
                    "exemplars_written": c.exemplars_written,
                    "exemplars_skipped": c.exemplars_skipped,
                    "images": c.images,
                }
                for name, c in sorted(self.classes.items())
            },
            "exemplars_written": sum(c.exemplars_written for c in self.classes.values()),
            "exemplars_skipped": sum(c.exemplars_skipped for c in self.classes.values()),
            "version": self.version,
            "seconds": round(self.seconds, 3),
        }
        if self.interrupted:
            out["interrupted"] = True
        if self.images_skipped:
            out["images_skipped"] = list(self.images_skipped)
        if self.dry_run:
            out["would_write"] = list(self.would_write)
        return out


@dataclass(frozen=True)
class PlannedExemplar:
    """One instance of a prompt image, with the id it has (or will have) in the store."""

    class_name: str
    instance: Instance
    region: Region
    id: str


# ----------------------------------------------------------------------------------------------
# pure helpers


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool (H, W) mask, counts as an ASCII str (the store's form)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
    }


def region_of(instance: Instance) -> Region:
    """The store region of a dataset instance: its xyxy box and its mask as RLE."""
    box = tuple(float(v) for v in np.asarray(instance.box, dtype=np.float32))
    return Region(box=box, mask_rle=mask_to_rle(instance.mask))  # type: ignore[arg-type]


def _class_seed(seed: int, class_name: str) -> list[int]:
    """Per-class generator seed: a class's draw does not depend on which other classes run."""
    digest = hashlib.sha256(class_name.encode("utf-8")).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def select_prompt_images(
    records: Sequence[Record],
    classes: Sequence[str],
    per_class: int | None = None,
    seed: int = 0,
) -> dict[str, list[Record]]:
    """Per class, up to `per_class` records (all if None) that contain that class alone.

    Drawn as the evaluation protocol draws prompts (from the candidates sorted by image id,
    returned in id order), with one generator per (seed, class). Classes without any
    single-class image are left out with a warning.
    """
    by_id = {r.image_id: r for r in records}
    chosen: dict[str, list[Record]] = {}
    for name in sorted(set(classes)):
        available = sum(r.classes == (name,) for r in records)
        if available == 0:
            logger.warning(
                "class %r has no image that shows it alone; no exemplars extracted for it", name
            )
            continue
        count = available if per_class is None else per_class
        rng = np.random.default_rng(_class_seed(seed, name))
        chosen[name] = [by_id[i] for i in draw_prompts(rng, records, name, count)]
    return chosen


def source_image_bytes(dataset: DefectDataset, record: Record, image: np.ndarray) -> bytes:
    """The encoded image to keep in the store: the original file when the reader exposes it.

    Folder and COCO readers expose `image_path(record)`; any other reader (the synthetic one) gets
    a lossless PNG of the decoded RGB pixels instead.
    """
    locate = getattr(dataset, "image_path", None)
    path = locate(record) if callable(locate) else None
    if path is not None and Path(path).is_file():
        return Path(path).read_bytes()
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image {record.image_id} as PNG")
    return buffer.tobytes()


def _note(dataset: DefectDataset, source: str, image_id: str) -> str:
    where = f"{dataset.name} ({source})" if source else dataset.name
    note = f"extract_prompts: dataset {where}, image {image_id}"
    note = "".join(ch if ch.isprintable() else "?" for ch in note)
    return note[:MAX_NOTE_CHARS]


# ----------------------------------------------------------------------------------------------
# the job


class PromptExtractor:
    """Plans, encodes and writes; `report` is kept up to date so an interrupt can print it."""

    def __init__(
        self,
        dataset: DefectDataset,
        predictor: Any,  # TorchPredictor or anything with fingerprint, embed_dim, encode_prompts
        store: PromptStore,
        settings: ExtractionSettings,
    ) -> None:
        self.dataset = dataset
        self.predictor = predictor
        self.store = store
        self.settings = settings
        self.report = ExtractionReport(
            namespace=settings.namespace,
            dataset=settings.source or dataset.name,
            fingerprint=predictor.fingerprint,
            dry_run=settings.dry_run,
        )
        self._pending: list[NewExemplar] = []

    # ---- checks ---------------------------------------------------------------------------------

    def plan(self) -> dict[str, list[Record]]:
        """The prompt images per class; refuses unknown or unpromptable requested classes."""
        s = self.settings
        try:
            validate_namespace(s.namespace)
            validate_label(s.author, "author")
        except InvalidInput as exc:
            raise ExtractionRefused(str(exc)) from exc
        known = list(self.dataset.class_names)
        if s.classes is not None:
            missing = sorted(set(s.classes) - set(known))
            if missing:
                raise ExtractionRefused(
                    f"class(es) {', '.join(map(repr, missing))} not in dataset "
                    f"{self.dataset.name!r} (it has: {', '.join(known) or 'no classes'}); "
                    "fix --classes"
                )
        wanted = sorted(set(s.classes if s.classes is not None else known))
        for name in wanted:
            try:
                validate_label(name, "class name")
            except InvalidInput as exc:
                raise ExtractionRefused(
                    f"{exc}; rename that class in the dataset or leave it out with --classes"
                ) from exc
        chosen = select_prompt_images(self.dataset.records, wanted, s.per_class, s.seed)
        if s.classes is not None:
            unpromptable = [name for name in wanted if name not in chosen]
            if unpromptable:
                raise ExtractionRefused(
                    f"class(es) {', '.join(map(repr, unpromptable))} have no image that shows "
                    "them alone, so they cannot be prompted; leave them out of --classes"
                )
        if not chosen:
            raise ExtractionRefused(
                f"dataset {self.dataset.name!r} has no single-class defect image to extract"
            )
        return chosen

    def existing_ids(self) -> set[str]:
        """Ids already stored; checks (and outside a dry run creates) the namespace first.

        Reading before creating means a re-run of a finished job writes nothing at all, and a
        namespace of another model is refused before any model work.
        """
        s, fp, dim = self.settings, self.predictor.fingerprint, self.predictor.embed_dim
        try:
            info = self.store.namespace_info(s.namespace)
        except NotFound:
            if not s.dry_run:
                self.store.create_namespace(s.namespace, fp, dim)
            return set()
        if info.fingerprint != fp or info.embed_dim != dim:
            raise ModelMismatch(s.namespace, info.fingerprint, fp, info.embed_dim, dim)
        return self.store.exemplar_ids(s.namespace)

    # ---- running --------------------------------------------------------------------------------

    def run(self, progress: bool | None = None) -> ExtractionReport:
        """The whole job. progress: True/False forces the bar; None shows it on a terminal."""
        start = time.monotonic()
        try:
            chosen = self.plan()
            for name, records in chosen.items():
                self.report.classes[name] = ClassReport(images=len(records))
            existing = self.existing_ids()
            jobs = [(name, record) for name, records in chosen.items() for record in records]
            bar = tqdm(
                jobs,
                desc=f"extract {self.settings.namespace}",
                unit="img",
                disable=(not progress) if progress is not None else None,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            with bar:
                for name, record in bar:
                    self._process_image(name, record, existing)
                    bar.set_postfix(
                        written=sum(c.exemplars_written for c in self.report.classes.values()),
                        queued=len(self._pending),
                        skipped=sum(c.exemplars_skipped for c in self.report.classes.values()),
                        refresh=False,
                    )
                self._flush(final=True)
            self.report.version = self._current_version()
            return self.report
        finally:
            self.report.seconds = time.monotonic() - start

    def _current_version(self) -> int:
        try:
            return self.store.namespace_info(self.settings.namespace).version
        except NotFound:  # a dry run on a namespace that does not exist yet
            return 0

    def planned_exemplars(
        self, class_name: str, record: Record
    ) -> tuple[np.ndarray, bytes, list[PlannedExemplar]]:
        """Decode one prompt image; its source bytes and every exemplar of the class in it."""
        image, instances = self.dataset.load(record)
        data = source_image_bytes(self.dataset, record, image)
        img_hash = image_hash(data)
        planned = []
        for instance in instances:
            if instance.class_name != class_name:  # cannot happen for single-class images
                continue
            try:
                region = region_of(instance)
            except InvalidInput as exc:
                logger.warning(
                    "skipping an instance of %s: %s",
                    record.image_id,
                    exc,
                    extra={"image_id": record.image_id, "class_name": class_name},
                )
                continue
            eid = exemplar_id(img_hash, region, class_name)
            planned.append(PlannedExemplar(class_name, instance, region, eid))
        return image, data, planned

    def _process_image(self, class_name: str, record: Record, existing: set[str]) -> None:
        counts = self.report.classes[class_name]
        image, data, planned = self.planned_exemplars(class_name, record)
        if not planned:
            logger.warning(
                "prompt image %s has no usable instance of %r",
                record.image_id,
                class_name,
                extra={"image_id": record.image_id, "class_name": class_name},
            )
            return
        todo = [i for i, p in enumerate(planned) if p.id not in existing]
        counts.exemplars_skipped += len(planned) - len(todo)
        if not todo:
            return
        if len(data) > self.settings.max_image_bytes:
            logger.warning(
                "skipping %s: the image file is %d bytes, the store keeps up to %d "
                "(INSPECT_REDIS_MAX_IMAGE_BYTES)",
                record.image_id,
                len(data),
                self.settings.max_image_bytes,
                extra={"image_id": record.image_id, "class_name": class_name},
            )
            self.report.images_skipped.append(record.image_id)
            return
        if self.settings.dry_run:
            counts.exemplars_written += len(todo)
            for i in todo:
                p = planned[i]
                self.report.would_write.append(
                    {
                        "class_name": class_name,
                        "image_id": record.image_id,
                        "exemplar_id": p.id,
                        "box": list(p.region.box),
                    }
                )
            return
        # every region of the image in one call, as a clean run would: identical embeddings
        embeddings = self.predictor.encode_prompts(
            image, [PromptRegion(p.instance.box, p.instance.mask) for p in planned]
        )
        note = _note(self.dataset, self.settings.source, record.image_id)
        for i in todo:
            p = planned[i]
            self._pending.append(
                NewExemplar(class_name, embeddings[i], data, p.region, self.settings.author, note)
            )
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        size = self.settings.batch_size
        while self._pending and (final or len(self._pending) >= size):
            batch, self._pending = self._pending[:size], self._pending[size:]
            results = self.store.add_exemplars(
                self.settings.namespace, batch, fingerprint=self.predictor.fingerprint
            )
            for item, result in zip(batch, results, strict=True):
                counts = self.report.classes[item.class_name]
                if result.created:
                    counts.exemplars_written += 1
                else:  # another writer stored it since we listed the ids
                    counts.exemplars_skipped += 1


def extract_prompts(
    dataset: DefectDataset,
    predictor: Any,
    store: PromptStore,
    settings: ExtractionSettings,
    progress: bool | None = None,
) -> ExtractionReport:
    """Run the extraction job (see the module docstring); raises ExtractionRefused, StoreError."""
    return PromptExtractor(dataset, predictor, store, settings).run(progress)


# ----------------------------------------------------------------------------------------------
# command line


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message and any `extra` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TqdmHandler(logging.Handler):
    """Writes through tqdm so log lines do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {value}")
    return value


USAGE_EXAMPLES = """
examples:
  python scripts/extract_prompts.py --data ../shared/datasets/magnetic_tile --namespace tiles \\
      --per-class 5 --redis-url redis://127.0.0.1:6379/0
  python scripts/extract_prompts.py --data coco/annotations.json --split train --namespace line3 \\
      --classes scratch dent --dry-run

Re-running the same command resumes an interrupted job (stored exemplars are skipped). The
summary (JSON) goes to stdout; warnings go to stderr as JSON lines. Exit codes: 0 done,
2 refused (the message says what to do), 130 interrupted (re-run to resume).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_prompts.py",
        description="Encode a dataset's exemplars with the prompt encoder and write them to the "
        "prompt store (Redis).",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder or COCO .json (as evaluation)")
    p.add_argument("--namespace", required=True, help="prompt store namespace to write")
    p.add_argument(
        "--redis-url", default=None, help="Redis URL (default: INSPECT_REDIS_URL or local)"
    )
    p.add_argument("--model", default=None, help="model file (default: the embedded model)")
    p.add_argument(
        "--per-class",
        type=_positive_int,
        default=None,
        help="prompt images per class (default: every image showing the class alone)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the image draw")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="exemplars per store write",
    )
    p.add_argument("--author", default=DEFAULT_AUTHOR, help="author recorded on each exemplar")
    p.add_argument("--split", default=None, help="COCO image split to use (e.g. train)")
    p.add_argument("--image-root", default=None, help="COCO: folder the file_names resolve in")
    p.add_argument("--threads", type=_non_negative_int, default=0, help="torch threads (0: auto)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be written; reads the store but never writes to it",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(progress=None)
    return p


def _refuse(message: str) -> int:
    print(f"extract_prompts: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_REFUSED


def _mismatch_message(exc: ModelMismatch, model_arg: str | None) -> str:
    if exc.stored_fingerprint != exc.given_fingerprint:
        what = (
            f"namespace {exc.namespace!r} holds embeddings of model {exc.stored_fingerprint}, "
            f"not of this model ({exc.given_fingerprint})"
        )
    else:
        what = (
            f"namespace {exc.namespace!r} holds {exc.stored_dim}-d embeddings, this model "
            f"makes {exc.given_dim}-d ones"
        )
    return (
        f"{what}; nothing was written. Extract into a new --namespace, pass the --model that "
        f"made it (now: {model_arg or 'the embedded default'}), or move the namespace to this "
        "model with the store's re-extraction (RedisPromptStore.reextract)"
    )


def _open_store(redis_url: str | None) -> tuple[Any, Any]:
    """A RedisPromptStore that answered PING, and its settings."""
    from pydantic import ValidationError

    from prompt_store.redis_store import RedisPromptStore
    from prompt_store.settings import StoreSettings

    try:
        settings = StoreSettings(url=redis_url) if redis_url else StoreSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ExtractionRefused(
            f"bad Redis settings ({problems}); fix --redis-url or the INSPECT_REDIS_* variables"
        ) from exc
    store = RedisPromptStore.from_settings(settings)
    try:
        store.ping()  # StoreUnavailable names what to check
    except BaseException:
        store.close()
        raise
    return store, settings


def run_cli(args: argparse.Namespace) -> int:
    """The command's body; returns the exit code. Prints the summary JSON on stdout."""
    from models.data.loading import load_dataset

    data = Path(args.data)
    if not data.exists():
        return _refuse(
            f"data path {data} does not exist; pass a dataset folder or a COCO .json file"
        )
    try:
        dataset = load_dataset(data, image_root=args.image_root, split=args.split)
    except (ValueError, OSError, KeyError) as exc:
        return _refuse(f"cannot read dataset {data}: {exc}")
    store = None
    extractor = None
    try:
        store, store_settings = _open_store(args.redis_url)
        try:
            predictor = TorchPredictor.load(args.model, args.threads)
        except (FileNotFoundError, ValueError) as exc:
            return _refuse(f"cannot load the model: {exc}; pass --model PATH to a model file")
        settings = ExtractionSettings(
            namespace=args.namespace,
            per_class=args.per_class,
            seed=args.seed,
            classes=tuple(args.classes) if args.classes else None,
            batch_size=args.batch_size,
            author=args.author,
            dry_run=args.dry_run,
            max_image_bytes=store_settings.max_image_bytes,
            source=str(data),
        )
        extractor = PromptExtractor(dataset, predictor, store, settings)
        report = extractor.run(progress=args.progress)
    except ExtractionRefused as exc:
        return _refuse(str(exc))
    except ModelMismatch as exc:
        return _refuse(_mismatch_message(exc, args.model))
    except StoreError as exc:  # unreachable, refused credentials, invalid input
        return _refuse(str(exc))
    except KeyboardInterrupt:
        if extractor is not None:
            extractor.report.interrupted = True
            try:
                extractor.report.version = extractor._current_version()
            except Exception:  # the interrupt may have broken the connection; keep 0
                logger.warning("could not read the namespace version after the interrupt")
            print(json.dumps(extractor.report.to_json(), indent=2))
        print(
            "extract_prompts: interrupted; stored batches are kept, re-run the same command "
            "to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if store is not None:
            store.close()
    print(json.dumps(report.to_json(), indent=2))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/extract_prompts.py: parse, log JSON lines to stderr, run."""
    args = build_parser().parse_args(argv)
    handler = _TqdmHandler(level=logging.WARNING)
    handler.setFormatter(JsonLinesFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        return run_cli(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
