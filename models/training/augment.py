"""Photometric and geometric augmentation for training images and their instance masks.

Paper C.4: horizontal flip, contrast 0.8-1.1, brightness 0.5-1.3. Rotations are added (90-degree
steps and small free angles) because defects appear at any orientation on a line and SSPE's
radial spectrum is built to be invariant to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import PAD_VALUE


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rot90: float = 0.5  # probability of a 90-degree turn
    free_rotation: float = 0.25  # probability of a rotation by up to +-max_angle degrees
    max_angle: float = 30.0
    contrast: tuple[float, float] = (0.8, 1.1)
    brightness: tuple[float, float] = (0.5, 1.3)


def photometric(rng: np.random.Generator, image: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    x = image.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(*cfg.contrast) + mean
    x = x * rng.uniform(*cfg.brightness)
    return x.clip(0, 255).astype(np.uint8)


def geometric(
    rng: np.random.Generator, image: np.ndarray, masks: list[np.ndarray], cfg: AugmentConfig
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply the same flips/rotations to the image (H, W, 3) and every mask (H, W)."""
    ops = []
    if rng.random() < cfg.hflip:
        ops.append(lambda a: a[:, ::-1])
    if rng.random() < cfg.vflip:
        ops.append(lambda a: a[::-1])
    if rng.random() < cfg.rot90:
        ops.append(lambda a: np.rot90(a))
    for op in ops:
        image = op(image)
        masks = [op(m) for m in masks]
    if rng.random() < cfg.free_rotation:
        h, w = image.shape[:2]
        mat = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-cfg.max_angle, cfg.max_angle), 1)
        image = cv2.warpAffine(
            np.ascontiguousarray(image),
            mat,
            (w, h),
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(PAD_VALUE,) * 3,
        )
        masks = [
            cv2.warpAffine(
                np.ascontiguousarray(m).astype(np.uint8), mat, (w, h), flags=cv2.INTER_NEAREST
            )
            > 0
            for m in masks
        ]
    return np.ascontiguousarray(image), [np.ascontiguousarray(m) for m in masks]
