"""CutPaste defects: exact masks, only the patches change, reproducible, and never cut from an image
of a class held out of training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.cutpaste import CLASS_NAME, MAX_OVERLAP, CutPasteDataset, paste_patches
from models.data.instances import box_from_mask
from models.data.synthetic import SyntheticDataset, write_folder_dataset
from models.training.sources import open_sources


def _base(n: int = 12) -> SyntheticDataset:
    return SyntheticDataset(n, seed=3, size=(96, 128), classes=("pit", "scratch", "stain"))


def test_same_record_same_image_and_records_differ() -> None:
    data = CutPasteDataset([_base()], 6, seed=1)
    a_image, a_inst = data.load(data.records[2])
    b_image, b_inst = data.load(data.records[2])
    np.testing.assert_array_equal(a_image, b_image)
    assert [x.box.tolist() for x in a_inst] == [x.box.tolist() for x in b_inst]
    assert not np.array_equal(data.load(data.records[3])[0], a_image)
    assert data.class_names == [CLASS_NAME]
    assert all(r.classes == (CLASS_NAME,) for r in data.records)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_patches=st.integers(1, 3),
    shape=st.sampled_from([(72, 96), (30, 200), (200, 24), (64, 64)]),
)
def test_only_the_patches_change_and_masks_are_exact(
    seed: int, n_patches: int, shape: tuple[int, int]
) -> None:
    """Also on long thin images, where a quarter-turned patch could not fit."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (*shape, 3), dtype=np.uint8)
    occupied = np.zeros(shape, bool)
    occupied[5:15, 5:20] = True  # a real defect the patches must keep clear of
    out, instances = paste_patches(rng, image, occupied, n_patches)
    assert out.shape == image.shape and out.dtype == np.uint8
    covered = np.zeros(shape, bool)
    for inst in instances:
        assert inst.class_name == CLASS_NAME and inst.mask.any()
        np.testing.assert_array_equal(inst.box, box_from_mask(inst.mask))
        assert (inst.mask & occupied).sum() <= MAX_OVERLAP * inst.mask.sum()
        assert not (inst.mask & covered).any()
        covered |= inst.mask
    np.testing.assert_array_equal(out[~covered], image[~covered])


def test_a_patch_on_a_uniform_surface_is_still_visible() -> None:
    """The brightness change makes a patch of plain surface differ from where it lands."""
    image = np.full((80, 80, 3), 128, np.uint8)
    for seed in range(10):
        out, instances = paste_patches(
            np.random.default_rng(seed), image, np.zeros((80, 80), bool), 1
        )
        assert instances
        inside = instances[0].mask
        assert np.abs(out[inside].astype(int) - 128).mean() >= 0.08 * 128 - 1


def test_a_tiny_image_comes_back_unchanged() -> None:
    image = np.full((5, 40, 3), 90, np.uint8)
    out, instances = paste_patches(np.random.default_rng(0), image, np.zeros((5, 40), bool), 2)
    np.testing.assert_array_equal(out, image)
    assert instances == []


def test_held_out_images_are_never_cut(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_folder_dataset(
        SyntheticDataset(40, seed=5, size=(64, 64), classes=("pit", "scratch")), root, 40
    )
    sources, described = open_sources(
        [str(root)], 0, 0.5, 0, 64, frozenset({"scratch"}), cutpaste_images=60
    )
    data = sources[-1][0]
    assert isinstance(data, CutPasteDataset) and described[-1]["classes"] == [CLASS_NAME]
    assert {base.classes for _, base in map(data.base_of, data.records)} <= {(), ("pit",)}
    assert any(data.load(r)[1] for r in data.records[:5])
