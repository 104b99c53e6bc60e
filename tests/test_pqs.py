"""Prompt-guided Query Selection (paper 3.4)."""

import torch

from models.pqs import PromptQuerySelector, relevance_scores


def inputs(seed=0, b=2, n=40, c=3, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g), torch.randn(b, c, d, generator=g)


def test_selects_exactly_k_distinct_tokens():
    tokens, protos = inputs()
    pqs = PromptQuerySelector(num_queries=7, tau=1.0).train()
    sel = pqs(tokens, protos)
    assert sel.index.shape == (2, 7) and sel.queries.shape == (2, 7, 8)
    for row in sel.index:
        assert len(set(row.tolist())) == 7
    # forward values are the chosen tokens themselves (straight-through factor == 1)
    assert torch.allclose(sel.queries, tokens.gather(1, sel.index[..., None].expand(-1, -1, 8)))


def test_gradients_reach_relevance_through_straight_through_path():
    tokens, protos = inputs()
    tokens.requires_grad_(True)
    protos.requires_grad_(True)
    torch.manual_seed(0)
    sel = PromptQuerySelector(5, 1.0).train()(tokens, protos)
    sel.queries.sum().backward()
    assert protos.grad is not None and protos.grad.abs().sum() > 0  # only via S
    s = relevance_scores(tokens.detach(), protos.detach().requires_grad_(True))
    assert s.shape == (2, 40)


def test_eval_is_deterministic_top_k_of_relevance():
    tokens, protos = inputs()
    pqs = PromptQuerySelector(6, 1.0).eval()
    a, b = pqs(tokens, protos), pqs(tokens, protos)
    assert torch.equal(a.index, b.index)
    expected = relevance_scores(tokens, protos).topk(6, dim=-1).indices
    assert torch.equal(a.index, expected)


def test_training_noise_explores_other_tokens():
    tokens, protos = inputs()
    pqs = PromptQuerySelector(6, 1.0).train()
    torch.manual_seed(1)
    picks = {tuple(pqs(tokens, protos).index[0].tolist()) for _ in range(5)}
    assert len(picks) > 1


def test_k_is_capped_by_token_count():
    tokens, protos = inputs(n=4)
    assert PromptQuerySelector(10, 1.0).eval()(tokens, protos).index.shape == (2, 4)
