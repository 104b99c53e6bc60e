"""The exemplar-size prior: a detection much larger or smaller than every exemplar of its class is
probably something else.

An engineer who draws a few exemplars of a defect also says how large it is, and prompt matching
alone does not use that: on classes held out of training the best-matching regions are often far
off in size (magnetic tiles, split models: the highest-scored false detections on Blowhole images
are tile edges and shadows with a median side of 93 px against 14 px for the holes; on Fray images
small spots of 44 px against 235 px for the frays). Each detection's probability for a class is
multiplied by

    f = exp(-d^2 / (2 sigma^2)),  d = min over the class's exemplars |log(side) - log(side_k)|

with side = sqrt(box width * box height) in original image pixels. The nearest exemplar counts, so
a class taught with small and large examples keeps both sizes; sigma = 0.7 keeps 61% of the score
at twice or half an exemplar's size and 14% at four times. Sizes are compared in the pixels of the
camera, so prompts and inspected images must come from the same optics (as on one line); sigma = 0
turns the prior off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SIDE_PX = 1.0  # box sides are floored here so a degenerate box has a finite log size


def log_sides(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) xyxy boxes in pixels -> (n,) float64 log of sqrt(width * height)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.maximum(b[:, 2] - b[:, 0], MIN_SIDE_PX)
    h = np.maximum(b[:, 3] - b[:, 1], MIN_SIDE_PX)
    return 0.5 * (np.log(w) + np.log(h))


def size_factors(boxes: np.ndarray, class_sides: Sequence[np.ndarray], sigma: float) -> np.ndarray:
    """(Q, C) float32 factors in (0, 1] for boxes (Q, 4) xyxy in original pixels.

    `class_sides[c]` holds the log sides (`log_sides`) of class c's exemplars; a class without any
    (or sigma = 0) gets factor 1 everywhere.
    """
    q = log_sides(boxes)  # (Q,)
    out = np.ones((len(q), len(class_sides)), dtype=np.float64)
    if sigma <= 0:
        return out.astype(np.float32)
    for c, sides in enumerate(class_sides):
        ref = np.asarray(sides, dtype=np.float64).ravel()
        if ref.size == 0:
            continue
        d = np.abs(q[:, None] - ref[None, :]).min(axis=1)
        out[:, c] = np.exp(-(d * d) / (2.0 * sigma * sigma))
    return out.astype(np.float32)
