"""One entry point for scripts: a path in, the right reader out."""

from __future__ import annotations

from pathlib import Path

from models.data.coco_dataset import CocoDataset
from models.data.folder_dataset import FolderDataset
from models.data.records import DefectDataset


def load_dataset(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> DefectDataset:
    """A folder is read as folder-per-class, a .json file as COCO; anything else is an error.

    `image_root` and `split` only apply to COCO files, and passing them for a folder is refused
    rather than silently ignored.
    """
    path = Path(path)
    if path.is_dir():
        if image_root is not None or split is not None:
            raise ValueError("image_root and split apply to COCO json files, not to folders")
        return FolderDataset(path)
    if path.suffix.lower() == ".json" and path.is_file():
        return CocoDataset(path, image_root=Path(image_root) if image_root else None, split=split)
    raise ValueError(f"{path}: expected a dataset folder or a COCO .json file")
