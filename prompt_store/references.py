"""Records of the reference images of the anomaly mode, and the pure functions that define them.

A reference is a defect-free image a QA engineer registered for a namespace. The store keeps what
the service needs to rebuild its memory of normal appearance without the image: the image's patch
features in greedy k-center order (models/anomaly/coreset.py), as little-endian float16 rows, with
the fingerprint of the feature extractor that made them. Features of different extractors are
never mixed: a namespace's references share one feature fingerprint and dimension.

Ids are content hashes of the image bytes, so registering the same image twice is a no-op that
returns the same id. Per-namespace anomaly settings (threshold, minimum region size, whether
`unknown` regions reject a part) override the service's defaults.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prompt_store.errors import InvalidInput

FLOAT16_LE = np.dtype("<f2")
MAX_FEATURE_DIM = 4096
MAX_REFERENCE_ROWS = 4096  # stored patches per reference
REFS_KEY = "refs"  # HASH reference id -> stored rows (inspect:ns:{ns}:refs)
ANOMALY_KEY = "anomaly"  # HASH feature fingerprint, dim and the settings overrides


@dataclass(frozen=True)
class AnomalySettings:
    """Per-namespace overrides; None means "the service's default"."""

    threshold: float | None = None  # image/region threshold (raw patch distance)
    min_region_fraction: float | None = None  # smaller unknown regions (share of image) dropped
    unknown_rejects: bool | None = None  # unknown regions count toward `reject`

    def __post_init__(self) -> None:
        t = self.threshold
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0
        ):
            raise InvalidInput(f"anomaly threshold must be a finite number > 0, got {t!r}")
        f = self.min_region_fraction
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < 1
        ):
            raise InvalidInput(f"min_region_fraction must be a number in [0, 1), got {f!r}")
        u = self.unknown_rejects
        if u is not None and not isinstance(u, bool):
            raise InvalidInput(f"unknown_rejects must be true, false or null, got {u!r}")

    def to_fields(self) -> dict[str, str]:
        """Redis hash fields of the set overrides (absent = default)."""
        out = {}
        if self.threshold is not None:
            out["threshold"] = repr(float(self.threshold))
        if self.min_region_fraction is not None:
            out["min_region_fraction"] = repr(float(self.min_region_fraction))
        if self.unknown_rejects is not None:
            out["unknown_rejects"] = "1" if self.unknown_rejects else "0"
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> AnomalySettings:
        def num(name: str) -> float | None:
            return float(fields[name]) if name in fields else None

        rejects = fields.get("unknown_rejects")
        return cls(
            threshold=num("threshold"),
            min_region_fraction=num("min_region_fraction"),
            unknown_rejects=None if rejects is None else rejects == "1",
        )


@dataclass(frozen=True)
class NewReference:
    """One reference to register (the input of `add_references`)."""

    image_bytes: bytes  # the encoded image: only its hash is kept (the id)
    width: int
    height: int
    patches: np.ndarray  # (rows, D) patch features in k-center order; any float dtype
    author: str
    note: str | None = None


@dataclass(frozen=True)
class ReferenceRecord:
    """A stored reference (features only when asked for)."""

    id: str
    image_hash: str
    width: int
    height: int
    rows: int
    fingerprint: str  # feature extractor
    author: str
    created_at: str
    note: str | None = None
    patches: np.ndarray | None = field(default=None, compare=False)  # (rows, D) float16


@dataclass(frozen=True)
class ReferenceAdd:
    """Outcome of one reference registration; created is False when it already existed."""

    reference_id: str
    version: int
    created: bool


@dataclass(frozen=True)
class ReferenceSnapshot:
    """A namespace's references as of `version`: what a replica needs to (re)build its memory."""

    namespace: str
    version: int
    fingerprint: str  # the namespace's model
    feature_fingerprint: str | None  # None while there is no reference
    feature_dim: int | None
    rows: dict[str, int]  # reference id -> stored rows
    settings: AnomalySettings


def reference_id(img_hash: str) -> str:
    """Stable id of a reference image: 32 hex chars of sha256 over a tag and the image hash."""
    return hashlib.sha256(f"reference\n{img_hash}".encode()).hexdigest()[:32]


def patches_to_bytes(patches: Any, expected_dim: int | None = None) -> tuple[bytes, int, int]:
    """Validate and serialise (rows, D) features as little-endian float16; returns
    (bytes, rows, D). Refuses wrong ranks and sizes and values not finite in float16."""
    try:
        arr = np.asarray(patches)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("reference patches must be a 2-D array of numbers") from exc
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInput(
            f"reference patches must be a non-empty (rows, D) array, got {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInput(f"reference patches must be numeric, got dtype {arr.dtype}")
    rows, dim = arr.shape
    if rows > MAX_REFERENCE_ROWS:
        raise InvalidInput(f"{rows} patches per reference exceed {MAX_REFERENCE_ROWS}")
    if dim > MAX_FEATURE_DIM:
        raise InvalidInput(f"feature dimension {dim} exceeds {MAX_FEATURE_DIM}")
    if expected_dim is not None and dim != expected_dim:
        raise InvalidInput(f"features have dimension {dim}, expected {expected_dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        as16 = arr.astype(FLOAT16_LE)
    if not np.all(np.isfinite(as16)):
        raise InvalidInput("reference patches contain NaN or inf (after conversion to float16)")
    return as16.tobytes(), rows, dim


def patches_from_bytes(raw: bytes, dim: int) -> np.ndarray:
    """Inverse of `patches_to_bytes`: (rows, dim) float16 (native order, writable copy)."""
    if dim <= 0 or len(raw) % (2 * dim):
        raise InvalidInput(f"stored features have {len(raw)} bytes, not a multiple of {2 * dim}")
    return np.frombuffer(raw, dtype=FLOAT16_LE).astype(np.float16).reshape(-1, dim)


# Lua: delete every reference key of a namespace (P is its key prefix). Shared by the namespace
# deletion script of redis_store.py, so deleting a namespace leaves no reference behind.
LUA_WIPE_REFS = r"""
local function wipe_refs()
  for _, id in ipairs(redis.call('HKEYS', P .. 'refs')) do
    redis.call('DEL', P .. 'ref:' .. id, P .. 'reffeat:' .. id)
  end
  redis.call('DEL', P .. 'refs', P .. 'anomaly')
end
"""
