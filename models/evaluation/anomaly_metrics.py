"""Anomaly detection metrics in numpy (no scikit-learn): AUROC, AUPRO, AP and F1-max.

- `auroc(scores, labels)`: area under the ROC curve, via ranks (Mann-Whitney U; ties count 1/2).
- `aupro(maps, masks, fpr_limit=0.3)`: area under the per-region-overlap curve up to a false
  positive rate of 0.3, divided by 0.3 (MVTec AD's AUPRO): every ground-truth region (8-connected
  component) weighs the same whatever its size, which pixel AUROC does not do.
- `average_precision` and `f1_max` (the pixel metrics IAP-AS reports).

Every threshold sweep handles tied scores as one step, as the curves' definitions require.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of `scores` for binary `labels` (1 positive); nan without both classes."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _descending_steps(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order (descending) and the positions where a run of equal scores ends."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ends = np.nonzero(np.diff(s, append=-np.inf) != 0)[0]  # last index of each tied run
    return order, ends


def _threshold_counts(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """True positives and predicted positives at each distinct threshold (high to low), and the
    number of positives; None when there are no positives (the curves are undefined)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order, ends = _descending_steps(s)
    tp = np.cumsum(y[order])[ends].astype(np.float64)
    return tp, (ends + 1).astype(np.float64), n_pos


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum: sum_k (R_k - R_{k-1}) P_k."""
    counts = _threshold_counts(scores, labels)
    if counts is None:
        return float("nan")
    tp, predicted, n_pos = counts
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    counts = _threshold_counts(scores, labels)
    if counts is None:
        return float("nan")
    tp, predicted, n_pos = counts
    f1 = 2 * tp / (predicted + n_pos)
    return float(f1.max())


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (nan without any region or normal
    pixel). maps: per image (H, W) scores; masks: per image (H, W) bool ground truth.

    PRO(t) = mean over ground-truth regions of the share of the region's pixels scoring >= t;
    FPR(t) = share of normal pixels (outside every region, in every image) scoring >= t. The curve
    starts at (0, 0), is linearly interpolated at fpr_limit and integrated with the trapezoid rule.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if len(maps) != len(masks):
        raise ValueError("maps and masks must pair up")
    scores, weights, normal = [], [], []
    regions_total = 0
    for score_map, mask in zip(maps, masks, strict=True):
        score_map = np.asarray(score_map, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if score_map.shape != mask.shape:
            raise ValueError(f"map {score_map.shape} and mask {mask.shape} differ in shape")
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
        sizes = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        regions_total += n - 1
        lab = labels.ravel()
        w = np.zeros(lab.shape, dtype=np.float64)
        inside = lab > 0
        w[inside] = 1.0 / sizes[lab[inside]]  # each region's pixels sum to 1
        scores.append(score_map.ravel())
        weights.append(w)
        normal.append(~inside)
    if regions_total == 0:
        return float("nan")
    s = np.concatenate(scores)
    w = np.concatenate(weights) / regions_total
    neg = np.concatenate(normal)
    n_neg = int(neg.sum())
    if n_neg == 0:
        return float("nan")
    order, ends = _descending_steps(s)
    fpr = np.cumsum(neg[order])[ends] / n_neg
    pro = np.cumsum(w[order])[ends]
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])
    cut = np.searchsorted(fpr, fpr_limit, side="right")  # fpr[:cut] <= limit
    x, y = fpr[:cut], pro[:cut]
    if cut < len(fpr) and x[-1] < fpr_limit:  # interpolate the point at the limit
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_lim)
    return float(np.trapezoid(y, x) / fpr_limit)
