"""Prototype-conditioned transformer decoder (paper Eq. 1-2) with box and mask heads.

Queries and prototypes both cross-attend to the vision tokens F. Class logits are the dot products
of the projected queries and prototypes (here cosine similarity with a learned scale and bias, which
keeps the logits on a stable range whatever the number of classes C), so any C >= 1 works at
inference with the same weights. Boxes are refined layer by layer from the selected tokens' anchors
(DINO-style, in inverse-sigmoid space); masks are dot products with the per-pixel embedding.

This decoder uses dense multi-head cross-attention instead of MaskDINO's multi-scale deformable
attention: it exports to ONNX/TensorRT as plain matmuls and is cheap at the token counts used here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.box_ops import inverse_sigmoid
from models.layers import MLP, AttentionBlock, FeedForward, sine_embed


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = AttentionBlock(dim, heads, dropout)
        self.cross_attn = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)

    def forward(self, q: Tensor, q_pos: Tensor, memory: Tensor, mem_pos: Tensor) -> Tensor:
        q = self.self_attn(q, q_pos=q_pos)
        q = self.cross_attn(q, memory, q_pos=q_pos, k_pos=mem_pos)
        return self.ffn(q)


class PromptDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.query_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.query_pos = MLP(2 * dim, dim, dim, 2)
        self.proto_attn = AttentionBlock(dim, heads, dropout)
        self.proto_ffn = FeedForward(dim, ffn, dropout)
        self.norm = nn.LayerNorm(dim)
        self.h_query = nn.Linear(dim, dim)  # h(.) of Eq. 1 for queries
        self.h_proto = nn.Linear(dim, dim)  # h(.) of Eq. 1 for prototypes
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - 0.01) / 0.01)))  # prior 0.01
        self.box_head = MLP(dim, dim, 4, 3)
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)
        self.mask_head = MLP(dim, dim, dim, 3)
        self.dim = dim

    def condition_prototypes(self, prototypes: Tensor, memory: Tensor, mem_pos: Tensor) -> Tensor:
        """P_hat = CA(p_c, F): prototypes (B, C, d) adapted to this image's tokens."""
        p = self.proto_attn(prototypes, memory, k_pos=mem_pos)
        return self.proto_ffn(p)

    def _heads(
        self, q: Tensor, protos: Tensor, ref: Tensor, mask_map: Tensor
    ) -> tuple[dict, Tensor]:
        qn = self.norm(q)
        qe = F.normalize(self.h_query(qn), dim=-1)  # (B, Q, d)
        logits = qe @ protos.transpose(1, 2) * self.logit_scale.exp() + self.logit_bias  # (B, Q, C)
        boxes = torch.sigmoid(inverse_sigmoid(ref) + self.box_head(qn))  # (B, Q, 4) cxcywh
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_head(qn), mask_map)
        return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks}, boxes

    def forward(
        self,
        queries: Tensor,
        ref_boxes: Tensor,
        prototypes: Tensor,
        memory: Tensor,
        mem_pos: Tensor,
        mask_map: Tensor,
    ) -> dict:
        """queries (B, Q, d) from PQS; ref_boxes (B, Q, 4) cxcywh anchors; prototypes (B, C, d);
        memory (B, N, d) tokens F with mem_pos (N, d); mask_map (B, d, h, w).

        Returns the last layer's {pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh,
        pred_masks (B, Q, h, w) logits} plus `aux`: the same dicts for every earlier layer.
        """
        mem_pos = mem_pos[None]
        protos = self.condition_prototypes(prototypes, memory, mem_pos)
        protos = F.normalize(self.h_proto(protos), dim=-1)  # (B, C, d)
        q = self.query_in(queries)
        ref = ref_boxes.detach()
        outs = []
        for layer in self.layers:
            q_pos = self.query_pos(sine_embed(ref, 2 * self.dim))
            q = layer(q, q_pos, memory, mem_pos)
            out, boxes = self._heads(q, protos, ref, mask_map)
            outs.append(out)
            ref = boxes.detach()
        final = outs[-1]
        final["aux"] = outs[:-1]
        return final
