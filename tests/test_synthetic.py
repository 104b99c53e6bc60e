"""Synthetic generator: reproducible, exact masks, every class drawable, fast, lazy dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.folder_dataset import FolderDataset
from models.data.instances import box_from_mask
from models.data.synthetic import (
    SURFACES,
    SYNTHETIC_CLASSES,
    SyntheticDataset,
    render_defect_image,
    write_folder_dataset,
)


def _render(seed: int, classes=("scratch", "spot"), size=(96, 128), surface=None):
    return render_defect_image(np.random.default_rng(seed), size, classes, surface=surface)


def test_same_seed_same_image_other_seed_other_image() -> None:
    image_a, instances_a = _render(7)
    image_b, instances_b = _render(7)
    np.testing.assert_array_equal(image_a, image_b)
    assert len(instances_a) == len(instances_b)
    for a, b in zip(instances_a, instances_b, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(_render(8)[0], image_a)


def _check_instances(image: np.ndarray, instances, classes) -> None:
    height, width = image.shape[:2]
    covered = np.zeros((height, width), bool)
    for inst in instances:
        assert inst.class_name in classes
        assert inst.mask.shape == (height, width) and inst.mask.any()
        np.testing.assert_array_equal(inst.box, box_from_mask(inst.mask))
        assert inst.box[2] - inst.box[0] >= 0.01 * width
        assert inst.box[3] - inst.box[1] >= 0.01 * height
        assert not (inst.mask & covered).any()
        covered |= inst.mask


@pytest.mark.parametrize("class_name", SYNTHETIC_CLASSES)
def test_every_class_renders_with_exact_masks(class_name: str) -> None:
    for seed in range(3):
        image, instances = _render(seed, (class_name,), size=(160, 200))
        assert image.dtype == np.uint8 and image.shape == (160, 200, 3)
        assert {i.class_name for i in instances} == {class_name}
        _check_instances(image, instances, {class_name})


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    classes=st.lists(st.sampled_from(SYNTHETIC_CLASSES), min_size=1, max_size=3, unique=True),
    surface=st.sampled_from(SURFACES),
)
def test_requested_classes_all_appear(seed: int, classes: list[str], surface: str) -> None:
    image, instances = _render(seed, tuple(classes), size=(64, 96), surface=surface)
    assert {i.class_name for i in instances} == set(classes)
    _check_instances(image, instances, set(classes))


def test_defect_free_image_has_no_instances() -> None:
    image, instances = render_defect_image(
        np.random.default_rng(0), (64, 64), ("pit",), n_defects=0
    )
    assert instances == [] and image.shape == (64, 64, 3)


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError):
        _render(0, ("not_a_defect",))


def test_dataset_is_lazy_and_deterministic() -> None:
    dataset = SyntheticDataset(n_images=5000, seed=3, size=(64, 64))
    assert len(dataset.records) == 5000
    assert len({r.image_id for r in dataset.records}) == 5000
    free_share = np.mean([not r.classes for r in dataset.records])
    assert 0.07 < free_share < 0.13
    assert max(len(r.classes) for r in dataset.records) == 2
    for record in dataset.records[:10]:
        image, instances = dataset.load(record)
        again, _ = SyntheticDataset(n_images=5000, seed=3, size=(64, 64)).load(record)
        np.testing.assert_array_equal(image, again)
        assert tuple(sorted({i.class_name for i in instances})) == record.classes


def test_write_folder_dataset_round_trips(tmp_path: Path) -> None:
    dataset = SyntheticDataset(
        n_images=30, seed=1, size=(80, 96), classes=("pit", "crack", "stain")
    )
    written = write_folder_dataset(dataset, tmp_path, n=12)
    assert len(written) == 12
    reread = FolderDataset(tmp_path)
    originals = {r.image_id.split("/")[-1]: r for r in dataset.records}
    for record in reread.records:
        original = originals[record.image_id.split("/")[-1]]
        assert record.classes == original.classes
        _, instances = reread.load(record)
        assert len(instances) == len(dataset.load(original)[1])
