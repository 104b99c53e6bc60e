"""From patch distances to what a line needs: a pixel map, an image score and regions.

    patch grid (S/8, S/8) of nearest-neighbour distances (invalid cells: padding)
      -> bilinear upsampling to network pixels (cell centres kept in place), edge-replicated into
         the padding, Gaussian smoothing (sigma in network pixels), cropped to the image
      -> resized to the original image: the pixel anomaly map (H, W), float32
    image score = the largest patch distance (PatchCore's image score)
    regions     = 8-connected components of map >= threshold, smaller ones dropped (IAP-AS filters
                  candidate regions by size), each with its box, mask and peak value

Raw distances have no fixed scale, so responses carry `normalised(d, t) = 1 - 2^(-d / t)`: 0 for a
perfect match, 0.5 at the threshold t, approaching 1 far above it (monotonic, so thresholds and
rankings are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.anomaly.features import FEATURE_STRIDE, PatchGrid
from models.anomaly.memory import MemoryBank
from models.preprocess import Letterbox


@dataclass(frozen=True)
class AnomalyMap:
    """The anomaly signal of one image."""

    image_score: float  # largest patch distance
    pixel_map: np.ndarray  # (H, W) float32 distances in original pixels
    patch_scores: np.ndarray  # (S/8, S/8) float32 distances; padding cells 0


@dataclass(frozen=True)
class Region:
    """One connected region of the map above the threshold, in original pixels."""

    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 (x1, y1 exclusive)
    mask: np.ndarray  # (H, W) bool
    peak: float  # largest map value inside
    area: int  # pixels


def normalised(distance: np.ndarray | float, threshold: float) -> np.ndarray | float:
    """Distances -> [0, 1): 0.5 at the threshold (see the module docstring)."""
    t = max(float(threshold), 1e-12)
    return 1.0 - np.power(0.5, np.maximum(np.asarray(distance, dtype=np.float64), 0.0) / t)


def patch_scores(bank: MemoryBank, grid: PatchGrid) -> np.ndarray:
    """(S/8, S/8) float32 nearest-neighbour distances of the valid cells (padding: 0)."""
    out = np.zeros(grid.valid.shape, dtype=np.float32)
    out[grid.valid] = bank.nearest(grid.valid_features)
    return out


def pixel_map(scores: np.ndarray, valid: np.ndarray, lb: Letterbox, sigma: float) -> np.ndarray:
    """Patch scores (h, w) -> (H, W) float32 map over the original image (module docstring)."""
    rows = np.nonzero(valid.any(axis=1))[0]
    cols = np.nonzero(valid.any(axis=0))[0]
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros((lb.height, lb.width), dtype=np.float32)
    hv, wv = int(rows[-1]) + 1, int(cols[-1]) + 1  # the valid cells form the top-left block
    block = np.ascontiguousarray(scores[:hv, :wv], dtype=np.float32)
    s = FEATURE_STRIDE
    up = cv2.resize(block, (wv * s, hv * s), interpolation=cv2.INTER_LINEAR)
    w_in, h_in = lb.inner
    pad_h, pad_w = max(0, h_in - up.shape[0]), max(0, w_in - up.shape[1])
    if pad_h or pad_w:
        up = cv2.copyMakeBorder(up, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    up = up[:h_in, :w_in]
    if sigma > 0:
        up = cv2.GaussianBlur(up, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    if (h_in, w_in) != (lb.height, lb.width):
        up = cv2.resize(up, (lb.width, lb.height), interpolation=cv2.INTER_LINEAR)
    return up.astype(np.float32)


def anomaly_map(bank: MemoryBank, grid: PatchGrid, sigma: float) -> AnomalyMap:
    """Score one image's patch grid against a memory."""
    scores = patch_scores(bank, grid)
    image_score = float(scores[grid.valid].max()) if grid.valid.any() else 0.0
    return AnomalyMap(image_score, pixel_map(scores, grid.valid, grid.letterbox, sigma), scores)


def regions(
    pixel: np.ndarray, threshold: float, min_fraction: float = 0.0, max_regions: int = 100
) -> list[Region]:
    """Connected components (8-connected) of `pixel >= threshold`, largest peak first.

    Components smaller than `min_fraction` of the image area are dropped; at most `max_regions`.
    """
    hit = (pixel >= threshold).astype(np.uint8)
    if not hit.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hit, connectivity=8)
    min_area = min_fraction * pixel.shape[0] * pixel.shape[1]
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < max(1.0, min_area):
            continue
        mask = labels == i
        box = np.array([x, y, x + w, y + h], dtype=np.float32)
        out.append(Region(box, mask, float(pixel[mask].max()), area))
    out.sort(key=lambda r: -r.peak)
    return out[:max_regions]


def unexplained(region_mask: np.ndarray, explained: np.ndarray | None, max_overlap: float) -> bool:
    """True when at most `max_overlap` of the region lies inside `explained` (H, W) bool."""
    if explained is None:
        return True
    area = int(region_mask.sum())
    if area == 0:
        return False
    return int((region_mask & explained).sum()) / area <= max_overlap
