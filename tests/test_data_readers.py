"""Readers: InsA instance rule, folder layout and COCO JSON in all its segmentation forms."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from models.data.coco_dataset import CocoDataset, segmentation_to_rle
from models.data.folder_dataset import FolderDataset
from models.data.instances import box_from_mask, instances_from_mask
from models.data.loading import load_dataset

# ----------------------------------------------------------------------------------------------
# instances


def test_diagonal_neighbours_are_one_instance() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10, 10] = mask[11, 11] = True  # touch only at a corner
    mask[50, 50] = mask[50, 52] = True  # one pixel gap: two instances
    instances = instances_from_mask(mask, "pit")
    assert len(instances) == 3
    assert instances[0].mask.sum() == 2
    np.testing.assert_array_equal(instances[0].box, [10, 10, 12, 12])


def test_one_percent_rule_drops_thin_components() -> None:
    mask = np.zeros((200, 300), bool)  # 1% is 3 px wide, 2 px tall
    mask[10:50, 10:12] = True  # 2 px wide: dropped
    mask[10:50, 20:23] = True  # 3 px wide: kept
    mask[100:101, 50:150] = True  # 1 px tall: dropped
    mask[150:152, 50:150] = True  # 2 px tall: kept
    boxes = [inst.box.tolist() for inst in instances_from_mask(mask, "scratch")]
    assert boxes == [[20, 10, 23, 50], [50, 150, 150, 152]]


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_instances_partition_the_mask(mask: np.ndarray) -> None:
    instances = instances_from_mask(mask, "x")
    covered = np.zeros_like(mask)
    height, width = mask.shape
    for inst in instances:
        assert inst.mask.shape == mask.shape and inst.box.dtype == np.float32
        assert not (inst.mask & covered).any()  # disjoint
        assert not (inst.mask & ~mask).any()  # inside the class mask
        np.testing.assert_array_equal(inst.box, box_from_mask(inst.mask))
        assert inst.box[2] - inst.box[0] >= 0.01 * width
        assert inst.box[3] - inst.box[1] >= 0.01 * height
        covered |= inst.mask


# ----------------------------------------------------------------------------------------------
# folder layout


def _write(folder: Path, name: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.jpg"), image)
    if mask is not None:
        cv2.imwrite(str(folder / f"{name}.png"), mask)


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "folder_dataset"
    gray = np.full((60, 80), 120, np.uint8)
    defect = np.zeros((60, 80), np.uint8)
    defect[10:20, 10:30] = 250
    defect[40:50, 50:70] = 200
    defect[5, 70] = 110  # JPEG-like noise below the 127 threshold
    _write(root / "Blowhole", "a", gray, defect)
    _write(root / "Blowhole", "empty", gray, np.zeros((60, 80), np.uint8))
    _write(root / "Blowhole", "no_mask", gray, None)
    _write(root / "Free", "clean", gray, None)
    _write(root / "Free", "clean_masked", gray, np.zeros((60, 80), np.uint8))
    _write(root / "Crack", "c", np.dstack([gray] * 3), defect)
    return root


def test_folder_records_and_defect_free(folder_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        dataset = FolderDataset(folder_root)
    assert "no_mask" in caplog.text
    by_id = {r.image_id: r for r in dataset.records}
    assert sorted(by_id) == [
        "Blowhole/a",
        "Blowhole/empty",
        "Crack/c",
        "Free/clean",
        "Free/clean_masked",
    ]
    assert by_id["Blowhole/a"].classes == ("Blowhole",)
    assert by_id["Blowhole/empty"].classes == ()
    assert by_id["Free/clean"].classes == ()
    assert (by_id["Crack/c"].width, by_id["Crack/c"].height) == (80, 60)
    assert dataset.class_names == ["Blowhole", "Crack"]


def test_folder_load_gives_rgb_and_instances(folder_root: Path) -> None:
    dataset = FolderDataset(folder_root)
    by_id = {r.image_id: r for r in dataset.records}
    image, instances = dataset.load(by_id["Blowhole/a"])
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    assert [i.class_name for i in instances] == ["Blowhole", "Blowhole"]
    assert [i.box.tolist() for i in instances] == [[10, 10, 30, 20], [50, 40, 70, 50]]
    assert dataset.load(by_id["Free/clean"])[1] == []
    assert dataset.load(by_id["Blowhole/empty"])[1] == []


# ----------------------------------------------------------------------------------------------
# COCO


def _rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    counts, value, run = [], 0, 0
    for pixel in mask.flatten(order="F").astype(int):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture()
def coco_json(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    h, w = 50, 100
    (tmp_path / "imgs").mkdir()
    for name in ("poly", "rle", "box", "free", "tiny"):
        cv2.imwrite(str(tmp_path / "imgs" / f"{name}.png"), np.full((h, w), 90, np.uint8))
    blob = np.zeros((h, w), bool)
    blob[5:20, 30:60] = True
    other = np.zeros((h, w), bool)
    other[30:45, 70:90] = True
    images = [
        {"id": i + 1, "file_name": f"imgs/{n}.png", "width": w, "height": h, "split": s}
        for i, (n, s) in enumerate(
            [
                ("poly", "train"),
                ("rle", "train"),
                ("box", "test"),
                ("free", "train"),
                ("tiny", "train"),
            ]
        )
    ]
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]],
        },
        {"id": 2, "image_id": 2, "category_id": 2, "segmentation": str(_rle_of(blob))},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": _uncompressed(other)},
        {"id": 4, "image_id": 3, "category_id": 2, "bbox": [20, 5, 30, 10]},
        {"id": 5, "image_id": 5, "category_id": 1, "bbox": [20, 5, 0.5, 10]},  # < 1% wide
    ]
    categories = [{"id": 1, "name": "scratch"}, {"id": 2, "name": "patch"}]
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path, {"blob": blob, "other": other}


def test_coco_records(coco_json) -> None:
    path, _ = coco_json
    dataset = CocoDataset(path)
    classes = {r.image_id: r.classes for r in dataset.records}
    assert classes == {
        "imgs/poly": ("scratch",),
        "imgs/rle": ("patch", "scratch"),
        "imgs/box": ("patch",),
        "imgs/free": (),
        "imgs/tiny": (),
    }
    assert dataset.class_names == ["patch", "scratch"]


def test_coco_polygon_rle_string_and_box_only(coco_json) -> None:
    path, masks = coco_json
    dataset = CocoDataset(path)
    by_id = {r.image_id: r for r in dataset.records}
    image, (poly,) = dataset.load(by_id["imgs/poly"])
    assert image.shape == (50, 100, 3)
    assert poly.class_name == "scratch" and poly.mask[15, 20] and not poly.mask[5, 5]
    np.testing.assert_array_equal(poly.box, box_from_mask(poly.mask))

    _, instances = dataset.load(by_id["imgs/rle"])
    by_class = {i.class_name: i for i in instances}
    np.testing.assert_array_equal(by_class["patch"].mask, masks["blob"])  # Python-repr RLE string
    np.testing.assert_array_equal(by_class["scratch"].mask, masks["other"])  # uncompressed RLE
    np.testing.assert_array_equal(by_class["patch"].box, [30, 5, 60, 20])

    _, (box_only,) = dataset.load(by_id["imgs/box"])
    np.testing.assert_array_equal(box_only.box, [20, 5, 50, 15])
    assert box_only.mask.sum() == 30 * 10 and box_only.mask[5:15, 20:50].all()


@pytest.mark.parametrize("form", ["dict", "json", "python_repr", "uncompressed", "bare_counts"])
def test_every_segmentation_form_decodes_to_the_same_mask(form: str) -> None:
    mask = np.zeros((30, 40), bool)
    mask[3:9, 5:25] = True
    mask[20:28, 30:33] = True
    rle = _rle_of(mask)
    segmentation = {
        "dict": rle,
        "json": json.dumps(rle),
        "python_repr": str(rle),
        "uncompressed": _uncompressed(mask),
        "bare_counts": rle["counts"],
    }[form]
    decoded = mask_utils.decode(segmentation_to_rle(segmentation, 30, 40)).astype(bool)
    np.testing.assert_array_equal(decoded, mask)


def test_coco_split_filter(coco_json) -> None:
    path, _ = coco_json
    assert [r.image_id for r in CocoDataset(path, split="test").records] == ["imgs/box"]
    with pytest.raises(ValueError):
        CocoDataset(path, split="nonexistent")


def test_load_dataset_picks_reader(coco_json, folder_root: Path) -> None:
    path, _ = coco_json
    assert isinstance(load_dataset(path), CocoDataset)
    assert isinstance(load_dataset(folder_root), FolderDataset)
    with pytest.raises(ValueError):
        load_dataset(path.with_suffix(".txt"))
