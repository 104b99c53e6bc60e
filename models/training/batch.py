"""Turn an episode into network tensors: letterboxed images, detection targets, prompt regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.box_ops import xyxy_to_cxcywh
from models.preprocess import Letterbox, to_tensor_layout
from models.training.augment import AugmentConfig, geometric, photometric
from models.training.episodes import Episode


@dataclass
class TrainBatch:
    images: torch.Tensor  # (B, 3, S, S) in [0, 1]
    targets: list[dict]  # per image: labels (n,), boxes (n, 4) cxcywh, masks (n, S/ms, S/ms)
    region_boxes: torch.Tensor  # (R, 4) normalised xyxy prompt regions
    region_masks: torch.Tensor  # (R, S, S) in {0, 1}
    region_labels: torch.Tensor  # (R,) episode class index
    region_image: torch.Tensor  # (R,) image index
    num_classes: int

    def to(self, device: torch.device) -> TrainBatch:
        """The same batch on `device` (targets included)."""
        move = {
            k: getattr(self, k).to(device)
            for k in ("images", "region_boxes", "region_masks", "region_labels", "region_image")
        }
        targets = [{k: v.to(device) for k, v in t.items()} for t in self.targets]
        return TrainBatch(targets=targets, num_classes=self.num_classes, **move)


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def build_batch(
    episode: Episode,
    size: int,
    mask_stride: int,
    rng: np.random.Generator | None,
    aug: AugmentConfig | None,
    max_regions: int = 32,
) -> TrainBatch:
    """Augment (when `rng` and `aug` are given), letterbox and collate one episode."""
    label_of = {c: i for i, c in enumerate(episode.class_names)}
    images, targets = [], []
    r_boxes, r_masks, r_labels, r_image = [], [], [], []
    for b, (image, insts) in enumerate(zip(episode.images, episode.instances, strict=True)):
        masks = [x.mask for x in insts]
        if rng is not None and aug is not None:
            image, masks = geometric(rng, image, masks, aug)
            image = photometric(rng, image, aug)
        lb = Letterbox.fit(image.shape[1], image.shape[0], size)
        images.append(to_tensor_layout(lb.image(image)))
        labels, boxes, small = [], [], []
        for inst, mask in zip(insts, masks, strict=True):
            m = lb.mask(mask)
            box = _mask_box(m > 0.0)
            if box is None or (m > 0.5).sum() == 0 and m.max() < 0.25:
                continue  # vanished after augmentation / letterboxing
            nbox = box / size
            labels.append(label_of[inst.class_name])
            boxes.append(nbox)
            small.append(F.avg_pool2d(torch.from_numpy(m)[None, None], mask_stride)[0, 0])
            r_boxes.append(nbox)
            r_masks.append(torch.from_numpy((m > 0.0).astype(np.float32)))
            r_labels.append(label_of[inst.class_name])
            r_image.append(b)
        h = size // mask_stride
        targets.append(
            {
                "labels": torch.tensor(labels, dtype=torch.long),
                "boxes": xyxy_to_cxcywh(
                    torch.tensor(np.array(boxes), dtype=torch.float32).view(-1, 4)
                ),
                "masks": torch.stack(small) if small else torch.zeros(0, h, h),
            }
        )
    keep = list(range(len(r_labels)))
    if len(keep) > max_regions:
        pick = (rng or np.random.default_rng(0)).choice(len(keep), max_regions, replace=False)
        keep = sorted(int(i) for i in pick)
    return TrainBatch(
        images=torch.from_numpy(np.stack(images)),
        targets=targets,
        region_boxes=torch.tensor(np.array([r_boxes[i] for i in keep]), dtype=torch.float32).view(
            -1, 4
        ),
        region_masks=torch.stack([r_masks[i] for i in keep])
        if keep
        else torch.zeros(0, size, size),
        region_labels=torch.tensor([r_labels[i] for i in keep], dtype=torch.long),
        region_image=torch.tensor([r_image[i] for i in keep], dtype=torch.long),
        num_classes=len(episode.class_names),
    )
