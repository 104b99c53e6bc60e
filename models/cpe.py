"""Contrastive Prompt Encoding (paper 3.3, Eq. 5-6): prototypes and the angular-margin loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_prototypes(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Re-normalised mean embedding per class: (R, d), (R,) in [0, C) -> (C, d).

    A class with no embedding gets a zero row (it then matches nothing).
    """
    sums = torch.zeros(
        num_classes, embeddings.shape[-1], dtype=embeddings.dtype, device=embeddings.device
    )
    sums = sums.index_add(0, labels, embeddings)
    return F.normalize(sums, dim=-1, eps=1e-8)


def cpe_loss(
    embeddings: Tensor, labels: Tensor, prototypes: Tensor, scale: float = 30.0, margin: float = 0.5
) -> Tensor:
    """ArcFace-style loss of Eq. 6 (averaged over the N prompt instances).

    embeddings (N, d), labels (N,), prototypes (C, d). The target logit is s*cos(theta + m), the
    others s*cos(theta). Once the margin holds the loss stops pulling, which leaves related classes
    free to sit near each other (paper 3.3).
    """
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(prototypes, dim=-1).t()  # (N, C)
    cos = cos.clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos.gather(1, labels[:, None]))
    target = torch.cos(theta + margin)
    logits = cos.scatter(1, labels[:, None], target) * scale
    return F.cross_entropy(logits, labels)
