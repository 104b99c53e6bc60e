"""Hungarian matching between predictions and ground truth (DETR; costs as MaskDINO)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from models.box_ops import cxcywh_to_xyxy, generalized_box_iou


def focal_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Classification cost (Q, n) as in Deformable DETR: focal positive minus focal negative."""
    p = logits.sigmoid()[:, labels]  # (Q, n)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)
    pos = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)
    return pos - neg


def mask_costs(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise mean BCE and Dice costs: pred logits (Q, P), gt (n, P) in [0, 1] -> (Q, n) each."""
    pos = torch.nn.functional.softplus(-pred)  # -log(sigmoid(x))
    neg = torch.nn.functional.softplus(pred)  # -log(1 - sigmoid(x))
    bce = (pos @ gt.t() + neg @ (1 - gt).t()) / pred.shape[1]
    prob = pred.sigmoid()
    num = 2 * prob @ gt.t()
    den = prob.sum(-1)[:, None] + gt.sum(-1)[None, :]
    dice = 1 - (num + 1) / (den + 1)
    return bce, dice


class HungarianMatcher(torch.nn.Module):
    def __init__(
        self,
        w_cls: float,
        w_l1: float,
        w_giou: float,
        w_bce: float,
        w_dice: float,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.w = (w_cls, w_l1, w_giou, w_bce, w_dice)
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Per image, (prediction indices, target indices) of the optimal one-to-one assignment.

        outputs: pred_logits (B, Q, C), pred_boxes (B, Q, 4), pred_masks (B, Q, h, w);
        targets: dicts with labels (n,), boxes (n, 4) cxcywh, masks (n, h, w) in [0, 1].
        """
        w_cls, w_l1, w_giou, w_bce, w_dice = self.w
        result = []
        for b, tgt in enumerate(targets):
            n = len(tgt["labels"])
            if n == 0:
                empty = torch.zeros(0, dtype=torch.long, device=outputs["pred_boxes"].device)
                result.append((empty, empty))
                continue
            boxes = outputs["pred_boxes"][b]
            cost = w_cls * focal_cost(
                outputs["pred_logits"][b], tgt["labels"], self.alpha, self.gamma
            )
            cost = cost + w_l1 * torch.cdist(boxes, tgt["boxes"], p=1)
            cost = cost - w_giou * generalized_box_iou(
                cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt["boxes"])
            )
            bce, dice = mask_costs(outputs["pred_masks"][b].flatten(1), tgt["masks"].flatten(1))
            cost = cost + w_bce * bce + w_dice * dice
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
            as_index = dict(dtype=torch.long, device=boxes.device)
            result.append((torch.as_tensor(rows, **as_index), torch.as_tensor(cols, **as_index)))
        return result
