"""Prompt-guided Query Selection (paper 3.4).

The object queries are the K vision tokens most relevant to the prompts: S_i = max_c cos(F_i, p_c).
Training perturbs S with Gumbel noise and selects hard top-K while gradients flow through the soft
weights w = softmax((S + g) / tau) (straight-through); inference is plain, noise-free top-K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Selection:
    index: Tensor  # (B, K) indices of the chosen tokens
    queries: Tensor  # (B, K, d) chosen tokens, scaled by the straight-through factor (== 1 forward)
    relevance: Tensor  # (B, N) S, kept for losses and inspection
    token_class_cos: Tensor  # (B, N, C) cos(F_i, p_c) before the max, for the token loss


def token_class_cosine(tokens: Tensor, prototypes: Tensor) -> Tensor:
    """cos(F_i, p_c): tokens (B, N, d), prototypes (B, C, d) -> (B, N, C)."""
    return F.normalize(tokens, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)


def relevance_scores(tokens: Tensor, prototypes: Tensor) -> Tensor:
    """S = max over classes of cos(F_i, p_c) -> (B, N)."""
    return token_class_cosine(tokens, prototypes).amax(dim=-1)


class PromptQuerySelector(nn.Module):
    def __init__(self, num_queries: int, tau: float) -> None:
        super().__init__()
        self.num_queries, self.tau = num_queries, tau

    def forward(self, tokens: Tensor, prototypes: Tensor) -> Selection:
        """tokens (B, N, d); prototypes (B, C, d) -> Selection with K = min(num_queries, N)."""
        cos = token_class_cosine(tokens, prototypes)
        s = cos.amax(dim=-1)
        k = min(self.num_queries, tokens.shape[1])
        if self.training:
            u = torch.rand_like(s).clamp(1e-9, 1 - 1e-9)
            w = torch.softmax((s - torch.log(-torch.log(u))) / self.tau, dim=-1)  # (B, N)
            index = w.topk(k, dim=-1).indices
            w_sel = w.gather(1, index)
            factor = 1 + w_sel - w_sel.detach()  # 1 forward; d/dw = 1 backward (straight-through)
        else:
            index = s.topk(k, dim=-1).indices
            factor = torch.ones(index.shape, dtype=tokens.dtype, device=tokens.device)
        chosen = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        return Selection(
            index=index, queries=chosen * factor[..., None], relevance=s, token_class_cos=cos
        )
