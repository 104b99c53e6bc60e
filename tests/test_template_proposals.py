"""Exemplar-matched proposals (models/template_proposals.py): a region that looks like an exemplar
but that the network did not outline is reported, at a score capped below the calibrated
threshold, only when the caller's threshold is low enough to show it (which classes get them:
tests/test_outline_gate.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.box_ops import box_iou
from models.config import ModelConfig
from models.postprocess import Detections
from models.predictor import Predictor
from models.runtime.base import ModelInfo
from models.template_match import ExemplarCrop, exemplar_crops
from models.template_proposals import box_masks, match_regions
from tests.test_template_match import _box, _defect, _paste, _surface


@pytest.fixture(scope="module")
def prompt_crops() -> list[ExemplarCrop]:
    defect = _defect(0)
    prompt = _paste(_surface(1), defect, 30, 40)
    return exemplar_crops(prompt, _box(30, 40, defect)[None])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(torch.from_numpy(a[None]), torch.from_numpy(b[None]))[0, 0])


def test_the_exemplar_is_found_anywhere_and_in_any_quarter_turn(prompt_crops):
    for turns in range(4):
        defect = np.ascontiguousarray(np.rot90(_defect(7), turns))
        image = _paste(_surface(2), defect, 100, 30)
        boxes, ncc = match_regions(image, prompt_crops)
        assert len(boxes) and np.all(np.diff(ncc) <= 0), "strongest first"
        assert ncc[0] > 0.8 and _iou(boxes[0], _box(100, 30, defect)) > 0.5


def test_large_images_are_matched_downscaled_and_boxes_come_back_in_their_pixels(prompt_crops):
    big = np.kron(_defect(7), np.ones((3, 3), np.uint8))  # an exemplar three times as large
    crops = exemplar_crops(_paste(_surface(1, 480), big, 90, 120), _box(90, 120, big)[None])
    image = _paste(_surface(8, 1200), big, 600, 900)
    boxes, ncc = match_regions(image, crops)
    assert ncc[0] > 0.7 and _iou(boxes[0], _box(600, 900, big)) > 0.5
    assert np.all(boxes[:, [0, 2]] <= 1200) and np.all(boxes >= 0)


def test_box_masks_fill_their_boxes():
    m = box_masks(np.array([[2, 3, 6, 5]], np.float32), 8, 10)
    assert m.shape == (1, 8, 10) and m.sum() == 8 and m[0, 3:5, 2:6].all()


class _InfoOnly:
    def __init__(self, score: float) -> None:
        base = ModelInfo("f", 64, 8, "small", (0.5,) * 3, (0.5,) * 3, 0.3, 5, 4)
        self.info = replace(base, template_proposal_score=score)


def _network_found_nothing_there() -> Detections:
    """One network detection in a corner, away from the pasted defect."""
    masks = np.zeros((1, 160, 160), bool)
    masks[0, 0:10, 0:10] = True
    return Detections(
        class_index=np.zeros(1, np.int64),
        scores=np.array([0.9], np.float32),
        boxes=np.array([[0, 0, 10, 10]], np.float32),
        masks=masks,
    )


def test_a_low_threshold_shows_the_region_the_network_missed_below_its_own_detections(
    prompt_crops,
):
    defect = _defect(9)
    image = _paste(_surface(6), defect, 100, 20)
    predictor = Predictor(_InfoOnly(0.2))  # type: ignore[arg-type]
    out = predictor.add_proposals(image, _network_found_nothing_there(), [prompt_crops], 0.05)
    assert out.scores[0] == pytest.approx(0.9) and np.all(np.diff(out.scores) <= 0)
    assert np.all(out.scores[1:] <= 0.2) and np.all(out.scores >= 0.05)
    assert _iou(out.boxes[1], _box(100, 20, defect)) > 0.5
    assert out.masks is not None and out.masks.shape == (len(out), 160, 160)
    assert out.masks[0, :10, :10].all()  # the network's own mask is kept
    x0, y0, x1, y1 = np.round(out.boxes[1]).astype(int)
    assert out.masks[1].sum() == (x1 - x0) * (y1 - y0)


def test_at_a_threshold_above_the_proposal_score_nothing_changes(prompt_crops):
    image = _paste(_surface(6), _defect(9), 100, 20)
    det = _network_found_nothing_there()
    predictor = Predictor(_InfoOnly(0.2))  # type: ignore[arg-type]
    for thr in (0.21, np.array([0.3])):
        assert predictor.add_proposals(image, det, [prompt_crops], thr) is det
    # a class without usable exemplars proposes nothing, and max_detections holds
    assert predictor.add_proposals(image, det, [[]], 0.01) is det
    out = predictor.add_proposals(image, det, [prompt_crops], 0.01, max_detections=2)
    assert len(out) == 2


def test_proposals_only_fill_free_places_and_never_push_out_a_network_detection(prompt_crops):
    image = _paste(_surface(6), _defect(9), 100, 20)
    weak = replace(_network_found_nothing_there(), scores=np.array([0.02], np.float32))
    predictor = Predictor(_InfoOnly(0.2))  # type: ignore[arg-type]
    full = predictor.add_proposals(image, weak, [prompt_crops], 0.01, max_detections=1)
    assert len(full) == 1 and full.scores[0] == pytest.approx(0.02)
    out = predictor.add_proposals(image, weak, [prompt_crops], 0.01, max_detections=3)
    assert len(out) == 3 and out.scores[-1] == pytest.approx(0.02), "ranked by score"


def test_new_models_propose_behind_the_gate_and_older_files_keep_scoring_without_them():
    assert ModelConfig().template_proposal_score == 0.2  # for classes not outlined only
    assert ModelConfig(template_proposal_score=0.0).template_proposal_score == 0.0
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "template_proposal_score"}
    assert ModelConfig.from_dict(legacy).template_proposal_score == 0.0
    with pytest.raises(ValueError, match="template_proposal_score"):
        ModelConfig(template_proposal_score=1.5)
    meta = _InfoOnly(0.2).info.to_metadata("detect")
    assert ModelInfo.from_metadata(meta).template_proposal_score == 0.2
    del meta["template_proposal_score"]
    assert ModelInfo.from_metadata(meta).template_proposal_score == 0.0
