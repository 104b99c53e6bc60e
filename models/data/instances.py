"""Binary masks to instances, with the InsA rule every dataset of the benchmark applies.

InsA (UniSpector, Appendix A): split a class mask into 8-connected components and drop those whose
box is narrower than 1% of the image width or shorter than 1% of its height (tiny noisy regions).
"""

from __future__ import annotations

import cv2
import numpy as np

from models.data.records import Instance

MIN_SIZE_FRACTION = 0.01  # components below 1% of the image width or height are dropped (InsA)


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight float32 box (x0, y0, x1, y1) of a non-empty mask, x1/y1 exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("box_from_mask needs a non-empty mask")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def is_large_enough(box: np.ndarray, width: int, height: int) -> bool:
    """The InsA size rule: keep a box at least 1% of the image wide and 1% of it tall."""
    box_w = float(box[2] - box[0])
    box_h = float(box[3] - box[1])
    return box_w >= MIN_SIZE_FRACTION * width and box_h >= MIN_SIZE_FRACTION * height


def instances_from_mask(mask: np.ndarray, class_name: str) -> list[Instance]:
    """Split a bool (H, W) class mask into InsA instances, in raster order of their first pixel."""
    height, width = mask.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    instances = []
    for label in range(1, count):  # label 0 is the background
        x, y, w, h = (int(v) for v in stats[label, :4])
        box = np.array([x, y, x + w, y + h], dtype=np.float32)
        if not is_large_enough(box, width, height):
            continue
        component = np.zeros((height, width), dtype=bool)
        component[y : y + h, x : x + w] = labels[y : y + h, x : x + w] == label
        instances.append(Instance(class_name=class_name, box=box, mask=component))
    return instances


def box_mask(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool (H, W) mask filling a float box, for sources that have boxes but no masks."""
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask
