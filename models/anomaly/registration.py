"""Offline registration of defect-free reference images into the prompt store (anomaly mode).

The same records as `POST /v1/namespaces/{ns}/references`: per image, its k-center patch prefix
from the same feature extractor (configured from the same INSPECT_ANOMALY_* settings as the
service, so the features' fingerprint matches the service's), written in atomic batches. Ids are
content hashes of the image bytes: ids already stored are skipped before any feature work, so a
re-run resumes an interrupted job and a finished job re-run writes nothing.

scripts/register_references.py is the command line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.anomaly.features import PatchFeatureExtractor
from models.decode import ImageDecodeError, decode_image
from models.preprocess import Letterbox
from prompt_store.errors import NotFound
from prompt_store.records import image_hash, validate_namespace
from prompt_store.references import NewReference, reference_id

logger = logging.getLogger(__name__)

DEFAULT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class RegistrationReport:
    namespace: str
    feature_fingerprint: str
    images: int = 0
    written: int = 0
    skipped: int = 0  # already stored
    refused: list[str] = field(default_factory=list)  # not decodable images
    version: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "feature_fingerprint": self.feature_fingerprint,
            "images": self.images,
            "written": self.written,
            "skipped": self.skipped,
            "refused": self.refused,
            "version": self.version,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


def find_images(paths: Sequence[str | Path], suffixes: Sequence[str]) -> list[Path]:
    """Files given, and the files of given folders (not recursive) with one of the suffixes."""
    wanted = {s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes}
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in wanted)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a file nor a folder")
    return list(dict.fromkeys(out))


def register_references(
    files: Sequence[Path],
    namespace: str,
    store: Any,  # RedisPromptStore
    extractor: PatchFeatureExtractor,
    model_fingerprint: str,
    embed_dim: int,
    *,
    per_reference: int,
    max_references: int,
    batch_size: int = 16,
    author: str = "register_references",
    dry_run: bool = False,
    max_image_bytes: int = 16 * 1024 * 1024,
    progress: bool | None = None,
) -> RegistrationReport:
    validate_namespace(namespace)
    report = RegistrationReport(
        namespace, extractor.fingerprint, images=len(files), dry_run=dry_run
    )
    start = time.monotonic()
    refs = store.references
    try:
        existing = set(refs.snapshot(namespace).rows)
    except NotFound:
        existing = set()
    pending: list[tuple[Path, bytes]] = []
    for path in files:
        data = path.read_bytes()
        if reference_id(image_hash(data)) in existing:
            report.skipped += 1
        else:
            pending.append((path, data))
    bar = tqdm(
        range(0, len(pending), batch_size),
        desc=f"references {namespace}",
        disable=(not progress) if progress is not None else None,
        file=sys.stderr,
    )
    size = extractor.config.image_size
    try:
        for i in bar:
            batch = pending[i : i + batch_size]
            decoded = []
            for path, data in batch:
                try:
                    image = decode_image(data, max_bytes=max_image_bytes)
                except ImageDecodeError as exc:
                    logger.warning("skipping %s: %s", path, exc)
                    report.refused.append(str(path))
                    continue
                lb = Letterbox.fit(image.width, image.height, size)
                w, h = lb.inner
                decoded.append((data, image.width, image.height, lb.image(image.rgb)[:h, :w]))
            if not decoded:
                continue
            if dry_run:
                report.written += len(decoded)
                continue
            patches = extractor.reference_patches([d[3] for d in decoded], per_reference)
            items = [
                NewReference(data, w, h, feats, author)
                for (data, w, h, _), feats in zip(decoded, patches, strict=True)
            ]
            results = refs.add_references(
                namespace,
                items,
                fingerprint=model_fingerprint,
                embed_dim=embed_dim,
                feature_fingerprint=extractor.fingerprint,
                max_references=max_references,
            )
            report.written += sum(r.created for r in results)
            report.skipped += sum(not r.created for r in results)
            report.version = max(r.version for r in results)
    finally:
        report.seconds = time.monotonic() - start
    return report
