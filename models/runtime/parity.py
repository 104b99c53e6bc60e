"""How closely one backend reproduces another (the PyTorch reference), on raw outputs and on
detections. Used by the export check, the engine build check, the tests and the benchmark.

Query order is not meaningful: the decoder is permutation-equivariant over its queries, and
prompt-guided query selection takes the top-K tokens by relevance, whose order can swap between
backends when two relevances differ by less than float rounding (common with untrained weights).
Raw outputs are therefore compared after matching each candidate query to a reference query;
`reordered` counts the queries that moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.postprocess import Detections
from models.runtime.base import DETECTOR_OUTPUTS


@dataclass
class RawParity:
    """Max abs differences of the detector outputs after query matching."""

    pred_logits: float
    pred_boxes: float
    pred_masks: float
    reordered: int  # queries whose position differs between the two backends
    scale: dict[str, float]  # max |value| of each reference output, to read the differences by

    def worst(self) -> float:
        return max(self.pred_logits, self.pred_boxes, self.pred_masks)

    def within(self, tolerance: float) -> bool:
        """Each difference within `tolerance` x max(1, the output's scale): mask logits reach
        tens, so their float32 rounding is larger in absolute terms."""
        return all(
            getattr(self, k) <= tolerance * max(1.0, self.scale[k]) for k in DETECTOR_OUTPUTS
        )

    def to_dict(self) -> dict:
        return asdict(self)


def compare_raw(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> RawParity:
    """Detector outputs of two backends on the same inputs (B, Q, ...)."""
    diffs = dict.fromkeys(DETECTOR_OUTPUTS, 0.0)
    moved = 0
    for b in range(len(ref["pred_logits"])):
        key_r = np.concatenate([ref["pred_logits"][b], ref["pred_boxes"][b]], axis=1)  # (Q, C+4)
        key_c = np.concatenate([cand["pred_logits"][b], cand["pred_boxes"][b]], axis=1)
        cost = np.abs(key_r[:, None, :] - key_c[None, :, :]).max(-1)  # (Q, Q)
        rows, cols = linear_sum_assignment(cost)
        moved += int((rows != cols).sum())
        for k in DETECTOR_OUTPUTS:
            d = np.abs(ref[k][b][rows].astype(np.float64) - cand[k][b][cols]).max()
            diffs[k] = max(diffs[k], float(d))
    scale = {k: float(np.abs(ref[k]).max()) if ref[k].size else 0.0 for k in DETECTOR_OUTPUTS}
    return RawParity(**diffs, reordered=moved, scale=scale)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class DetectionParity:
    """Each reference detection against its best-overlapping candidate detection."""

    reference: int  # detections of the reference backend (all images)
    candidate: int
    matched: int  # reference detections whose best match has the same class and IoU > min_iou
    min_iou: float  # worst best-match IoU (1.0 when there are no detections)
    max_score_diff: float
    mask_iou_min: float  # worst mask IoU of the matched pairs (1.0 without masks)

    def ok(self, min_iou: float = 0.95, max_score_diff: float = 0.02) -> bool:
        return (
            self.reference == self.candidate == self.matched
            and self.min_iou > min_iou
            and self.max_score_diff < max_score_diff
        )

    def to_dict(self) -> dict:
        return asdict(self)


def compare_detections(
    ref: list[Detections], cand: list[Detections], min_iou: float = 0.95
) -> DetectionParity:
    n_ref = n_cand = matched = 0
    worst_iou, worst_score, worst_mask = 1.0, 0.0, 1.0
    for r, c in zip(ref, cand, strict=True):
        n_ref, n_cand = n_ref + len(r), n_cand + len(c)
        if not len(r):
            continue
        if not len(c):
            worst_iou = 0.0
            continue
        iou = _iou(r.boxes, c.boxes)
        # Prefer a candidate of the same class: two queries may share a box with other classes.
        same_class = r.class_index[:, None] == c.class_index[None, :]
        best = np.where(
            same_class.any(axis=1), (iou + 2.0 * same_class).argmax(axis=1), iou.argmax(axis=1)
        )
        for i, j in enumerate(best):
            worst_iou = min(worst_iou, float(iou[i, j]))
            worst_score = max(worst_score, float(abs(r.scores[i] - c.scores[j])))
            same = r.class_index[i] == c.class_index[j] and iou[i, j] > min_iou
            matched += int(same)
            if same and r.masks is not None and c.masks is not None:
                inter = np.logical_and(r.masks[i], c.masks[j]).sum()
                union = np.logical_or(r.masks[i], c.masks[j]).sum()
                worst_mask = min(worst_mask, float(inter / union) if union else 1.0)
    return DetectionParity(n_ref, n_cand, matched, worst_iou, worst_score, worst_mask)


def compare_embeddings(ref: np.ndarray, cand: np.ndarray) -> float:
    """Max abs difference of two (R, d) embedding matrices."""
    return float(np.abs(ref.astype(np.float64) - cand).max()) if ref.size else 0.0
