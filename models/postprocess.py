"""Raw network outputs -> detections in original image pixels, shared by every backend.

Scores are per (query, class) sigmoid probabilities, optionally weighed by the exemplar-size prior
(`models/size_prior.py`) and by the query's mask confidence (`models/mask_score.py`), and compact
masks may be given their convex hull (`models/mask_hull.py`); each query keeps its best class (a
defect has one name); detections are ranked, thresholded, de-duplicated by class-wise NMS and
mapped back through the letterbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.box_ops import batched_nms, cxcywh_to_xyxy
from models.mask_hull import fill_compact
from models.mask_score import mask_factors
from models.preprocess import Letterbox
from models.size_prior import size_factors


@dataclass
class Detections:
    """Detections of one image, sorted by decreasing score."""

    class_index: np.ndarray  # (n,) int index into the prototype list
    scores: np.ndarray  # (n,) float32 in [0, 1]
    boxes: np.ndarray  # (n, 4) float32 xyxy in original pixels
    masks: np.ndarray | None  # (n, H, W) bool in original pixels, or None when not requested

    def __len__(self) -> int:
        return len(self.scores)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _boxes_from_masks(masks: np.ndarray, fallback: torch.Tensor) -> torch.Tensor:
    """Tight normalised xyxy boxes of binary masks (n, h, w); empty masks keep `fallback`."""
    out = fallback.clone()
    h, w = masks.shape[-2:]
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (n, h), (n, w)
    for i in np.nonzero(rows.any(axis=1))[0]:
        ys, xs = np.nonzero(rows[i])[0], np.nonzero(cols[i])[0]
        out[i] = torch.tensor([xs[0] / w, ys[0] / h, (xs[-1] + 1) / w, (ys[-1] + 1) / h])
    return out


def postprocess(
    logits: np.ndarray,
    boxes: np.ndarray,
    mask_logits: np.ndarray | None,
    letterbox: Letterbox,
    score_threshold: float | np.ndarray = 0.3,
    max_detections: int = 100,
    nms_iou: float = 0.6,
    with_masks: bool = True,
    box_from_mask: bool = True,
    class_sides: Sequence[np.ndarray] | None = None,
    size_sigma: float = 0.0,
    mask_hull_min_fill: float = 1.0,
    mask_score_weight: float = 0.0,
) -> Detections:
    """One image: logits (Q, C), boxes (Q, 4) normalised cxcywh, mask_logits (Q, h, w).

    `select_queries` chooses and scores the detections; with `with_masks`, `query_masks` gives
    each its mask in original pixels. A kept mask that fills at least `mask_hull_min_fill` of its
    convex hull is given the hull (`models/mask_hull.py`; 1 leaves masks as predicted).
    """
    det, queries = select_queries(
        logits,
        boxes,
        mask_logits,
        letterbox,
        score_threshold,
        max_detections,
        nms_iou,
        box_from_mask,
        class_sides,
        size_sigma,
        mask_score_weight,
    )
    if with_masks and mask_logits is not None:
        det.masks = query_masks(mask_logits, queries, letterbox, mask_hull_min_fill)
    return det


def select_queries(
    logits: np.ndarray,
    boxes: np.ndarray,
    mask_logits: np.ndarray | None,
    letterbox: Letterbox,
    score_threshold: float | np.ndarray = 0.3,
    max_detections: int = 100,
    nms_iou: float = 0.6,
    box_from_mask: bool = True,
    class_sides: Sequence[np.ndarray] | None = None,
    size_sigma: float = 0.0,
    mask_score_weight: float = 0.0,
) -> tuple[Detections, np.ndarray]:
    """One image's detections without masks, and the query each came from (`query_masks` turns
    those into masks later, once it is known which detections survive).

    `score_threshold` may be one value or one per class (C,). With `box_from_mask`, a detection's
    box is the tight box of its predicted mask wherever that mask is non-empty: the stride-4 mask
    head localises small defects more precisely than the regressed box (as in Mask2Former).
    With `class_sides` (per class, the log sizes of its exemplars: `models/size_prior.py`) and
    `size_sigma` > 0, each query's class probabilities are weighed by how close its box is in size
    to the class's exemplars before the class is chosen and the threshold applies. With
    `mask_score_weight` w > 0 they are also multiplied by the query's mask confidence to the
    power w (`models/mask_score.py`).
    """
    probs = _sigmoid(logits.astype(np.float32))
    xyxy = cxcywh_to_xyxy(torch.from_numpy(boxes.astype(np.float32)))
    if box_from_mask and mask_logits is not None and len(xyxy):
        xyxy = _boxes_from_masks(mask_logits > 0, xyxy)
    if class_sides is not None and size_sigma > 0 and probs.shape[1]:
        if len(class_sides) != probs.shape[1]:
            n, c = len(class_sides), probs.shape[1]
            raise ValueError(f"exemplar sizes for {n} classes, but {c} classes scored")
        pixel_boxes = letterbox.boxes_to_original(xyxy.numpy().reshape(-1, 4))
        probs = probs * size_factors(pixel_boxes, class_sides, size_sigma)
    if mask_score_weight > 0 and mask_logits is not None and len(probs):
        probs = probs * mask_factors(mask_logits, mask_score_weight)[:, None]
    cls = probs.argmax(axis=1) if probs.shape[1] else np.zeros(len(probs), dtype=np.int64)
    score = probs.max(axis=1) if probs.shape[1] else np.zeros(len(probs), dtype=np.float32)
    thr = np.broadcast_to(np.asarray(score_threshold, dtype=np.float32), (max(probs.shape[1], 1),))
    keep = np.nonzero(score >= thr[cls])[0]
    keep = keep[np.argsort(-score[keep], kind="stable")]
    xyxy = xyxy[torch.from_numpy(keep)]
    if len(keep):
        kept = batched_nms(
            xyxy, torch.from_numpy(score[keep]), torch.from_numpy(cls[keep]), nms_iou
        ).numpy()
        keep, xyxy = keep[kept], xyxy[kept]
    keep, xyxy = keep[:max_detections], xyxy[:max_detections].numpy()
    det = Detections(
        class_index=cls[keep].astype(np.int64),
        scores=score[keep].astype(np.float32),
        boxes=letterbox.boxes_to_original(xyxy.reshape(-1, 4)),
        masks=None,
    )
    return det, keep.astype(np.int64)


def query_masks(
    mask_logits: np.ndarray,
    queries: np.ndarray,
    letterbox: Letterbox,
    mask_hull_min_fill: float = 1.0,
) -> np.ndarray:
    """(n, H, W) bool masks in original pixels of the queries `queries` (indices into the
    mask_logits (Q, h, w)), compact ones given their convex hull (`models/mask_hull.py`)."""
    probs = letterbox.masks_to_original(_sigmoid(mask_logits[queries].astype(np.float32)))
    return fill_compact(probs > 0.5, mask_hull_min_fill)
