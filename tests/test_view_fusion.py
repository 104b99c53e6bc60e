"""Test-time views (models/view_fusion.py): a defect found in every mirror image of the picture
keeps its score, one found in a single view loses in proportion, and each view maps back exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import set_scoring
from models.config import ModelConfig
from models.data.synthetic import render_defect_image
from models.postprocess import Detections
from models.predictor import PromptRegion, TorchPredictor
from models.runtime.base import ModelInfo
from models.view_fusion import VIEW_COUNTS, fuse_views, fuse_with_origin, unview, view_images
from tests.tiny import TINY_RANDOM, random_tiny_predictor


def _dets(boxes, scores, classes, shape=(40, 60)) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), *shape), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True):
        m[y0:y1, x0:x1] = True
    return Detections(np.asarray(classes, np.int64), np.asarray(scores, np.float32), boxes, masks)


def _box():
    return st.tuples(st.integers(0, 50), st.integers(0, 30), st.integers(2, 10), st.integers(2, 10))


@given(_box(), st.sampled_from([1, 2, 3]))
def test_a_view_maps_back_onto_the_image_exactly(raw, view):
    """A defect drawn on the image and found in a mirrored view lands on its own pixels."""
    h, w = 40, 60
    x, y, bw, bh = raw
    box = (x, y, min(x + bw, w), min(y + bh, h))
    image = np.zeros((h, w, 3), np.uint8)
    image[box[1] : box[3], box[0] : box[2]] = 255
    seen = view_images(image, 4)[view] > 0  # what the network would outline in that view
    found = _dets([_tight(seen[..., 0])], [0.9], [0])
    found.masks[:] = seen[..., 0]
    back = unview(found, view, w, h)
    np.testing.assert_array_equal(back.boxes[0], box)
    np.testing.assert_array_equal(back.masks[0], image[..., 0] > 0)


def _tight(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@settings(deadline=None)
@given(
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=5),
    st.sampled_from([2, 4]),
)
def test_a_defect_every_view_finds_keeps_its_mean_score(scores, views):
    boxes = [(10 * i, 0, 10 * i + 8, 8) for i in range(len(scores))]
    per_view = [_dets(boxes, scores, range(len(scores))) for _ in range(views)]
    fused = fuse_views(per_view, 0.0)
    assert len(fused) == len(scores)
    assert sorted(fused.scores.tolist()) == pytest.approx(sorted(scores), rel=1e-6)


@settings(deadline=None)
@given(st.floats(0.05, 1.0), st.sampled_from([2, 4]), st.integers(0, 3))
def test_a_find_of_one_view_scores_its_share(score, views, which):
    which = which % views
    found = _dets([(5, 5, 20, 20)], [score], [0])
    per_view = [found if v == which else _dets([], [], []) for v in range(views)]
    fused = fuse_views(per_view, 0.0)
    assert fused.scores.tolist() == pytest.approx([score / views])


def test_views_disagreeing_on_the_class_do_not_merge():
    a = _dets([(5, 5, 20, 20)], [0.8], [0])
    b = _dets([(5, 5, 20, 20)], [0.6], [1])
    fused = fuse_views([a, b], 0.0)
    assert sorted(zip(fused.class_index.tolist(), fused.scores.tolist(), strict=True)) == [
        (0, pytest.approx(0.4)),
        (1, pytest.approx(0.3)),
    ]


def test_fused_detections_are_ranked_thresholded_and_capped_with_their_masks():
    a = _dets([(0, 0, 10, 10), (30, 10, 50, 30), (12, 12, 20, 20)], [0.9, 0.5, 0.2], [0, 0, 1])
    b = _dets([(1, 0, 10, 10), (30, 10, 50, 30)], [0.7, 0.9], [0, 0])
    fused = fuse_views([a, b], np.array([0.3, 0.05], np.float32), max_detections=2)
    assert fused.scores.tolist() == pytest.approx([0.8, 0.7])
    np.testing.assert_array_equal(fused.boxes[0], [0, 0, 10, 10])  # the higher score lends its box
    np.testing.assert_array_equal(fused.boxes[1], [30, 10, 50, 30])
    assert fused.masks is not None and fused.masks.shape == (2, 40, 60)
    assert fused.masks[0, :10, :10].all() and not fused.masks[0, 20:].any()
    alone = fuse_views([a, b], np.array([0.3, 0.05], np.float32))
    assert 1 in alone.class_index.tolist(), "class 1's own threshold lets its half score through"


def test_one_view_changes_nothing_and_an_unknown_count_is_refused():
    a = _dets([(0, 0, 10, 10)], [0.9], [0])
    assert fuse_views([a], 0.95) is a
    with pytest.raises(ValueError, match="views must be one of"):
        view_images(np.zeros((4, 4, 3), np.uint8), 3)
    assert VIEW_COUNTS == (1, 2, 4)


def _as_found(det: Detections) -> list[tuple[int, float, tuple[float, ...]]]:
    return sorted(
        (int(c), round(float(s), 4), tuple(np.round(b, 1)))
        for c, s, b in zip(det.class_index, det.scores, det.boxes, strict=True)
    )


def test_a_mirrored_photo_of_the_part_gets_the_same_findings(tmp_path):
    """With two views, a part shot mirrored yields the same detections, mirrored, and the same
    scores: the two photos are scored in the same pair of views. With one view they differ."""
    size = TINY_RANDOM.image_size  # no letterbox padding, whose side would break the symmetry
    rng = np.random.default_rng(5)
    image = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
    image[10:22, 8:40] = 250  # an asymmetric bright defect
    mirrored = np.ascontiguousarray(image[:, ::-1])
    protos = rng.standard_normal((2, TINY_RANDOM.embed_dim)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    same = {}
    for views in (1, 2):
        pred = random_tiny_predictor(tmp_path / f"views{views}.pt", image_views=views)
        assert pred.info.image_views == views
        a, b = pred.detect([image, mirrored], protos, 1e-4, with_masks=False)
        assert len(a), "the random tiny model finds something"
        back = unview(b, 1, size, size)
        same[views] = _as_found(a) == _as_found(back)
    assert same == {1: False, 2: True}


@pytest.mark.parametrize("views", VIEW_COUNTS)
def test_masks_made_only_for_agreed_detections_are_the_masks_of_every_view(
    tiny_run, tmp_path, views
):
    """The predictor brings masks to full size only for the detections the views agree on; they
    are exactly the masks a fusion of every view's full-size detections gives, also where a
    mirrored view lends its member."""
    path = tmp_path / "m.pt"
    shutil.copy(tiny_run.model_path, path)
    set_scoring(path, image_views=views, mask_hull_min_fill=0.3, mask_score_weight=0.0)
    pred = TorchPredictor.load(path, threads=1)
    rng = np.random.default_rng(3)
    shots = [render_defect_image(rng, (90, 140), ("scratch", "spot"), 3, "plain") for _ in range(3)]
    image, inst = shots[0]
    protos = pred.encode_prompts(image, [PromptRegion(x.box, x.mask) for x in inst])
    lenders = set()
    for image, _ in shots:
        got = pred.detect([image], protos, 1e-3)[0]
        boxes, batch = pred.preprocess(view_images(image, views))
        every = pred.postprocess(pred.raw(batch, protos), boxes, 1e-3 / views)
        found = [unview(d, v, 140, 90) for v, d in enumerate(every)]
        want = fuse_views(found, 1e-3)
        lenders |= set(fuse_with_origin(found, 1e-3)[1][:, 0].tolist())
        assert len(got) >= 3, "the trained tiny model finds the three defects"
        assert _as_found(got) == _as_found(want)
        np.testing.assert_array_equal(got.masks, want.masks)
    assert lenders == set(range(views)), "every view lends some detection its mask"


def test_model_files_and_graphs_from_before_the_views_score_each_image_once():
    assert ModelConfig().image_views == 4
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "image_views"}
    assert ModelConfig.from_dict(legacy).image_views == 1
    with pytest.raises(ValueError, match="image_views"):
        ModelConfig(image_views=3)
    base = ModelInfo("f", 64, 8, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 5, 4, image_views=2)
    meta = base.to_metadata("detect")
    assert ModelInfo.from_metadata(meta).image_views == 2
    del meta["image_views"]
    assert ModelInfo.from_metadata(meta).image_views == 1
