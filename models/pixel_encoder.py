"""Pixel encoder: backbone maps -> vision tokens F and per-pixel embeddings.

A feature pyramid brings every backbone level to width d; the cells of the `token_strides` levels,
refined by a few transformer layers, are the vision tokens F (paper 3.1). The refined tokens are
folded back into the pyramid so the stride-8 map (spatial prompt path) and the stride-4 map (mask
embedding, as in MaskDINO's pixel decoder) both see the global context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import AttentionBlock, FeedForward, sine_embed


@dataclass
class PixelFeatures:
    """What the pixel encoder gives the rest of the network (shapes for input H x W)."""

    tokens: Tensor  # (B, N, d) vision tokens F
    token_pos: Tensor  # (N, d) positional embedding of each token
    token_anchors: Tensor  # (N, 4) cxcywh anchor box of each token, normalised to [0, 1]
    prompt_map: Tensor  # (B, d, H/prompt_stride, W/prompt_stride)
    mask_map: Tensor  # (B, d, H/mask_stride, W/mask_stride) per-pixel mask embedding


def token_grid(h: int, w: int, stride: int, image_size: int, device: torch.device) -> Tensor:
    """Cell centres and sizes of an h x w level as (h*w, 4) normalised cxcywh anchors.

    The anchor side is twice the cell, a generous prior the decoder refines.
    """
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    side = torch.full_like(cx, 2.0 * stride / image_size)
    return torch.stack((cx, cy, side, side), dim=-1).view(-1, 4)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        return self.ffn(self.attn(x, q_pos=pos))


class PixelEncoder(nn.Module):
    def __init__(
        self,
        in_channels: dict[int, int],
        dim: int,
        heads: int,
        ffn: int,
        layers: int,
        token_strides: tuple[int, ...],
        prompt_stride: int,
        mask_stride: int,
        image_size: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.strides = sorted(in_channels)
        self.token_strides = tuple(sorted(token_strides))
        self.prompt_stride, self.mask_stride, self.image_size = (
            prompt_stride,
            mask_stride,
            image_size,
        )
        self.lateral = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    nn.Conv2d(c, dim, 1), nn.GroupNorm(32 if dim >= 64 else 8, dim)
                )
                for s, c in in_channels.items()
            }
        )
        self.smooth = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    nn.Conv2d(dim, dim, 3, padding=1),
                    nn.GroupNorm(32 if dim >= 64 else 8, dim),
                    nn.ReLU(),
                )
                for s in self.strides
            }
        )
        self.level_embed = nn.Parameter(torch.zeros(len(self.token_strides), dim))
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, feats: dict[int, Tensor]) -> PixelFeatures:
        lat = {s: self.lateral[str(s)](feats[s]) for s in self.strides}
        # Top-down pass over the coarse levels that become tokens.
        for s in reversed(self.token_strides[:-1]):
            coarse = lat[s * 2] if s * 2 in lat else None
            if coarse is not None:
                lat[s] = lat[s] + F.interpolate(coarse, size=lat[s].shape[-2:], mode="nearest")
        maps = [lat[s] for s in self.token_strides]
        shapes = [m.shape[-2:] for m in maps]
        device = maps[0].device
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, N, d)
        anchors = torch.cat(
            [
                token_grid(int(h), int(w), s, self.image_size, device)
                for (h, w), s in zip(shapes, self.token_strides, strict=True)
            ]
        )
        level = torch.cat(
            [self.level_embed[i].expand(int(h) * int(w), -1) for i, (h, w) in enumerate(shapes)]
        )
        pos = sine_embed(anchors[:, :2], tokens.shape[-1]) + level  # (N, d)
        for layer in self.layers:
            tokens = layer(tokens, pos)
        tokens = self.out_norm(tokens)
        # Fold refined tokens back into maps, then top-down to the fine levels.
        refined, start = {}, 0
        for (h, w), s in zip(shapes, self.token_strides, strict=True):
            n = int(h) * int(w)
            refined[s] = (
                tokens[:, start : start + n].transpose(1, 2).reshape(-1, tokens.shape[-1], h, w)
            )
            start += n
        out: dict[int, Tensor] = {}
        prev = None
        for s in reversed(self.strides):
            x = refined.get(s, lat[s])
            if prev is not None:
                x = x + F.interpolate(prev, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[str(s)](x)
            out[s] = prev = x
        return PixelFeatures(
            tokens=tokens,
            token_pos=pos,
            token_anchors=anchors,
            prompt_map=out[self.prompt_stride],
            mask_map=self.mask_proj(out[self.mask_stride]),
        )
