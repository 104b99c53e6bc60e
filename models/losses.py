"""Training objective (paper C.2, Eq. 7): focal classification, L1 + GIoU boxes, BCE + Dice masks,
with deep supervision on every decoder layer. The CPE term is added by the trainer, which owns
the prompt embeddings. Loss maths are pure functions; `SetCriterion` owns the matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.box_ops import cxcywh_to_xyxy, generalized_box_iou
from models.config import LossConfig
from models.matcher import HungarianMatcher


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Summed focal loss (Lin et al. 2017) over all elements."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).sum()


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed Dice loss over masks: logits and targets (n, P)."""
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return (1 - (num + 1) / (den + 1)).sum()


def token_targets(
    targets: list[dict], token_strides: tuple[int, ...], mask_stride: int, num_classes: int
) -> Tensor:
    """(B, N, C) 1 where a token's cell overlaps an instance of class c, else 0.

    Cells are found by max-pooling the instance masks (at the mask stride) to each token level, in
    the same order as the pixel encoder flattens tokens.
    """
    rows = []
    for tgt in targets:
        masks, labels = tgt["masks"], tgt["labels"]  # (n, h, w), (n,)
        per_level = []
        for s in token_strides:
            k = s // mask_stride
            h, w = masks.shape[-2] // k, masks.shape[-1] // k
            if len(labels):
                cells = (F.max_pool2d(masks[:, None], k)[:, 0] > 0.25).flatten(1).float()
                onehot = F.one_hot(labels, num_classes).float()  # (n, C)
                per_level.append((cells.t() @ onehot).clamp(max=1))  # (h*w, C)
            else:
                per_level.append(masks.new_zeros(h * w, num_classes))
        rows.append(torch.cat(per_level))
    return torch.stack(rows)


class SetCriterion(nn.Module):
    """Hungarian-matched set losses over every decoder layer, plus the token relevance loss.

    The token loss is our addition to the paper's objective: it supervises PQS's relevance
    S = max_c cos(F_i, p_c) directly (tokens on an instance of class c should match p_c), the way
    DINO supervises its encoder proposals. Without it the straight-through signal alone takes many
    thousands of steps to point the queries at defects, which a CPU budget cannot afford.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        cfg: LossConfig,
        token_strides: tuple[int, ...] = (16, 32),
        mask_stride: int = 4,
    ) -> None:
        super().__init__()
        self.matcher, self.cfg = matcher, cfg
        self.token_strides, self.mask_stride = token_strides, mask_stride

    def token_loss(self, outputs: dict, targets: list[dict], num: float) -> Tensor:
        cos = outputs["token_class_cos"]  # (B, N, C)
        tgt = token_targets(targets, self.token_strides, self.mask_stride, cos.shape[-1])
        logits = (cos - 0.5) * self.cfg.token_scale
        return sigmoid_focal_loss(logits, tgt, self.cfg.focal_alpha, self.cfg.focal_gamma) / num

    def layer_losses(self, out: dict, targets: list[dict], num: float) -> dict[str, Tensor]:
        """Unweighted loss terms of one decoder layer, each normalised by the number of objects."""
        cfg = self.cfg
        idx = self.matcher(out, targets)
        logits = out["pred_logits"]
        cls_t = torch.zeros_like(logits)
        src_boxes, tgt_boxes, src_masks, tgt_masks = [], [], [], []
        for b, (qi, ti) in enumerate(idx):
            if len(qi) == 0:
                continue
            cls_t[b, qi, targets[b]["labels"][ti]] = 1.0
            src_boxes.append(out["pred_boxes"][b, qi])
            tgt_boxes.append(targets[b]["boxes"][ti])
            src_masks.append(out["pred_masks"][b, qi].flatten(1))
            tgt_masks.append(targets[b]["masks"][ti].flatten(1))
        losses = {"cls": sigmoid_focal_loss(logits, cls_t, cfg.focal_alpha, cfg.focal_gamma) / num}
        if src_boxes:
            sb, tb = torch.cat(src_boxes), torch.cat(tgt_boxes)
            sm, tm = torch.cat(src_masks), torch.cat(tgt_masks)
            giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(sb), cxcywh_to_xyxy(tb)))
            losses["l1"] = F.l1_loss(sb, tb, reduction="sum") / num
            losses["giou"] = (1 - giou).sum() / num
            losses["bce"] = (
                F.binary_cross_entropy_with_logits(sm, tm, reduction="none").mean(1).sum() / num
            )
            losses["dice"] = dice_loss(sm, tm) / num
        else:
            zero = logits.sum() * 0
            losses.update(l1=zero, giou=zero, bce=zero, dice=zero)
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """Every weighted term (suffixed `_i` for auxiliary layer i) and their sum `total`."""
        num = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        weights = {
            "cls": self.cfg.cls,
            "l1": self.cfg.l1,
            "giou": self.cfg.giou,
            "bce": self.cfg.bce,
            "dice": self.cfg.dice,
        }
        layers = [("", outputs)]
        if self.cfg.aux:
            layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux", []))]
        result: dict[str, Tensor] = {}
        for suffix, out in layers:
            for name, value in self.layer_losses(out, targets, num).items():
                result[name + suffix] = weights[name] * value
        if self.cfg.token and "token_class_cos" in outputs:
            result["token"] = self.cfg.token * self.token_loss(outputs, targets, num)
        result["total"] = sum(result.values())
        return result
