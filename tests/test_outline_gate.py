"""The outline gate (models/outline_gate.py): exemplar-matched proposals go only to the classes
whose own exemplars the network does not outline, so a class it finds keeps its ranking."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.config import ModelConfig
from models.outline_gate import detection_weights, exemplar_ious, gated_classes, outline
from models.postprocess import Detections
from models.predictor import Predictor
from tests.test_template_match import _defect, _paste, _surface
from tests.test_template_proposals import _InfoOnly, _network_found_nothing_there, prompt_crops

__all__ = ["prompt_crops"]  # the fixture, shared


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=8),
    st.floats(0, 0.99),
)
def test_only_classes_outlined_below_the_gate_get_proposals(outlines, gate):
    on = gated_classes(np.array(outlines, np.float32), gate)
    assert on.tolist() == [np.float32(o) < np.float32(gate) for o in outlines]
    assert gated_classes(np.array(outlines, np.float32), 1.0).all(), "gate 1: every class"
    assert not gated_classes(np.array(outlines, np.float32), 0.0).any(), "gate 0: none"


def test_a_class_without_exemplars_counts_as_outlined():
    out = outline([np.array([0.2, 0.4]), np.zeros(0)])
    assert out.tolist() == pytest.approx([0.3, 1.0])
    assert gated_classes(out, 0.4).tolist() == [True, False]


def test_a_class_left_out_gets_no_proposal_at_any_threshold(prompt_crops):
    image = _paste(_surface(6), _defect(9), 100, 20)
    det = _network_found_nothing_there()
    predictor = Predictor(_InfoOnly(0.2))  # type: ignore[arg-type]
    both = predictor.add_proposals(image, det, [prompt_crops, prompt_crops], 0.01)
    assert set(both.class_index.tolist()) == {0, 1}
    only_second = predictor.add_proposals(
        image, det, [prompt_crops, prompt_crops], 0.01, proposal_classes=[False, True]
    )
    assert only_second.class_index[1:].tolist() == [1] * (len(only_second) - 1)
    assert (
        predictor.add_proposals(image, det, [prompt_crops], 0.01, proposal_classes=[False]) is det
    )
    with pytest.raises(ValueError, match="proposal_classes"):
        predictor.add_proposals(image, det, [prompt_crops], 0.01, proposal_classes=[True, True])


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=8),
    st.floats(0.01, 0.99),
)
def test_a_class_outlined_worse_has_its_network_detections_weighted_down_more(outlines, gate):
    weights = detection_weights(np.array(outlines, np.float32), gate)
    gated = gated_classes(np.array(outlines, np.float32), gate)
    assert np.all((weights >= 0) & (weights <= 1))
    assert np.all(weights[~gated] == 1), "a class the network outlines keeps its scores"
    order = np.argsort(np.array(outlines, np.float32), kind="stable")
    assert np.all(np.diff(weights[order]) >= 0), "monotone in the outline"
    assert np.all(detection_weights(np.array(outlines, np.float32), 1.0) == 1), "gate 1: none"


def _two_classes_found_in_the_corner() -> Detections:
    """Network detections of class 0 (0.9) and class 1 (0.5), away from the pasted defect."""
    one = _network_found_nothing_there()
    return Detections(
        class_index=np.array([0, 1], np.int64),
        scores=np.array([0.9, 0.5], np.float32),
        boxes=np.repeat(one.boxes, 2, axis=0),
        masks=np.repeat(one.masks, 2, axis=0),
    )


def test_a_gated_class_network_detections_rank_by_its_outline(prompt_crops):
    image = _paste(_surface(6), _defect(9), 100, 20)
    det = _two_classes_found_in_the_corner()
    predictor = Predictor(_InfoOnly(0.2))  # type: ignore[arg-type]
    out = predictor.weigh(det, [0.25, 1.0], 0.01)
    assert out.class_index.tolist() == [1, 0], "re-ranked"
    assert out.scores.tolist() == pytest.approx([0.5, 0.225])
    assert out.masks is not None and out.masks.shape == (2, 160, 160)
    assert predictor.weigh(det, [0.0, 1.0], 0.01).class_index.tolist() == [1], "weight 0: gone"
    assert predictor.weigh(det, [0.25, 1.0], 0.3).class_index.tolist() == [1], "under: dropped"
    assert predictor.weigh(det, [1.0, 1.0], 0.3) is det, "nothing weighted, nothing changed"
    with pytest.raises(ValueError, match="detection_weights"):
        predictor.weigh(det, [0.5], 0.01)
    # weighted before the proposals join: a class the network cannot outline ranks its proposals
    # above its own misplaced detections
    crops = [prompt_crops, prompt_crops]
    merged = predictor.add_proposals(
        image, predictor.weigh(det, [0.0, 1.0], 0.01), crops, 0.01, proposal_classes=[True, False]
    )
    assert merged.class_index[0] == 1 and np.all(merged.class_index[1:] == 0)
    assert np.all(merged.scores[1:] <= 0.2 + 1e-6), "class 0 is now its proposals alone"


class _Recorder:
    """A predictor that finds one fixed box of class 0 in every image and records its calls."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def detect(self, images, prototypes, score_threshold, **kwargs):
        self.calls.append({"images": len(images), "threshold": score_threshold, **kwargs})
        box = np.array([[10, 10, 30, 30]], np.float32)
        det = Detections(np.zeros(1, np.int64), np.array([0.5], np.float32), box, None)
        return [det for _ in images]


def test_exemplars_are_looked_for_in_their_own_images_with_the_network_alone():
    image = np.zeros((64, 64, 3), np.uint8)
    prompts = [
        [(image, np.array([[10, 10, 30, 30], [40, 40, 60, 60]], np.float32))],  # class 0
        [(image, np.array([[10, 10, 30, 30]], np.float32))],  # class 1: the box is class 0's
        [],  # class 2: no exemplar
    ]
    rec = _Recorder()
    ious = exemplar_ious(rec, prompts, np.zeros((3, 4), np.float32))
    assert ious[0].tolist() == pytest.approx([1.0, 0.0])
    assert ious[1].tolist() == [0.0], "a detection must name the exemplar's class"
    assert len(ious[2]) == 0 and len(rec.calls) == 2
    for call in rec.calls:
        assert call["threshold"] == pytest.approx(0.01)
        assert not np.any(call["proposal_classes"]), "proposals are what is being decided"
    assert outline(ious).tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_older_files_keep_proposals_for_every_class():
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "proposal_gate_iou"}
    assert ModelConfig.from_dict(legacy).proposal_gate_iou == 1.0
    assert ModelConfig().proposal_gate_iou == 0.4
    with pytest.raises(ValueError, match="proposal_gate_iou"):
        ModelConfig(proposal_gate_iou=1.5)
    info = replace(_InfoOnly(0.2).info, proposal_gate_iou=0.4)
    back = type(info).from_metadata(info.to_metadata("detect"))
    assert back.proposal_gate_iou == 0.4
    meta = {k: v for k, v in info.to_metadata("detect").items() if k != "proposal_gate_iou"}
    assert type(info).from_metadata(meta).proposal_gate_iou == 1.0


def test_proposals_stay_below_a_threshold_calibrated_lower_than_their_score(prompt_crops):
    """A model whose good parts calibrated its threshold under the proposals' score would raise a
    false alarm wherever template matching fires; its proposals are scaled under it instead."""
    low = _InfoOnly(0.2)
    low.info = replace(low.info, score_threshold=0.1)
    predictor = Predictor(low)  # type: ignore[arg-type]
    assert predictor.proposal_score == pytest.approx(0.09)
    image = _paste(_surface(6), _defect(9), 100, 20)
    out = predictor.add_proposals(image, _network_found_nothing_there(), [prompt_crops], 0.01)
    assert len(out) > 1 and np.all(out.scores[1:] < 0.1)
    assert Predictor(_InfoOnly(0.2)).proposal_score == pytest.approx(0.2)  # type: ignore[arg-type]
