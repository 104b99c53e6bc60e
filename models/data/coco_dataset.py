"""Reader for COCO instance JSON: polygons, RLE (compressed or not) or boxes only.

Segmentations come in every shape found in the wild: a list of polygons, an RLE dict with list or
string counts, or that dict serialised as a string (JSON or a Python repr, as some converters
write). Everything is turned into compressed RLE once, at construction, which is also when the
InsA 1% rule is applied, so `Record.classes` is known without decoding a mask.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from models.data.instances import box_mask, is_large_enough
from models.data.records import Instance, Record, read_rgb_image

logger = logging.getLogger(__name__)

Rle = dict[str, Any]  # {"size": [h, w], "counts": bytes | str}


@dataclass
class _Annotation:
    """One kept instance: its class, exact box and compressed RLE (None for box-only)."""

    class_name: str
    box: np.ndarray  # float32 (4,) x0, y0, x1, y1
    rle: Rle | None


@dataclass
class _Entry:
    image_path: Path
    annotations: list[_Annotation]


def _parse_string(text: str, height: int, width: int) -> Any:
    """A segmentation stored as text: JSON, a Python repr of a dict/list, or bare RLE counts."""
    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return ast.literal_eval(stripped)
    return {"size": [height, width], "counts": stripped}


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> Rle | None:
    """Compressed RLE of any COCO segmentation form; None when there is no usable shape."""
    if isinstance(segmentation, str):
        segmentation = _parse_string(segmentation, height, width)
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            segmentation = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        return segmentation
    if isinstance(segmentation, list) and segmentation:
        polygons = segmentation if isinstance(segmentation[0], list) else [segmentation]
        polygons = [p for p in polygons if len(p) >= 6]  # a polygon needs three points
        if polygons:
            return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return None


def _coco_box(bbox: list[float], width: int, height: int) -> np.ndarray:
    """COCO [x, y, w, h] to a float32 xyxy box clipped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([x, y, x + w, y + h], dtype=np.float32)
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)


def _annotation(raw: dict, class_name: str, width: int, height: int) -> _Annotation | None:
    """Normalise one raw annotation; None when it has neither a mask nor a box."""
    rle = segmentation_to_rle(raw.get("segmentation"), height, width)
    if rle is not None:
        if list(rle["size"]) != [height, width]:
            logger.warning(
                "annotation %s: RLE size %s != image %s; skipped",
                raw.get("id"),
                rle["size"],
                [height, width],
            )
            return None
        if mask_utils.area(rle) == 0:
            return None
        x, y, w, h = mask_utils.toBbox(rle)
        return _Annotation(class_name, np.array([x, y, x + w, y + h], np.float32), rle)
    if raw.get("bbox"):
        return _Annotation(class_name, _coco_box(raw["bbox"], width, height), None)
    return None


def _kept_annotations(
    raws: list[dict], categories: dict[Any, str], width: int, height: int
) -> list[_Annotation]:
    """The annotations of one image that have a shape and pass the InsA 1% rule."""
    kept = []
    for raw in raws:
        if raw["category_id"] not in categories:
            raise ValueError(f"annotation {raw.get('id')}: unknown category_id")
        ann = _annotation(raw, categories[raw["category_id"]], width, height)
        if ann is not None and is_large_enough(ann.box, width, height):
            kept.append(ann)
    return kept


def _image_size(raw: dict, path: Path) -> tuple[int, int]:
    """(width, height) from the image record, or from the file header when absent."""
    if raw.get("width") and raw.get("height"):
        return int(raw["width"]), int(raw["height"])
    with Image.open(path) as image:
        return image.size


def _image_ids(images: list[dict]) -> list[str]:
    """Stable ids: file names without extension, or with it if that would make ids collide."""
    stems = [str(PurePosixPath(raw["file_name"]).with_suffix("")) for raw in images]
    if len(set(stems)) == len(stems):
        return stems
    return [str(PurePosixPath(raw["file_name"])) for raw in images]


@dataclass
class CocoDataset:
    """`DefectDataset` over a COCO instance JSON; image paths are relative to the JSON's folder."""

    json_path: Path
    image_root: Path | None = None  # where `file_name`s are resolved; default: the JSON's folder
    split: str | None = None  # keep only images whose record field `split` equals this
    name: str = ""
    records: list[Record] = field(init=False)
    class_names: list[str] = field(init=False)
    _entries: dict[str, _Entry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.json_path = Path(self.json_path)
        self.image_root = Path(self.image_root) if self.image_root else self.json_path.parent
        self.name = self.name or self._default_name()
        with open(self.json_path, encoding="utf-8") as handle:
            coco = json.load(handle)
        self.records, self._entries = [], {}
        self._build(coco)
        self.class_names = sorted({name for record in self.records for name in record.classes})

    def _default_name(self) -> str:
        stem = self.json_path.stem
        base = self.json_path.parent.name if stem == "annotations" else stem
        return f"{base}:{self.split}" if self.split else base

    def _build(self, coco: dict) -> None:
        categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
        images = [
            im for im in coco["images"] if self.split is None or im.get("split") == self.split
        ]
        if not images:
            raise ValueError(f"{self.json_path}: no images (split={self.split!r})")
        by_image: dict[Any, list[dict]] = {}
        for raw in coco.get("annotations", []):
            by_image.setdefault(raw["image_id"], []).append(raw)
        for image_id, raw_image in zip(_image_ids(images), images, strict=True):
            path = self.image_root / raw_image["file_name"]
            width, height = _image_size(raw_image, path)
            raws = by_image.get(raw_image["id"], [])
            annotations = _kept_annotations(raws, categories, width, height)
            classes = tuple(sorted({a.class_name for a in annotations}))
            self.records.append(Record(image_id, classes, width, height))
            self._entries[image_id] = _Entry(path, annotations)

    def image_path(self, record: Record) -> Path:
        """The image file behind a record (the offline job stores the original bytes)."""
        return self._entries[record.image_id].image_path

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        """Image uint8 (H, W, 3) RGB and its instances, masks decoded from RLE or filled boxes."""
        entry = self._entries[record.image_id]
        image = read_rgb_image(entry.image_path)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{entry.image_path} is {image.shape[:2]}, "
                f"annotations say {(record.height, record.width)}"
            )
        return image, [self._instance(a, record) for a in entry.annotations]

    @staticmethod
    def _instance(ann: _Annotation, record: Record) -> Instance:
        if ann.rle is None:
            mask = box_mask(ann.box, record.width, record.height)
        else:
            mask = mask_utils.decode(ann.rle).astype(bool)
        return Instance(class_name=ann.class_name, box=ann.box.copy(), mask=mask)
