"""The shared vocabulary of every dataset reader: instances, image records and the reader protocol.

Training, evaluation and prompt extraction only ever see these types, so a new source of data
(a folder of masks, a COCO file, the synthetic generator) plugs in by implementing
`DefectDataset` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


@dataclass(frozen=True, eq=False)
class Instance:
    """One defect instance of one image.

    `eq=False` keeps identity comparison and hashing: field-wise `==` on numpy arrays is ambiguous.
    """

    class_name: str
    box: np.ndarray  # float32 (4,) x0, y0, x1, y1 in pixels; x1/y1 exclusive (x1 = x0 + w)
    mask: np.ndarray  # bool (H, W), full image size


@dataclass(frozen=True)
class Record:
    """What is known about an image without decoding it: enough to split prompts and queries."""

    image_id: str  # unique and stable within a dataset, e.g. "Blowhole/exp1_num_108719"
    classes: tuple[str, ...]  # sorted distinct class names present; () for a defect-free image
    width: int
    height: int


class DefectDataset(Protocol):
    """A read-only collection of images with instance annotations."""

    name: str
    records: list[Record]
    class_names: list[str]  # sorted defect classes present in `records` (never "Free")

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        """Image uint8 (H, W, 3) RGB and the instances of that image."""
        ...


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB; grayscale files are repeated to 3 channels.

    Raises instead of returning None (cv2's habit) so a missing file names itself. EXIF
    orientation is ignored: masks (PNG) carry none, so honouring it would turn image and mask apart.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
