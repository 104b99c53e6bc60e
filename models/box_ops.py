"""Box utilities written in plain torch (there is no CPU torchvision here).

Conventions: `xyxy` boxes are (x0, y0, x1, y1); `cxcywh` boxes are (cx, cy, w, h). The detector
predicts normalised cxcywh in [0, 1] relative to the padded network input; everything user-facing
is xyxy in original image pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy -> (N,); degenerate boxes have zero area."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.max(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=1e-9)


def best_overlaps(truth: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Per truth box (N, 4), its best IoU with any of `boxes` (M, 4) and that box's index; IoU 0
    and index 0 when M = 0 (recall-style checks: is each truth covered, and by what?)."""
    if len(truth) == 0 or len(boxes) == 0:
        return torch.zeros(len(truth), dtype=truth.dtype), torch.zeros(len(truth), dtype=torch.long)
    best, index = box_iou(truth, boxes).max(dim=1)
    return best, index


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes -> (N, M), in [-1, 1]."""
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=1e-9)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression; returns kept indices sorted by decreasing score."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            suppress = iou[i] > iou_threshold
            suppress[: i + 1] = False
            keep &= ~suppress
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of a probability, clamped so refinement deltas stay finite at 0 and 1."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def roi_grid(boxes: Tensor, size: int) -> Tensor:
    """Grid for `F.grid_sample` that crops xyxy boxes (normalised to [0, 1]) to size x size.

    Sample points sit at pixel centres of the output, so a 90-degree rotation of the image and the
    box yields exactly the rotated crop. Returns (R, size, size, 2) in grid_sample's [-1, 1] space.
    """
    steps = (torch.arange(size, dtype=boxes.dtype, device=boxes.device) + 0.5) / size  # (S,)
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))  # (R, 1)
    xs = x0 + (x1 - x0) * steps  # (R, S)
    ys = y0 + (y1 - y0) * steps
    gx = xs[:, None, :].expand(-1, size, -1)
    gy = ys[:, :, None].expand(-1, -1, size)
    return torch.stack((gx, gy), dim=-1) * 2 - 1
