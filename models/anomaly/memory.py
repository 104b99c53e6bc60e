"""The memory of normal appearance of one namespace, and its nearest-neighbour distance.

Each reference image contributes its patches in greedy k-center order (`coreset.kcenter_order`,
computed once at registration). With n references and a bound of `max_patches` rows, every
reference contributes its first `budget(n) = min(stored, max_patches // n)` patches, so

- the memory is bounded (never more than max_patches rows of D float32), whatever n is;
- it is a pure function of the set of references (no order dependence), and changing the set is
  incremental: add or drop a reference's rows; only when the budget moves (n crossing a multiple)
  do the others' prefixes grow or shrink, still without recomputing any coreset;
- with few references every stored patch is in memory, with many each keeps its most distinct
  ones (the k-center prefix is the best coverage for its size, up to a factor 2).

A query patch's anomaly score is the Euclidean distance to its nearest memory row (PatchCore,
k = 1). Calibration leaves one reference out at a time: its own rows are masked and its stored
patches are scored against the others (see `leave_one_out_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_ELEMENTS = 8_000_000  # query rows x memory rows per distance block (32 MB of float32)


def budget(n_refs: int, max_patches: int, stored: int) -> int:
    """Rows each of `n_refs` references contributes (at least 1, at most `stored`)."""
    if n_refs <= 0:
        return 0
    return max(1, min(stored, max_patches // n_refs))


@dataclass(frozen=True)
class Reference:
    """A reference's stored patches, k-center ordered (rows, D), any float dtype."""

    id: str
    patches: np.ndarray


class MemoryBank:
    """(N, D) float32 memory rows with the index of the reference each came from."""

    def __init__(self, rows: np.ndarray, owners: np.ndarray, ids: Sequence[str]) -> None:
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)  # (N, D)
        self.owners = np.asarray(owners, dtype=np.int32)  # (N,) index into ids
        self.ids = list(ids)
        self._t = torch.from_numpy(self.rows)
        self._sq = (self._t * self._t).sum(dim=1)  # (N,)

    @classmethod
    def build(cls, refs: Sequence[Reference], max_patches: int) -> MemoryBank:
        """Memory from references (sorted by id for determinism), at most max_patches rows.

        When there are more references than max_patches, the first max_patches (by id) give one
        row each.
        """
        if max_patches < 1:
            raise ValueError(f"max_patches must be positive, got {max_patches}")
        refs = sorted(refs, key=lambda r: r.id)[:max_patches]
        if not refs:
            return cls(np.zeros((0, 0), np.float32), np.zeros(0, np.int32), [])
        dims = {r.patches.shape[1] for r in refs}
        if len(dims) != 1:
            raise ValueError(f"references have different feature dimensions {sorted(dims)}")
        stored = max(len(r.patches) for r in refs)
        b = budget(len(refs), max_patches, stored)
        rows = [np.asarray(r.patches[:b], dtype=np.float32) for r in refs]
        owners = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(rows)])
        return cls(np.concatenate(rows), owners, [r.id for r in refs])

    def __len__(self) -> int:
        return self.rows.shape[0]

    def rows_by_reference(self) -> dict[str, np.ndarray]:
        """{reference id: its rows (views, float32)}; rows of a reference are contiguous."""
        counts = np.bincount(self.owners, minlength=len(self.ids))
        parts = np.split(self.rows, np.cumsum(counts)[:-1]) if len(self.ids) else []
        return dict(zip(self.ids, parts, strict=True))

    @property
    def dim(self) -> int:
        return self.rows.shape[1] if len(self) else 0

    @property
    def nbytes(self) -> int:
        """Bytes held (rows, squared norms, owners)."""
        return self.rows.nbytes + self._sq.numel() * 4 + self.owners.nbytes

    def nearest(self, queries: np.ndarray, exclude_owner: int | None = None) -> np.ndarray:
        """(M,) float32 distance of each query row (M, D) to its nearest memory row.

        Blocks of ||q||^2 + ||m||^2 - 2 q.m (one matrix product each) pick the nearest row; its
        distance is then recomputed directly, so a query equal to a memory row scores exactly 0.
        `exclude_owner` masks the rows of one reference (leave-one-out). No eligible row: inf.
        """
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        m = q.shape[0]
        if m == 0:
            return np.zeros(0, np.float32)
        n = len(self)
        mask = None
        if exclude_owner is not None:
            mask = torch.from_numpy(self.owners == exclude_owner)
        if n == 0 or (mask is not None and bool(mask.all())):
            return np.full(m, np.inf, np.float32)
        best = torch.empty(m, dtype=torch.int64)
        step = max(1, CHUNK_ELEMENTS // n)
        q_sq = (q * q).sum(dim=1)
        with torch.inference_mode():
            for start in range(0, m, step):
                block = q[start : start + step]
                d2 = torch.addmm(self._sq[None, :], block, self._t.T, alpha=-2.0)  # (b, N)
                d2 += q_sq[start : start + step, None]
                if mask is not None:
                    d2[:, mask] = float("inf")
                best[start : start + step] = d2.argmin(dim=1)
            diff = q - self._t[best]
            return torch.sqrt((diff * diff).sum(dim=1)).numpy()


def leave_one_out_scores(bank: MemoryBank, held_out: Sequence[Reference]) -> np.ndarray:
    """Image scores of references scored against the memory of the other references.

    For each reference of `held_out` (with all its stored patches; it must be one of the bank's
    references), its own rows are masked out of `bank` (the others keep the full memory's budget,
    a negligible difference from rebuilding without it) and every stored patch is scored; the
    image score is the largest patch distance (PatchCore's image score). Stored patches are the
    reference's k-center prefix, which holds its most distinct patches, so the maximum is close
    to the full image's. References not in the bank, or alone in it, give no score.
    """
    index = {rid: i for i, rid in enumerate(bank.ids)}
    out = []
    for ref in held_out:
        if ref.id not in index:
            continue
        dist = bank.nearest(np.asarray(ref.patches, np.float32), exclude_owner=index[ref.id])
        if len(dist) and np.isfinite(dist).all():
            out.append(float(dist.max()))
    return np.asarray(out, dtype=np.float64)


def calibration_ids(ids: Sequence[str], count: int) -> list[str]:
    """The references used for calibration: up to `count`, the smallest ids (ids are content
    hashes, so this is a fixed pseudo-random draw that does not depend on insertion order)."""
    return sorted(ids)[: max(0, count)]


def threshold_from_scores(scores: np.ndarray, quantile: float) -> float | None:
    """The calibrated threshold: the `quantile` of held-out good-image scores (None if none)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return None
    return float(np.quantile(scores, quantile))
