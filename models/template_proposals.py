"""Exemplar-matched proposals: regions that look like an exemplar, kept as low-score candidates.

The network can only report what its queries outline. On a class held out of training it may
outline nothing at all: the magnetic-tile Uneven bands (a differently ground strip across the whole
tile) get no box from any query, while plain template matching of the exemplars' pixels finds a
fair share of them (README, "Open-set"). So each class's exemplar crops are also matched over the
whole image, as the classical baseline does (`models/evaluation/template_baseline.py`: the four
quarter turns, scales 0.71 / 1 / 1.41, the image at most 512 px, peaks of normalised
cross-correlation at least 0.3, the ten strongest per response map, class-wise NMS at 0.3), and
every peak becomes a detection of that class with score

    proposal_score * NCC,   its mask the filled box,

`proposal_score` being the model file's `template_proposal_score` P (0.2 for new models, 0 turns
them off; `scripts/calibrate.py --template-proposal-score P`). Template matching alone fires on
nearly every defect-free surface, so P is held below the file's calibrated threshold (at most
`PROPOSAL_MARGIN` of it, for a model calibrated low: `Predictor.proposal_score`): proposals cost
nothing at that threshold and never raise a false alarm there, and show when a user lowers the
threshold to search for a defect the network does not outline. Proposals are computed only for
classes whose threshold they can reach, and fill only the places the network's detections leave
free under `max_detections`. Sizes are in camera pixels, as for the exemplar check.

Which classes get them is decided by the outline gate (`models/outline_gate.py`): only those whose
own exemplars the network does not outline. Given to every class, they cost the default model 5
points on the classes it has seen, all four prompted together (48.5 / 48.1 -> 43.1 / 42.7 AP50 at
P = 0.2: they outrank its true detections that score below 0.2); given to the held-out Uneven
class alone, which the network never outlines, they lift it from 0.2 / 0.0 to 7.9 / 5.2 (README,
"Open-set").
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from models.box_ops import nms
from models.template_match import (
    MIN_CROP_SIDE,
    MIN_CROP_STD,
    ORIENTATIONS,
    SCALES,
    ExemplarCrop,
    gray,
    largest,
)

MAX_SIDE = 512  # images are matched with their longer side at most this many pixels
MIN_NCC = 0.3  # response peaks below this are not proposed
PEAKS_PER_MAP = 10  # strongest peaks kept per template version
NMS_IOU = 0.3  # class-wise suppression of overlapping proposals
PROPOSAL_MARGIN = 0.9  # proposals score at most this share of the model's calibrated threshold


def response_peaks(
    response: np.ndarray, size: tuple[int, int], min_score: float, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) xyxy, scores (N,)) of the `count` strongest local maxima of a
    `cv2.matchTemplate` response at least `min_score`, for a template of (h, w) `size`; a peak
    suppresses others within half a template."""
    th, tw = size
    kernel = np.ones((max(th // 2, 1) | 1, max(tw // 2, 1) | 1), np.uint8)
    local_max = (response >= cv2.dilate(response, kernel)) & (response >= min_score)
    ys, xs = np.nonzero(local_max)
    scores = response[ys, xs]
    best = np.argsort(-scores)[:count]
    ys, xs, scores = ys[best], xs[best], scores[best]
    boxes = np.stack([xs, ys, xs + tw, ys + th], axis=1).astype(np.float32)
    return boxes, scores.astype(np.float32)


def _templates(crop: ExemplarCrop, factor: float):
    """Every turned and scaled version of a crop, at a working image scale of `factor`."""
    ch, cw = crop.camera_size
    for s in SCALES:
        h, w = round(ch * s * factor), round(cw * s * factor)
        if min(h, w) < MIN_CROP_SIDE:
            continue
        interp = cv2.INTER_AREA if h < crop.pixels.shape[0] else cv2.INTER_LINEAR
        scaled = cv2.resize(crop.pixels, (w, h), interpolation=interp)
        for turns in range(ORIENTATIONS):
            yield np.ascontiguousarray(np.rot90(scaled, turns))


def match_regions(
    image: np.ndarray, crops: Sequence[ExemplarCrop]
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) xyxy in the image's pixels, NCC (N,)) of the regions that match the class's
    largest exemplar crops, strongest first, after NMS; `image` is grey or RGB uint8."""
    g = gray(image)
    factor = min(1.0, MAX_SIDE / max(g.shape))
    if factor < 1.0:
        g = cv2.resize(g, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    boxes, scores = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
    for crop in largest(crops):
        for template in _templates(crop, factor):
            th, tw = template.shape
            if th > g.shape[0] or tw > g.shape[1] or template.std() < MIN_CROP_STD:
                continue
            response = cv2.matchTemplate(g, template, cv2.TM_CCOEFF_NORMED)
            response = np.nan_to_num(np.clip(response, -1.0, 1.0), nan=0.0)
            found = response_peaks(response, (th, tw), MIN_NCC, PEAKS_PER_MAP)
            boxes.append(found[0])
            scores.append(found[1])
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    if len(all_scores) == 0:
        return all_boxes, all_scores
    keep = nms(torch.from_numpy(all_boxes), torch.from_numpy(all_scores), NMS_IOU).numpy()
    height, width = image.shape[:2]
    out = np.clip(all_boxes[keep] / factor, 0, [width, height, width, height])
    return out.astype(np.float32), all_scores[keep]


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool filled boxes."""
    masks = np.zeros((len(boxes), height, width), dtype=bool)
    for j, (x0, y0, x1, y1) in enumerate(np.round(np.asarray(boxes)).astype(int)):
        masks[j, max(y0, 0) : y1, max(x0, 0) : x1] = True
    return masks
