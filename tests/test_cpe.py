"""The angular-margin loss of Eq. 6 and class prototypes (paper 3.3)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.cpe import class_prototypes, cpe_loss


def test_matches_eq6_on_a_hand_computed_case():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    s, m = 30.0, 0.5
    # sample 0: theta_00 = 0, cos to the other class = 0
    l0 = -math.log(math.exp(s * math.cos(m)) / (math.exp(s * math.cos(m)) + math.exp(0.0)))
    # sample 1: cos to own class 0.8, to the other 0.6
    t1 = s * math.cos(math.acos(0.8) + m)
    l1 = -math.log(math.exp(t1) / (math.exp(t1) + math.exp(s * 0.6)))
    got = cpe_loss(emb, labels, protos, s, m)
    assert math.isclose(float(got), (l0 + l1) / 2, rel_tol=1e-4)


@settings(max_examples=50, deadline=None)
@given(near=st.floats(0.0, 1.4), gap=st.floats(0.05, 1.0), n_classes=st.integers(2, 6))
def test_falls_when_same_class_embeddings_draw_together(near, gap, n_classes):
    """An embedding turned towards its own prototype (others unaffected) always lowers the loss."""
    protos = torch.eye(16, dtype=torch.float64)[:n_classes]

    def at(angle: float) -> torch.Tensor:  # in the plane of class 0 and an unused axis
        return torch.tensor(
            [[math.cos(angle)] + [0.0] * 14 + [math.sin(angle)]], dtype=torch.float64
        )

    labels = torch.tensor([0])
    assert cpe_loss(at(near), labels, protos) < cpe_loss(at(near + gap), labels, protos)


def test_rises_when_the_margin_is_violated():
    """Two classes 0.3 rad apart satisfy cosine ranking but not the 0.5 rad margin."""
    protos = torch.tensor([[1.0, 0.0], [math.cos(0.3), math.sin(0.3)]])
    labels = torch.tensor([0, 1])
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    violating = protos.clone()
    assert cpe_loss(violating, labels, protos) > cpe_loss(apart, labels, torch.eye(2))


def test_prototypes_are_renormalised_means():
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    protos = class_prototypes(emb, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(protos, torch.tensor([[0.9487, 0.3162], [0.0, 1.0]]), atol=1e-4)
    assert torch.allclose(protos.norm(dim=-1), torch.ones(2))


def test_gradient_pulls_embedding_towards_its_prototype():
    emb = torch.tensor([[0.6, 0.8]], requires_grad=True)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cpe_loss(emb, torch.tensor([0]), protos).backward()
    assert emb.grad[0, 0] < 0 and emb.grad[0, 1] > 0  # descent moves towards class 0
