"""Namespace <-> JSON file, bit-exact.

One self-contained JSON document per namespace, for backups and for moving a namespace between
sites. Vectors and images are base64 of their raw bytes (little-endian float32, the encoded image)
so nothing is re-rounded through decimal text; everything else is plain JSON. A sha256 over the
canonical JSON of the content detects truncated or edited files, and on reading every image hash,
exemplar id, embedding and prototype is checked again before anything touches Redis.

Format (format_version 1):
    {"format": "inspect-prompt-store", "format_version": 1, "namespace", "version",
     "fingerprint", "embed_dim", "created_at", "exported_at", "vector_dtype": "<f4",
     "classes": [{"name", "count", "prototype": b64}],
     "exemplars": [{"id", "class_name", "embedding": b64, "image_hash", "region", "author",
                    "created_at", "note"}],                       # sorted by id
     "images": {sha256 hex: b64},
     "content_sha256": hex}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from prompt_store.errors import InvalidInput
from prompt_store.records import (
    ExemplarRecord,
    NamespaceDump,
    Region,
    canonical_json,
    embedding_from_bytes,
    exemplar_id,
    image_hash,
    prototype_of,
    validate_fingerprint,
    validate_label,
    validate_namespace,
    validate_note,
)

FORMAT = "inspect-prompt-store"
FORMAT_VERSION = 1
VECTOR_DTYPE = "<f4"
PROTOTYPE_TOLERANCE = 1e-5  # the file's prototypes must match a recompute of its embeddings


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64") from exc


def _vector_b64(vec: np.ndarray) -> str:
    return _b64(np.asarray(vec, dtype=VECTOR_DTYPE).tobytes())


def content_sha256(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything but the checksum itself."""
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def dump_to_document(dump: NamespaceDump) -> dict[str, Any]:
    """A namespace dump as a JSON-able document with its checksum."""
    counts: dict[str, int] = {}
    for rec in dump.exemplars:
        counts[rec.class_name] = counts.get(rec.class_name, 0) + 1
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "namespace": dump.namespace,
        "version": dump.version,
        "fingerprint": dump.fingerprint,
        "embed_dim": dump.embed_dim,
        "created_at": dump.created_at,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "vector_dtype": VECTOR_DTYPE,
        "classes": [
            {
                "name": name,
                "count": counts.get(name, 0),
                "prototype": _vector_b64(dump.prototypes[name]),
            }
            for name in sorted(dump.prototypes)
        ],
        "exemplars": [_exemplar_doc(rec) for rec in sorted(dump.exemplars, key=lambda r: r.id)],
        "images": {h: _b64(dump.images[h]) for h in sorted(dump.images)},
    }
    doc["content_sha256"] = content_sha256(doc)
    return doc


def _exemplar_doc(rec: ExemplarRecord) -> dict[str, Any]:
    if rec.embedding is None:
        raise InvalidInput(f"exemplar {rec.id} was read without its embedding")
    return {
        "id": rec.id,
        "class_name": rec.class_name,
        "embedding": _vector_b64(rec.embedding),
        "image_hash": rec.image_hash,
        "region": rec.region.to_dict(),
        "author": rec.author,
        "created_at": rec.created_at,
        "note": rec.note,
    }


def document_to_dump(doc: Any) -> NamespaceDump:
    """Validate a document completely and turn it back into a dump; InvalidInput if anything is
    off, so an import either has all of a sound file or nothing."""
    _check_header(doc)
    dim = doc["embed_dim"]
    images = {h: _unb64(b, f"image {h}") for h, b in _require(doc, "images", dict).items()}
    for h, data in images.items():
        if image_hash(data) != h:
            raise InvalidInput(f"image {h} does not match its sha256 (file corrupted)")
    records = [
        _exemplar_from_doc(e, dim, doc["fingerprint"], images)
        for e in _require(doc, "exemplars", list)
    ]
    if len({r.id for r in records}) != len(records):
        raise InvalidInput("duplicate exemplar ids in file")
    prototypes = _check_prototypes(doc, records, dim)
    return NamespaceDump(
        namespace=doc["namespace"],
        version=int(doc["version"]),
        fingerprint=doc["fingerprint"],
        embed_dim=dim,
        created_at=doc["created_at"],
        exemplars=records,
        images=images,
        prototypes=prototypes,
    )


def _require(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise InvalidInput(f"export file: {key!r} missing or not a {kind.__name__}")
    return value


def _check_header(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(f"not a {FORMAT} export file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(f"unsupported export format_version {doc.get('format_version')!r}")
    if doc.get("vector_dtype") != VECTOR_DTYPE:
        raise InvalidInput(f"unsupported vector_dtype {doc.get('vector_dtype')!r}")
    if doc.get("content_sha256") != content_sha256(doc):
        raise InvalidInput("export file checksum mismatch (truncated or edited)")
    validate_namespace(doc.get("namespace"))
    validate_fingerprint(doc.get("fingerprint"))
    dim = doc.get("embed_dim")
    if not isinstance(dim, int) or not 0 < dim <= 4096:
        raise InvalidInput(f"export file: bad embed_dim {dim!r}")
    if not isinstance(doc.get("created_at"), str):
        raise InvalidInput("export file: 'created_at' must be text")
    if not isinstance(doc.get("version"), int):
        raise InvalidInput("export file: 'version' must be an integer")


def _exemplar_from_doc(
    e: Any, dim: int, fingerprint: str, images: dict[str, bytes]
) -> ExemplarRecord:
    if not isinstance(e, dict):
        raise InvalidInput("export file: exemplar entries must be objects")
    class_name = validate_label(e.get("class_name"), "class name")
    region = Region.from_dict(e.get("region"))
    ih = e.get("image_hash")
    if ih not in images:
        raise InvalidInput(f"exemplar {e.get('id')!r} references a missing image")
    if e.get("id") != exemplar_id(ih, region, class_name):
        raise InvalidInput(f"exemplar {e.get('id')!r} does not match its content (corrupted)")
    emb = embedding_from_bytes(_unb64(e.get("embedding"), f"embedding of {e['id']}"), dim)
    if not np.all(np.isfinite(emb)) or not np.any(emb):
        raise InvalidInput(f"exemplar {e['id']} has a non-finite or zero embedding")
    if not isinstance(e.get("created_at"), str):
        raise InvalidInput(f"exemplar {e['id']}: created_at must be text")
    return ExemplarRecord(
        id=e["id"],
        class_name=class_name,
        image_hash=ih,
        region=region,
        author=validate_label(e.get("author"), "author"),
        created_at=e["created_at"],
        fingerprint=fingerprint,
        note=validate_note(e.get("note")),
        embedding=emb,
    )


def _check_prototypes(
    doc: dict[str, Any], records: list[ExemplarRecord], dim: int
) -> dict[str, np.ndarray]:
    by_class: dict[str, list[ExemplarRecord]] = {}
    for rec in records:
        by_class.setdefault(rec.class_name, []).append(rec)
    prototypes = {}
    for entry in _require(doc, "classes", list):
        name = entry.get("name") if isinstance(entry, dict) else None
        members = by_class.get(name or "", [])
        if not members:
            raise InvalidInput(f"export file: class {name!r} has no exemplars")
        proto = embedding_from_bytes(_unb64(entry.get("prototype"), f"prototype of {name}"), dim)
        expected = prototype_of([m.embedding for m in members], [m.id for m in members])
        if not np.allclose(proto, expected, rtol=0, atol=PROTOTYPE_TOLERANCE):
            raise InvalidInput(f"export file: prototype of {name!r} does not match its exemplars")
        prototypes[name] = proto
    if set(prototypes) != set(by_class):
        raise InvalidInput("export file: classes and exemplars disagree")
    return prototypes


def write_document(path: Path, doc: dict[str, Any]) -> Path:
    """Write atomically (temp file, fsync, rename): a crash never leaves half a backup."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_document(path: Path) -> dict[str, Any]:
    """Parse an export file; InvalidInput if it is not JSON."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not a JSON export file: {exc}") from exc
