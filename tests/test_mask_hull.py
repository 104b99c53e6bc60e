"""Convex filling of compact masks (models/mask_hull.py): the maths as properties, then what a user
sees: a stain predicted in pieces comes back whole, a curved scratch keeps its shape, and boxes and
scores never move."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.mask_hull import fill_compact, hull_mask
from models.postprocess import postprocess
from models.preprocess import Letterbox
from models.runtime.base import ModelInfo


def disc(size: int, cx: int, cy: int, r: int) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    cv2.circle(out, (cx, cy), r, 1, -1)
    return out.astype(bool)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


masks = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).random((24, 24)) < 0.15
)


@settings(max_examples=60, deadline=None)
@given(mask=masks)
def test_the_hull_contains_the_mask_and_keeps_its_box(mask):
    hull = hull_mask(mask)
    assert np.all(hull[mask])
    if mask.any():
        assert box_of(hull) == box_of(mask)
    else:
        assert not hull.any()


@settings(max_examples=60, deadline=None)
@given(mask=masks, fill=st.floats(0.0, 1.0))
def test_filling_never_removes_a_pixel_nor_leaves_the_box(mask, fill):
    out = fill_compact(mask[None], fill)[0]
    assert np.all(out[mask])
    if mask.any():
        assert box_of(out) == box_of(mask)


@given(cx=st.integers(15, 25), cy=st.integers(15, 25), r=st.integers(3, 12))
def test_a_convex_mask_changes_at_most_on_its_outline(cx, cy, r):
    mask = disc(40, cx, cy, r)
    outline = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    out = fill_compact(mask[None], 0.3)[0]
    assert np.all(out[mask]) and not np.any(out & ~outline)


def test_a_stain_predicted_in_pieces_comes_back_whole():
    stain = disc(64, 32, 32, 20)
    pieces = stain.copy()
    pieces[28:36, :] = False  # a band across it missed
    pieces[36:44, 12:30] = False  # and a hole in one half
    out = fill_compact(pieces[None], 0.3)[0]
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(pieces, stain) < 0.75 and iou(out, stain) > 0.95


def test_a_curved_scratch_keeps_its_shape():
    arc = np.zeros((64, 64), np.uint8)
    cv2.ellipse(arc, (32, 32), (28, 28), 0, 200, 340, 1, 2)
    arc = arc.astype(bool)
    assert arc.sum() < 0.3 * hull_mask(arc).sum()  # a thin curve fills little of its hull
    assert np.array_equal(fill_compact(arc[None], 0.3)[0], arc)


def test_min_fill_one_turns_it_off():
    pieces = disc(64, 32, 32, 20)
    pieces[28:36, :] = False
    assert np.array_equal(fill_compact(pieces[None], 1.0)[0], pieces)


def _one_detection(mask_cells: np.ndarray):
    """Raw outputs of a 128 x 128 image (mask cells of 4 px) with one query of mask `mask_cells`."""
    lb = Letterbox.fit(128, 128, 128)
    logits = np.array([[2.0]], np.float32)
    boxes = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
    return logits, boxes, np.where(mask_cells, 10.0, -10.0)[None].astype(np.float32), lb


def test_postprocessing_fills_masks_but_moves_no_box_or_score():
    cells = disc(32, 16, 16, 9)
    cells[14:18, :] = False
    logits, boxes, mask_logits, lb = _one_detection(cells)
    plain = postprocess(logits, boxes, mask_logits, lb, 0.1)
    filled = postprocess(logits, boxes, mask_logits, lb, 0.1, mask_hull_min_fill=0.3)
    assert np.array_equal(plain.boxes, filled.boxes)
    assert np.array_equal(plain.scores, filled.scores)
    assert filled.masks[0].sum() > plain.masks[0].sum()
    assert np.all(filled.masks[0][plain.masks[0]])
    assert filled.masks[0][64, 64]  # the missed band through the centre is filled


def test_the_setting_is_validated_and_old_files_keep_masks_as_predicted():
    with pytest.raises(ValueError, match="mask_hull_min_fill"):
        ModelConfig(mask_hull_min_fill=1.5)
    assert ModelConfig().mask_hull_min_fill == 0.3
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "mask_hull_min_fill"}
    assert ModelConfig.from_dict(legacy).mask_hull_min_fill == 1.0


def test_exported_graphs_carry_the_setting():
    info = ModelInfo("f" * 64, 128, 64, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 50, 4, 0.7, 0.3)
    meta = info.to_metadata("detector")
    assert ModelInfo.from_metadata(meta).mask_hull_min_fill == 0.3
    del meta["mask_hull_min_fill"]  # a graph exported before the setting existed
    assert ModelInfo.from_metadata(meta).mask_hull_min_fill == 1.0
