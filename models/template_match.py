"""The exemplar-appearance check: a detection should look like one of its class's exemplars.

Prompt matching compares learned embeddings, which on classes held out of training also fire on
ordinary surface (tile edges, shadows, grinding marks) that an engineer would never confuse with
the exemplars. The exemplars' pixels say more: each detection's probability is multiplied by

    FLOOR + (1 - FLOOR) t^w,  t = max(0, best normalised cross-correlation of an exemplar crop
                                      near the detection)

with w the model file's `template_match_weight` (2 for new models, chosen on the default model's
seen classes; 0 turns the check off), where the crop is turned in the four orientations of the
square and resized by 0.71, 1 and 1.41,
only versions of a size compatible with the detection's box are tried (IoU >= 0.3 when centred on
it), and only at positions whose centre falls in the box's central half. A class whose exemplars
give no usable crop (all tinier than 4 px or flat) keeps factor 1; a detection that no crop of its
class fits in size gets t = 0. The floor (0.25) makes the check demote, never veto: a defect that
looks unlike every exemplar's pixels (a scratch at another angle than the four turns cover, a
shape the exemplars do not show) is still reported when the network is sure of it. This is the
template matching of the classical baseline (`models/evaluation/template_baseline.py`) used as a
check on the model's detections instead of as a detector. On magnetic tiles it lifts classes
held out of training (README, "Open-set").

Matching runs at a working scale that brings each template's longer side to at most
`WORK_SIDE` pixels, on a window of the image just large enough for the positions above, so its
cost grows with the number of detections checked, not with the image size. Sizes are compared in
camera pixels, so prompts and inspected images must come from the same optics (as for the size
prior).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.border_prior import touches_border

SCALES = (0.71, 1.0, 1.41)  # template resize factors, as the baseline
ORIENTATIONS = 4  # the 90-degree turns
MAX_CROPS_PER_CLASS = 4  # the largest exemplars of each class are kept
MIN_CROP_SIDE = 4  # smaller crops match noise
MIN_CROP_STD = 1.0  # a flat crop has no correlation to speak of
MAX_STORED_SIDE = 256  # crops are kept at most this large (downscaled beyond, scale recorded)
WORK_SIDE = 64  # templates are matched with their longer side at most this many pixels
MIN_SIZE_IOU = 0.3  # a template fits a box when their IoU, centred, is at least this
FLOOR = 0.25  # the factor of a detection that matches no exemplar at all


@dataclass(frozen=True)
class ExemplarCrop:
    """One exemplar's grey pixels. `scale` is crop pixels per camera pixel (<= 1)."""

    pixels: np.ndarray  # (h, w) uint8
    scale: float = 1.0
    at_border: bool = False  # the exemplar's box touches its prompt image's border (border_prior)

    @property
    def camera_size(self) -> tuple[float, float]:
        """(h, w) of the exemplar in camera pixels."""
        h, w = self.pixels.shape
        return h / self.scale, w / self.scale


def gray(image: np.ndarray) -> np.ndarray:
    """uint8 grey levels of an (H, W) or (H, W, 3) RGB image."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


def exemplar_crops(image: np.ndarray, boxes: np.ndarray) -> list[ExemplarCrop]:
    """Usable grey crops of the exemplar boxes (n, 4) xyxy drawn on one prompt image."""
    g = gray(image)
    out = []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    at_border = touches_border(boxes, g.shape[0], g.shape[1])
    for (x0, y0, x1, y1), edge in zip(boxes, at_border, strict=True):
        xa, ya = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        xb, yb = min(int(np.ceil(x1)), g.shape[1]), min(int(np.ceil(y1)), g.shape[0])
        crop = g[ya:yb, xa:xb]
        if min(crop.shape) < MIN_CROP_SIDE or crop.std() < MIN_CROP_STD:
            continue
        scale = min(1.0, MAX_STORED_SIDE / max(crop.shape))
        if scale < 1.0:
            size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        out.append(ExemplarCrop(np.ascontiguousarray(crop), scale, bool(edge)))
    return out


def interior_classes(class_crops: Sequence[Sequence[ExemplarCrop]]) -> list[bool]:
    """Per class, whether it has crops and none of them touches its prompt image's border."""
    return [bool(crops) and not any(c.at_border for c in crops) for crops in class_crops]


def largest(crops: Sequence[ExemplarCrop], k: int = MAX_CROPS_PER_CLASS) -> list[ExemplarCrop]:
    """The k crops with the largest camera area: the most telling ones (as the baseline keeps)."""
    return sorted(crops, key=lambda c: -c.camera_size[0] * c.camera_size[1])[:k]


def _centred_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def _versions(crop: ExemplarCrop, box_hw: tuple[float, float]):
    """(template (h, w) uint8 at working scale, working scale) of every size-compatible version."""
    ch, cw = crop.camera_size
    for s in SCALES:
        for turns in range(ORIENTATIONS):
            size = (ch * s, cw * s) if turns % 2 == 0 else (cw * s, ch * s)
            if _centred_iou(size, box_hw) < MIN_SIZE_IOU:
                continue
            work = min(1.0, WORK_SIDE / max(size))
            th, tw = max(round(size[0] * work), 1), max(round(size[1] * work), 1)
            if min(th, tw) < MIN_CROP_SIDE:
                continue
            pixels = np.ascontiguousarray(np.rot90(crop.pixels, turns))
            interp = cv2.INTER_AREA if th < pixels.shape[0] else cv2.INTER_LINEAR
            yield cv2.resize(pixels, (tw, th), interpolation=interp), work


def _best_match(g: np.ndarray, box: np.ndarray, template: np.ndarray, work: float) -> float | None:
    """Best NCC of `template` (at working scale `work`) centred in the box's central half."""
    th, tw = template.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    # camera-pixel window holding every template placement whose centre is in the central half
    half_w, half_h = tw / work / 2.0, th / work / 2.0
    wx0, wx1 = x0 + w / 4 - half_w, x1 - w / 4 + half_w
    wy0, wy1 = y0 + h / 4 - half_h, y1 - h / 4 + half_h
    xa, ya = max(int(np.floor(wx0)), 0), max(int(np.floor(wy0)), 0)
    xb, yb = min(int(np.ceil(wx1)), g.shape[1]), min(int(np.ceil(wy1)), g.shape[0])
    if xb <= xa or yb <= ya:
        return None
    window = g[ya:yb, xa:xb]
    if work < 1.0:
        size = (max(round(window.shape[1] * work), 1), max(round(window.shape[0] * work), 1))
        window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
    if window.shape[0] < th or window.shape[1] < tw or template.std() < MIN_CROP_STD:
        return None
    response = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    return float(np.nan_to_num(response, nan=0.0).max())


def match_score(image: np.ndarray, box: np.ndarray, crops: Sequence[ExemplarCrop]) -> float:
    """t in [0, 1]: the best correlation of any size-compatible version of any crop (0 if none);
    `image` is grey (H, W) or RGB (H, W, 3) uint8."""
    g = gray(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    box_hw = (max(y1 - y0, 1.0), max(x1 - x0, 1.0))
    best = 0.0
    for crop in crops:
        for template, work in _versions(crop, box_hw):
            found = _best_match(g, np.asarray(box), template, work)
            if found is not None:
                best = max(best, found)
    return float(min(max(best, 0.0), 1.0))


def template_factors(
    image: np.ndarray,
    boxes: np.ndarray,
    class_index: np.ndarray,
    class_crops: Sequence[Sequence[ExemplarCrop]],
    weight: float,
) -> np.ndarray:
    """(n,) factors FLOOR + (1 - FLOOR) t^w in [FLOOR, 1] for detections (boxes (n, 4) xyxy in
    the image's pixels).

    `class_crops[c]` holds class c's exemplar crops (`exemplar_crops`, `largest`); a class without
    any, or weight 0, gives 1.
    """
    out = np.ones(len(boxes), dtype=np.float32)
    if weight <= 0 or len(boxes) == 0:
        return out
    g = gray(image)
    for j, (box, c) in enumerate(zip(np.asarray(boxes), np.asarray(class_index), strict=True)):
        crops = class_crops[int(c)] if int(c) < len(class_crops) else ()
        if crops:
            out[j] = FLOOR + (1.0 - FLOOR) * match_score(g, box, crops) ** weight
    return out
