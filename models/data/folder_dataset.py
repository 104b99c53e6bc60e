"""Reader for the folder-per-class layout (the magnetic tile dataset and `write_folder_dataset`).

    root/CLASS/NAME.jpg   image (grayscale or colour)
    root/CLASS/NAME.png   its mask, same size; a pixel is defect where the value > 127
    root/Free/NAME.jpg    defect-free image (mask optional, ignored)

Masks are JPEG-noisy, so thresholding and the InsA 1% rule decide what counts as an instance; an
image whose mask is empty after that rule is a defect-free record wherever it lives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from models.data.instances import instances_from_mask
from models.data.records import Instance, Record, read_rgb_image

logger = logging.getLogger(__name__)

FREE_FOLDER = "Free"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # .png is reserved for masks
MASK_SUFFIX = ".png"
MASK_THRESHOLD = 127


@dataclass
class _Entry:
    """Where a record's files live; kept apart from `Record` so records stay plain data."""

    image_path: Path
    mask_path: Path | None  # None for a defect-free image without a mask
    class_name: str | None  # None for defect-free records


def read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """bool (height, width) mask; resized (nearest), with a warning, if its size is wrong."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    if mask.shape != (height, width):
        logger.warning("mask %s is %s, image is %s: resizing", path, mask.shape, (height, width))
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask > MASK_THRESHOLD


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    with Image.open(path) as image:
        return image.size


def _is_free_folder(folder: Path) -> bool:
    return folder.name.lower() == FREE_FOLDER.lower()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class FolderDataset:
    """`DefectDataset` over root/CLASS/NAME.jpg + NAME.png; image ids are "CLASS/NAME"."""

    root: Path
    name: str = ""
    records: list[Record] = field(init=False)
    class_names: list[str] = field(init=False)
    _entries: dict[str, _Entry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a folder")
        self.name = self.name or self.root.name
        self.records, self._entries = [], {}
        folders = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        for folder in folders:
            self._scan_folder(folder)
        if not self.records:
            raise ValueError(f"no images found in class folders under {self.root}")
        self.class_names = sorted({name for record in self.records for name in record.classes})

    def _scan_folder(self, folder: Path) -> None:
        free = _is_free_folder(folder)
        for image_path in _image_files(folder):
            mask_path = image_path.with_suffix(MASK_SUFFIX)
            if not free and not mask_path.exists():
                logger.warning("skipping %s: no mask %s", image_path, mask_path.name)
                continue
            width, height = _image_size(image_path)
            class_name = None if free else folder.name
            if class_name is not None and not self._has_instances(mask_path, width, height):
                class_name = None  # an empty mask (after the 1% rule) is a defect-free image
            image_id = f"{folder.name}/{image_path.stem}"
            classes = () if class_name is None else (class_name,)
            self.records.append(Record(image_id, classes, width, height))
            self._entries[image_id] = _Entry(image_path, None if free else mask_path, class_name)

    @staticmethod
    def _has_instances(mask_path: Path, width: int, height: int) -> bool:
        return bool(instances_from_mask(read_mask(mask_path, width, height), "_"))

    def image_path(self, record: Record) -> Path:
        """The image file behind a record (the offline job stores the original bytes)."""
        return self._entries[record.image_id].image_path

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        """Image uint8 (H, W, 3) RGB and its instances (none for defect-free records)."""
        entry = self._entries[record.image_id]
        image = read_rgb_image(entry.image_path)
        height, width = image.shape[:2]
        if entry.class_name is None or entry.mask_path is None:
            return image, []
        mask = read_mask(entry.mask_path, width, height)
        return image, instances_from_mask(mask, entry.class_name)
