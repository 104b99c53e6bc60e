"""Synthetic parts for the anomaly tests: one product's surface (same look, new noise and pattern
phase each time) and the same surface with a drawn defect of known location."""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 128


def good_part(seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 RGB (size, size, 3): a machined surface with fine grooves and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    grooves = 12.0 * np.sin(2 * np.pi * (xx + 0.15 * yy) / 9.0 + phase)
    shade = 6.0 * (yy / size - 0.5)
    noise = rng.normal(0, 3.0, (size, size)).astype(np.float32)
    grey = np.clip(135 + grooves + shade + noise, 0, 255).astype(np.uint8)
    grey = cv2.GaussianBlur(grey, (0, 0), 0.6)
    return np.repeat(grey[..., None], 3, axis=2)


def defective_part(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A good part with a dark pit and a short scratch drawn on it; returns (image, defect mask)."""
    image = good_part(seed, size).copy()
    mask = np.zeros((size, size), np.uint8)
    cx, cy = int(0.62 * size), int(0.38 * size)
    cv2.circle(mask, (cx, cy), max(3, size // 18), 1, -1)
    cv2.line(mask, (cx - size // 10, cy + size // 8), (cx + size // 12, cy + size // 5), 1, 3)
    dark = mask.astype(bool)
    image[dark] = 40
    return image, dark
