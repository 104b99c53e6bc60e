"""CutPaste defects on real surfaces (Li et al., CVPR 2021): a patch of an image, moved elsewhere
in the same image and slightly altered, becomes a labelled "foreign surface" defect.

The procedural generator (`synthetic.py`) paints defects on drawn surfaces; what it cannot give is
the real camera's surface texture around a defect. A pasted patch is ordinary surface of the very
same part, out of place: its only signature is that it differs from its surroundings (a seam, a
turned texture, a brighter or duller grind). Episodes of this class teach the prompt matcher that
relation, which is what defects unlike every training class share, without drawing on any class
held out of training: patches come only from the images of the wrapped training datasets.

Each patch is a rectangle (as in CutPaste) or an irregular region inside one, of 2% to 25% of the
image area and aspect ratio 1:4 to 4:1, flipped or turned a quarter in half the cases and always
rescaled in brightness by 8% to 30%, so it is visible yet still the same material.

Measured on magnetic tiles, classes held out of training (README, "Open-set"): masks gain and boxes
lose a little in the mean (14.8 / 12.3 -> 14.4 / 14.1 AP50), so training uses it only on request
(`scripts/train.py --cutpaste N`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from models.data.instances import instances_from_mask
from models.data.records import DefectDataset, Instance, Record
from models.data.synthetic import log_uniform

CLASS_NAME = "cutpaste"
AREA_RANGE = (0.02, 0.25)  # patch area as a share of the image area
ASPECT_RANGE = (0.25, 4.0)  # patch width / height
BRIGHTNESS_CHANGE = (0.08, 0.30)  # |gain - 1| applied to the pasted pixels
MAX_TRIES = 20  # placements tried per patch before giving up on it
MAX_OVERLAP = 0.02  # share of a patch allowed to cover a real (unlabelled here) defect
MIN_SIDE = 8  # images narrower or shorter than this (pixels) get no patch


def _patch_size(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    """(height, width) of a patch that fits well inside an h x w image."""
    area = log_uniform(rng, *AREA_RANGE) * h * w
    aspect = log_uniform(rng, *ASPECT_RANGE)
    ph = int(np.clip(np.sqrt(area / aspect), 4, 0.9 * h))
    pw = int(np.clip(area / max(ph, 1), 4, 0.9 * w))
    return ph, pw


def _region(rng: np.random.Generator, ph: int, pw: int) -> np.ndarray:
    """bool (ph, pw): the filled rectangle, or an irregular region inside it (half the time)."""
    if rng.random() < 0.5:
        return np.ones((ph, pw), bool)
    cells = int(rng.integers(2, 5))
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    noise = cv2.resize(coarse, (pw, ph), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[-1 : 1 : ph * 1j, -1 : 1 : pw * 1j]
    envelope = np.sqrt(np.clip(1 - (xs**2 + ys**2), 0, 1))
    region = (noise * 0.6 + 0.4) * envelope > rng.uniform(0.2, 0.35)
    return region if region.sum() > 0.2 * ph * pw else np.ones((ph, pw), bool)


def _altered(rng: np.random.Generator, patch: np.ndarray, h: int, w: int) -> np.ndarray:
    """The patch flipped or turned (half the time; turned only where it still fits an h x w
    image) and rescaled in brightness (always)."""
    if rng.random() < 0.5:
        turn = patch.shape[1] <= h and patch.shape[0] <= w
        patch = [np.fliplr, np.flipud, np.rot90 if turn else np.fliplr][int(rng.integers(3))](patch)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    gain = 1.0 + sign * rng.uniform(*BRIGHTNESS_CHANGE)
    return np.clip(patch.astype(np.float32) * gain, 0, 255)


def paste_patches(
    rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray, n_patches: int
) -> tuple[np.ndarray, list[Instance]]:
    """Paste `n_patches` altered patches of `image` into itself, clear of `occupied` (bool (H, W),
    the real defects) and of each other. Returns the new image and the patches' instances; a patch
    that finds no free place is skipped, so fewer (even none) may come back, and an image smaller
    than MIN_SIDE on a side gets none."""
    out = image.astype(np.float32)
    h, w = occupied.shape
    if min(h, w) < MIN_SIDE:
        return image.copy(), []
    pasted = np.zeros((h, w), bool)
    instances: list[Instance] = []
    for _ in range(n_patches):
        for _ in range(MAX_TRIES):
            ph, pw = _patch_size(rng, h, w)
            sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            patch = _altered(rng, image[sy : sy + ph, sx : sx + pw], h, w)
            region = _region(rng, *patch.shape[:2])
            qh, qw = region.shape
            dy, dx = int(rng.integers(0, h - qh + 1)), int(rng.integers(0, w - qw + 1))
            if abs(dy - sy) < qh // 2 and abs(dx - sx) < qw // 2:
                continue  # pasted onto itself: hardly a change
            placed = np.zeros((h, w), bool)
            placed[dy : dy + qh, dx : dx + qw] = region
            if (placed & pasted).any() or (placed & occupied).sum() > MAX_OVERLAP * placed.sum():
                continue
            found = instances_from_mask(placed, CLASS_NAME)
            if not found:
                continue
            kept = np.logical_or.reduce([inst.mask for inst in found])  # InsA drops specks
            window = kept[dy : dy + qh, dx : dx + qw]
            out[dy : dy + qh, dx : dx + qw][window] = patch[window]
            pasted |= kept
            instances.extend(found)
            break
    return np.clip(out, 0, 255).astype(np.uint8), instances


@dataclass
class CutPasteDataset:
    """`DefectDataset` of `n_images` CutPaste images over the images of `bases`.

    Records are planned up front from `seed` (which base image each one alters); pixels are made
    on demand from a generator seeded by (seed, index), so `load` is deterministic per record.
    The base image's own defects stay in the picture, unlabelled, and patches keep clear of them.
    """

    bases: Sequence[DefectDataset]
    n_images: int
    seed: int
    name: str = CLASS_NAME
    records: list[Record] = field(init=False)
    class_names: list[str] = field(init=False)
    _plan: dict[str, tuple[int, Record]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pool = [(k, r) for k, ds in enumerate(self.bases) for r in ds.records]
        if not pool:
            raise ValueError("CutPaste needs at least one base image")
        rng = np.random.default_rng(self.seed)
        picks = rng.integers(len(pool), size=self.n_images)
        self.records, self._plan = [], {}
        for i, j in enumerate(picks):
            k, base = pool[int(j)]
            record = Record(f"{i:06d}", (CLASS_NAME,), base.width, base.height)
            self.records.append(record)
            self._plan[record.image_id] = (k, base)
        self.class_names = [CLASS_NAME]

    def base_of(self, record: Record) -> tuple[DefectDataset, Record]:
        """The dataset and image that `record` alters."""
        k, base = self._plan[record.image_id]
        return self.bases[k], base

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        dataset, base = self.base_of(record)
        image, real = dataset.load(base)
        occupied = np.zeros(image.shape[:2], bool)
        for inst in real:
            occupied |= inst.mask
        rng = np.random.default_rng([self.seed, int(record.image_id)])
        out, instances = paste_patches(rng, image, occupied, int(rng.integers(1, 3)))
        return out, instances
