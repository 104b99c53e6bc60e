"""Mask confidence as part of a detection's score, as Mask2Former scores its instances.

A query whose mask logits are decisive (pixels far above or below 0) has localised something; one
whose mask hovers around 0.5 has not, whatever its class probability says. Each detection's
probability is multiplied by

    m^w,  m = mean of sigmoid(mask logit) over the pixels of its binarised mask (0 if empty)

with w the model file's `mask_score_weight` (1 as in Mask2Former; 0 turns it off). On magnetic
tiles (prompt seed 42, against 150 defect-free tiles, AP50 box / mask) it lifts classes held out of
training, Blowhole 27.2 / 28.2 -> 32.1 / 32.2 and Fray 29.6 / 8.3 -> 31.7 / 18.4, and the default
model's seen classes, Blowhole 61.5 / 62.4 -> 66.2 / 67.6, Fray 44.7 / 46.3 -> 48.1 / 57.0, Uneven
21.9 / 14.8 -> 28.9 / 30.9 (each class prompted alone, convex mask filling off).
"""

from __future__ import annotations

import numpy as np


def mask_confidence(mask_logits: np.ndarray) -> np.ndarray:
    """(Q, h, w) mask logits -> (Q,) mean foreground probability over each binarised mask."""
    logits = mask_logits.reshape(len(mask_logits), -1).astype(np.float32)
    fg = logits > 0
    # only foreground (positive) logits are summed; the clip keeps exp finite for very negative
    # background ones without changing any foreground probability in float32
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
    area = fg.sum(axis=1)
    return np.where(area > 0, (prob * fg).sum(axis=1) / np.maximum(area, 1), 0.0).astype(np.float32)


def mask_factors(mask_logits: np.ndarray, weight: float) -> np.ndarray:
    """(Q,) factors m^w in [0, 1]; weight 0 gives 1 everywhere (empty masks included)."""
    if weight <= 0:
        return np.ones(len(mask_logits), dtype=np.float32)
    return (mask_confidence(mask_logits) ** weight).astype(np.float32)
