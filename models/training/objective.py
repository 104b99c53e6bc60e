"""One training step's forward pass: prompts -> prototypes -> detections -> Eq. 7."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import LossConfig
from models.cpe import class_prototypes, cpe_loss
from models.detector import UniSpector
from models.losses import SetCriterion
from models.training.batch import TrainBatch


def leave_one_out_prototypes(
    emb: Tensor, labels: Tensor, image_idx: Tensor, num_images: int, num_classes: int
) -> Tensor:
    """Per-image prototypes (B, C, d) built only from exemplars of the *other* images.

    This mirrors deployment, where the inspected part is never one of the exemplars. A class whose
    only exemplars sit in this image falls back to those (better than an empty prototype).
    """
    d = emb.shape[-1]
    flat = labels * num_images + image_idx  # (R,) joint (class, image) bucket
    per = torch.zeros(num_classes * num_images, d, dtype=emb.dtype, device=emb.device)
    per = per.index_add(0, flat, emb).view(num_classes, num_images, d)
    total = per.sum(dim=1, keepdim=True)  # (C, 1, d)
    others = total - per  # (C, B, d)
    count = (
        torch.zeros(num_classes * num_images, device=emb.device)
        .index_add(0, flat, torch.ones_like(flat, dtype=torch.float32))
        .view(num_classes, num_images)
    )
    others_n = count.sum(1, keepdim=True) - count
    protos = torch.where((others_n > 0)[..., None], others, total.expand_as(others))
    return F.normalize(protos.transpose(0, 1), dim=-1, eps=1e-8)  # (B, C, d)


def episode_losses(
    model: UniSpector, criterion: SetCriterion, batch: TrainBatch, loss_cfg: LossConfig
) -> dict[str, Tensor]:
    """All weighted loss terms of one episode, with `total` including the CPE term."""
    feats = model.encode_image(batch.images)
    emb = model.encode_prompts(
        batch.images, batch.region_boxes, batch.region_masks, batch.region_image, feats
    )
    b = batch.images.shape[0]
    protos = leave_one_out_prototypes(
        emb, batch.region_labels, batch.region_image, b, batch.num_classes
    )
    out = model.detect(feats, protos)
    losses = criterion(out, batch.targets)
    if batch.num_classes > 1 and len(emb) > 1:
        batch_protos = class_prototypes(emb, batch.region_labels, batch.num_classes)
        cpe = cpe_loss(
            emb, batch.region_labels, batch_protos, loss_cfg.cpe_scale, loss_cfg.cpe_margin
        )
    else:
        cpe = emb.sum() * 0  # one class: no angular structure to learn
    losses["cpe"] = loss_cfg.cpe * cpe
    losses["total"] = losses["total"] + losses["cpe"]
    return losses
