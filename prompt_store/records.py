"""Records of the prompt store and the pure functions that define them.

Everything here is independent of Redis so that the id scheme, the byte format of embeddings and
the prototype maths are pinned by plain unit tests and shared by the store, the export file and
the offline job.

Embeddings travel as raw little-endian float32 bytes (never pickle): `embedding_to_bytes` and
`embedding_from_bytes` are the only two places that know the format.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prompt_store.errors import InvalidInput

MAX_EMBED_DIM = 4096  # the Lua prototype code unpacks a whole vector onto the Lua stack (< 8000)
MAX_NAME_CHARS = 128
MAX_NOTE_CHARS = 2000
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
FLOAT32_LE = np.dtype("<f4")


@dataclass(frozen=True)
class Region:
    """Where the defect is in the prompt image.

    box: (x0, y0, x1, y1) in original image pixels. mask_rle: optional COCO compressed RLE of the
    region's mask, {"size": [h, w], "counts": str}.
    """

    box: tuple[float, float, float, float]
    mask_rle: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_region(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the canonical JSON is `canonical_json` of this)."""
        out: dict[str, Any] = {"box": [float(v) for v in self.box]}
        if self.mask_rle is not None:
            out["mask_rle"] = {
                "size": [int(v) for v in self.mask_rle["size"]],
                "counts": self.mask_rle["counts"],
            }
        return out

    def canonical_json(self) -> str:
        """One string per region: the id is hashed over it, so the same region is the same text."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        """Inverse of `to_dict`; raises InvalidInput on anything malformed."""
        if not isinstance(data, dict) or "box" not in data:
            raise InvalidInput("region must be an object with a 'box'")
        unknown = set(data) - {"box", "mask_rle"}
        if unknown:
            raise InvalidInput(f"region has unknown fields {sorted(unknown)}")
        box = data["box"]
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise InvalidInput("region box must be 4 numbers (x0, y0, x1, y1)")
        try:
            coords = tuple(float(v) for v in box)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("region box must be 4 numbers (x0, y0, x1, y1)") from exc
        return cls(box=coords, mask_rle=data.get("mask_rle"))  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str) -> Region:
        """Parse the canonical JSON stored in Redis."""
        return cls.from_dict(json.loads(text))


def validate_region(region: Region) -> None:
    """Refuse boxes that are not finite, inverted or negative, and malformed RLE masks."""
    box = region.box
    if len(box) != 4:
        raise InvalidInput("region box must be 4 numbers (x0, y0, x1, y1)")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box):
        raise InvalidInput("region box must be 4 numbers (x0, y0, x1, y1)")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InvalidInput(f"region box {box} has non-finite coordinates")
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise InvalidInput(f"region box {box} must satisfy 0 <= x0 < x1 and 0 <= y0 < y1")
    if region.mask_rle is not None:
        _validate_rle(region.mask_rle)


def _validate_rle(rle: Any) -> None:
    """COCO compressed RLE only: {"size": [h, w], "counts": str}."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise InvalidInput("mask_rle must be {'size': [h, w], 'counts': str} (COCO RLE)")
    size = rle["size"]
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise InvalidInput("mask_rle size must be two positive integers [h, w]")
    counts = rle["counts"]
    if not isinstance(counts, str) or not counts or not counts.isascii():
        raise InvalidInput("mask_rle counts must be a non-empty ASCII string (compressed RLE)")


@dataclass(frozen=True)
class NewExemplar:
    """One exemplar to register (the input of `add_exemplars`)."""

    class_name: str
    embedding: np.ndarray  # (d,) float32; any float dtype is converted
    image_bytes: bytes  # the encoded prompt image, kept for re-extraction
    region: Region
    author: str
    note: str | None = None


@dataclass(frozen=True)
class ExemplarRecord:
    """A stored exemplar. `embedding` is None unless asked for."""

    id: str
    class_name: str
    image_hash: str
    region: Region
    author: str
    created_at: str  # ISO 8601 UTC
    fingerprint: str
    note: str | None = None
    embedding: np.ndarray | None = field(default=None, compare=False)  # (d,) float32


@dataclass(frozen=True)
class AddResult:
    """Outcome of one registration; created is False when it already existed (no-op)."""

    exemplar_id: str
    version: int
    created: bool


@dataclass(frozen=True)
class ClassSummary:
    """A class and how many exemplars define it."""

    name: str
    count: int


@dataclass(frozen=True)
class ClassInfo:
    """A class with its exemplars (metadata; embeddings only when asked) and its prototype."""

    name: str
    exemplars: list[ExemplarRecord]
    prototype: np.ndarray  # (d,) float32


@dataclass(frozen=True)
class NamespaceInfo:
    """What a namespace holds and which model made it."""

    name: str
    fingerprint: str
    embed_dim: int
    version: int
    created_at: str
    class_count: int
    exemplar_count: int
    image_count: int


@dataclass(frozen=True)
class PrototypeSnapshot:
    """The prototype matrix of a namespace as of `version` (what the detector consumes)."""

    namespace: str
    version: int
    fingerprint: str
    class_names: list[str]
    matrix: np.ndarray  # (C, d) float32, row i is the prototype of class_names[i]
    counts: list[int]  # exemplars per class, aligned with class_names
    # per class, its exemplars' boxes (n, 4) float32 xyxy in their images' pixels (size prior)
    exemplar_boxes: tuple[np.ndarray, ...] | None = None
    # per class, the sha256 of each exemplar's stored source image, aligned with exemplar_boxes
    # (the template check crops them: service/exemplar_crops.py)
    exemplar_images: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class StoreEvent:
    """A change notification (also the JSON published on the namespace's channel).

    kind is one of: namespace_created, exemplar_added, exemplars_added, exemplar_removed,
    class_removed, class_renamed, namespace_deleted, namespace_imported, namespace_reextracted,
    references_added, reference_removed, anomaly_settings_changed (prompt_store/reference_store.py)
    and `resync` (synthesised by the subscriber after a reconnect: events may have been missed).
    """

    namespace: str | None
    version: int
    kind: str
    class_name: str | None = None
    exemplar_id: str | None = None
    old_class_name: str | None = None
    count: int | None = None
    reference_id: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> StoreEvent:
        """Parse a published event; unknown keys are ignored so producers can add fields."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("event is not a JSON object")
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class NamespaceDump:
    """Everything a namespace holds, read consistently (for export and re-extraction)."""

    namespace: str
    version: int
    fingerprint: str
    embed_dim: int
    created_at: str
    exemplars: list[ExemplarRecord]  # with embeddings, sorted by id
    images: dict[str, bytes]  # image hash -> encoded bytes
    prototypes: dict[str, np.ndarray]  # class name -> (d,) float32


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): equal values give equal strings."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def image_hash(image_bytes: bytes) -> str:
    """sha256 hex of the encoded image: images are stored once per hash."""
    return hashlib.sha256(image_bytes).hexdigest()


def exemplar_id(img_hash: str, region: Region, class_name: str) -> str:
    """Stable id: the same image, region and class always give the same id (idempotence).

    16 bytes of sha256 (32 hex chars): collisions are out of reach for any real store.
    """
    payload = "\n".join((img_hash, region.canonical_json(), class_name)).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:32]


def embedding_to_bytes(embedding: Any, expected_dim: int | None = None) -> bytes:
    """Validate and serialise an embedding as little-endian float32 bytes.

    Refuses anything that would poison a prototype: wrong rank or dimension, NaN/inf (also after
    the cast to float32), and the zero vector (it has no direction).
    """
    try:
        arr = np.asarray(embedding)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("embedding must be a 1-D array of numbers") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInput(f"embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInput(f"embedding must be numeric, got dtype {arr.dtype}")
    if arr.size > MAX_EMBED_DIM:
        raise InvalidInput(f"embedding dimension {arr.size} exceeds {MAX_EMBED_DIM}")
    if expected_dim is not None and arr.size != expected_dim:
        raise InvalidInput(f"embedding has dimension {arr.size}, expected {expected_dim}")
    with np.errstate(over="ignore"):
        as32 = arr.astype(FLOAT32_LE)
    if not np.all(np.isfinite(as32)):
        raise InvalidInput("embedding contains NaN or inf (after conversion to float32)")
    if not np.any(as32):
        raise InvalidInput("embedding is the zero vector")
    return as32.tobytes()


def embedding_from_bytes(raw: bytes, dim: int) -> np.ndarray:
    """Inverse of `embedding_to_bytes` (native-endian float32 copy, writable)."""
    if len(raw) != 4 * dim:
        raise InvalidInput(f"stored vector has {len(raw)} bytes, expected {4 * dim}")
    return np.frombuffer(raw, dtype=FLOAT32_LE).astype(np.float32)


def prototype_of(
    embeddings: list[np.ndarray] | np.ndarray, order: list[str] | None = None
) -> np.ndarray:
    """Reference prototype: L2-normalised mean of the embeddings, as float32.

    Mirrors the Lua code in redis_store.py operation by operation (float64 sum in sorted-id order,
    sequential sum of squares, one division, one cast), so that it is bit-identical to what the
    store computes; `order` gives the exemplar ids to sort by. Normalising the sum equals
    normalising the mean, so the division by n is skipped. A zero mean gives the zero vector.
    """
    rows = [np.asarray(e, dtype=np.float32) for e in embeddings]
    if order is not None:
        rows = [row for _, row in sorted(zip(order, rows, strict=True), key=lambda t: t[0])]
    acc = np.zeros(rows[0].shape[0], dtype=np.float64)
    for row in rows:
        acc += row.astype(np.float64)
    sum_sq = 0.0
    for value in acc.tolist():
        sum_sq += value * value
    norm = math.sqrt(sum_sq)
    if norm > 0:
        acc = acc / norm
    return acc.astype(np.float32)


def validate_namespace(name: Any) -> str:
    """Namespaces become Redis key parts: a short safe alphabet, no braces, colons or globs."""
    if not isinstance(name, str) or not NAMESPACE_RE.match(name):
        raise InvalidInput(
            f"namespace {name!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return name


def validate_fingerprint(fingerprint: Any) -> str:
    """Model fingerprints are opaque ids (a sha256 hex in practice)."""
    if not isinstance(fingerprint, str) or not FINGERPRINT_RE.match(fingerprint):
        raise InvalidInput(
            f"model fingerprint {fingerprint!r} must be 1-128 characters of letters, digits, "
            "'_', '.', ':', '-'"
        )
    return fingerprint


def validate_label(value: Any, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """Class names and authors: shown in UIs and logs, so no control characters or padding."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidInput(f"{what} is {len(value)} characters long, the limit is {max_chars}")
    if value != value.strip():
        raise InvalidInput(f"{what} {value!r} has leading or trailing whitespace")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise InvalidInput(f"{what} {value!r} contains control or unassigned characters")
    return value


def validate_note(note: Any) -> str | None:
    """Free text; newlines and tabs allowed, other control characters not."""
    if note is None:
        return None
    if not isinstance(note, str):
        raise InvalidInput("note must be a string")
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidInput(f"note is {len(note)} characters long, the limit is {MAX_NOTE_CHARS}")
    if any(unicodedata.category(ch).startswith("C") and ch not in "\n\t" for ch in note):
        raise InvalidInput("note contains control characters")
    return note
