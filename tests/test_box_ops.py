"""Box maths (there is no torchvision on a CPU install)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.box_ops import (
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    generalized_box_iou,
    nms,
    xyxy_to_cxcywh,
)

coord = st.floats(0, 100, allow_nan=False)


@st.composite
def boxes(draw, n=st.integers(1, 6)):
    out = []
    for _ in range(draw(n)):
        x0, y0 = draw(coord), draw(coord)
        out.append([x0, y0, x0 + draw(st.floats(0.5, 50)), y0 + draw(st.floats(0.5, 50))])
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(a=boxes(), b=boxes())
def test_iou_and_giou_bounds_and_symmetry(a, b):
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all()
    assert ((giou >= -1 - 1e-9) & (giou <= iou + 1e-9)).all()
    assert torch.allclose(box_iou(b, a), iou.t())


@settings(max_examples=60, deadline=None)
@given(a=boxes())
def test_self_iou_is_one_and_format_round_trip(a):
    assert torch.allclose(torch.diag(box_iou(a, a)), torch.ones(len(a), dtype=a.dtype))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(a)), a)


def test_giou_is_negative_for_far_apart_boxes():
    a = torch.tensor([[0.0, 0, 1, 1]])
    b = torch.tensor([[10.0, 10, 11, 11]])
    assert box_iou(a, b).item() == 0 and generalized_box_iou(a, b).item() < -0.9


def test_nms_keeps_the_best_of_overlapping_boxes():
    b = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    s = torch.tensor([0.5, 0.9, 0.3])
    assert nms(b, s, 0.5).tolist() == [1, 2]
    # the same boxes under different labels never suppress each other
    assert sorted(batched_nms(b, s, torch.tensor([0, 1, 0]), 0.5).tolist()) == [0, 1, 2]
