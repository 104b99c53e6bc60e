"""Test-time views of an inspected image: score it as given and mirrored, keep what they agree on.

The network was trained on flipped and rotated images, so a real defect should be found in every
mirror image of the picture, while many of its confident mistakes on plain texture are not: the
query selection and the attention land differently once the texture is mirrored. Each view's
detections are mapped back to the original pixels, grouped across views (same class, box IoU at
least `FUSION_IOU`, at most one detection per view in a group) and a group scores the mean of its
views' scores, a view that found nothing counting 0. The highest-scored member of a group lends
it its box and mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.box_ops import box_iou
from models.postprocess import Detections

VIEW_COUNTS = (1, 2, 4)  # as given; + left-right mirror; + upside-down and both
FUSION_IOU = 0.5  # box IoU at which two views' detections are the same find


def view_images(image: np.ndarray, views: int) -> list[np.ndarray]:
    """The `views` images (H, W, ...) scored for `image`: as given, mirrored left-right, then
    upside down and both, in that order (`unview` maps their detections back)."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    out = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]][:views]
    return [np.ascontiguousarray(v) for v in out]


def unview(det: Detections, view: int, width: int, height: int) -> Detections:
    """Detections found in view `view` of a (height, width) image, in the image's own pixels."""
    boxes = det.boxes.copy()
    if view in (1, 3):
        boxes[:, [0, 2]] = width - det.boxes[:, [2, 0]]
    if view in (2, 3):
        boxes[:, [1, 3]] = height - det.boxes[:, [3, 1]]
    masks = None if det.masks is None else unview_masks(det.masks, view)
    return Detections(det.class_index, det.scores, boxes, masks)


def unview_masks(masks: np.ndarray, view: int) -> np.ndarray:
    """(n, H, W) masks found in view `view`, in the image's own pixels (mirrored by strides, not
    copied)."""
    if view in (1, 3):
        masks = masks[:, :, ::-1]
    if view in (2, 3):
        masks = masks[:, ::-1]
    return masks


def _groups(cls: np.ndarray, scores: np.ndarray, boxes: np.ndarray, view: np.ndarray, views: int):
    """(seed index, fused score) per group, seeds taken in decreasing score."""
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    iou[cls[:, None] != cls[None, :]] = 0.0
    taken = np.zeros(len(scores), dtype=bool)
    out: list[tuple[int, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        if taken[i]:
            continue
        taken[i] = True
        total = float(scores[i])
        for v in range(views):
            if v == view[i]:
                continue
            cand = np.nonzero((view == v) & ~taken & (iou[i] >= FUSION_IOU))[0]
            if len(cand):
                j = cand[np.argmax(iou[i, cand])]
                taken[j] = True
                total += float(scores[j])
        out.append((int(i), total / views))
    return out


def fuse_views(
    per_view: Sequence[Detections],
    score_threshold: float | np.ndarray,
    max_detections: int = 100,
) -> Detections:
    """One image's detections from each of its views (already in its own pixels, `unview`) ->
    the agreed detections, scored by the views' mean, thresholded, ranked, at most
    `max_detections`, each with its best member's mask. One view is returned as it is."""
    if len(per_view) == 1:
        return per_view[0]
    fused, origin = fuse_with_origin(per_view, score_threshold, max_detections)
    if all(d.masks is not None for d in per_view):
        first = np.cumsum([0] + [len(d) for d in per_view[:-1]])  # each view's first row
        rows = first[origin[:, 0]] + origin[:, 1]
        fused.masks = np.concatenate([d.masks for d in per_view])[rows]  # type: ignore[misc]
    return fused


def fuse_with_origin(
    per_view: Sequence[Detections],
    score_threshold: float | np.ndarray,
    max_detections: int = 100,
) -> tuple[Detections, np.ndarray]:
    """`fuse_views` without masks, and the origin of each fused detection: (n, 2) int, the view
    and the index within that view's detections of the member that lends its box. A caller that
    made its detections without masks can then bring only these members' masks to full size."""
    if len(per_view) == 1:
        det = per_view[0]
        origin = np.stack([np.zeros(len(det), np.int64), np.arange(len(det))], axis=1)
        return Detections(det.class_index, det.scores, det.boxes, None), origin
    views = len(per_view)
    cls = np.concatenate([d.class_index for d in per_view]).astype(np.int64)
    scores = np.concatenate([d.scores for d in per_view]).astype(np.float32)
    boxes = np.concatenate([d.boxes for d in per_view]).astype(np.float32).reshape(-1, 4)
    view = np.concatenate([np.full(len(d), v) for v, d in enumerate(per_view)]).astype(np.int64)
    index = np.concatenate([np.arange(len(d)) for d in per_view]).astype(np.int64)
    groups = _groups(cls, scores, boxes, view, views) if len(scores) else []
    seed = np.array([g[0] for g in groups], dtype=np.int64)
    fused = np.array([g[1] for g in groups], dtype=np.float32)
    thr = np.asarray(score_threshold, dtype=np.float32)
    floor = thr[cls[seed]] if thr.ndim else np.full(len(seed), float(thr), dtype=np.float32)
    keep = np.nonzero(fused >= floor)[0]
    keep = keep[np.argsort(-fused[keep], kind="stable")][:max_detections]
    seed = seed[keep]
    det = Detections(class_index=cls[seed], scores=fused[keep], boxes=boxes[seed], masks=None)
    return det, np.stack([view[seed], index[seed]], axis=1).reshape(-1, 2)
