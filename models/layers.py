"""Small building blocks shared by the encoder, decoder and prompt encoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (DETR's box/mask heads)."""

    def __init__(self, din: int, dhidden: int, dout: int, layers: int) -> None:
        super().__init__()
        dims = [din] + [dhidden] * (layers - 1) + [dout]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def sine_embed(points: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of normalised coordinates (..., k) -> (..., dim).

    Each coordinate gets dim // k channels, as in DETR/DINO position encodings.
    """
    k = points.shape[-1]
    per = dim // k
    freq = torch.arange(per // 2, dtype=points.dtype, device=points.device)
    freq = temperature ** (2 * freq / per)
    angles = points[..., None] * 2 * math.pi / freq  # (..., k, per/2)
    emb = torch.cat((angles.sin(), angles.cos()), dim=-1)  # (..., k, per)
    return emb.flatten(-2)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head attention with a residual; `q_pos`/`k_pos` are added to queries/keys."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        q_pos: Tensor | None = None,
        k_pos: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, Nq, d) attends over memory (B, Nk, d) or itself; mask is (B*heads, Nq, Nk) additive
        or (B, Nk) boolean key padding (True = ignore)."""
        q = self.norm(x)
        kv = q if memory is None else memory
        k = kv if k_pos is None else kv + k_pos
        q_in = q if q_pos is None else q + q_pos
        if memory is None and q_pos is not None:
            k = q_in
        attn_mask = mask if mask is not None and mask.dtype != torch.bool else None
        pad_mask = mask if mask is not None and mask.dtype == torch.bool else None
        out, _ = self.attn(
            q_in, k, kv, attn_mask=attn_mask, key_padding_mask=pad_mask, need_weights=False
        )
        return x + out


class FeedForward(nn.Module):
    """Pre-norm FFN with a residual."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)
