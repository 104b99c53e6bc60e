"""The classical baseline a user would reach for: OpenCV template matching of the prompt crops.

Each prompt instance's crop is matched (normalised cross-correlation on grey levels) at several
scales and in the 4 (or, configurable, 8) orientations of the square (90-degree turns, with flips
at 8); response peaks become boxes, de-duplicated per class with NMS. Masks are the filled
boxes (`Prediction.mask = None`), which keeps memory flat over thousands of predictions.
It has no notion of "defect" beyond pixel similarity, which is exactly what it is here to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.box_ops import nms as box_nms
from models.data.records import Instance
from models.evaluation.metrics import Prediction
from models.template_proposals import response_peaks

MIN_TEMPLATE_SIDE = 4  # smaller crops match noise
MIN_TEMPLATE_STD = 1.0  # a flat crop has no correlation to speak of


@dataclass(frozen=True)
class TemplateMatcherConfig:
    """Knobs of the baseline; the defaults keep it near 50 ms per image and class on 2 cores, so a
    full InsA evaluation (three seeds, ~1300 queries) stays within minutes."""

    scales: tuple[float, ...] = (0.71, 1.0, 1.41)  # template resize factors
    orientations: int = 4  # 1 (as drawn), 4 (rotations) or 8 (rotations and flips)
    max_templates_per_class: int = 4  # the largest prompt instances of each class are kept
    max_side: int = 512  # images are downscaled so that their longer side is at most this
    min_score: float = 0.3  # response peaks below this are not reported
    peaks_per_map: int = 10  # strongest peaks kept per response map
    nms_iou: float = 0.3  # class-wise NMS threshold
    max_detections: int = 100  # per image, over all classes


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of boxes (N, 4) xyxy kept by greedy non-maximum suppression, best first."""
    kept = box_nms(
        torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
        torch.from_numpy(np.asarray(scores, dtype=np.float32)),
        iou_threshold,
    )
    return kept.numpy().astype(np.int64)


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Grey image with its longer side at most `max_side`, and the factor applied."""
    gray = _gray(image)
    factor = min(1.0, max_side / max(gray.shape))
    if factor < 1.0:
        gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return gray, factor


def _orientations(template: np.ndarray, count: int) -> list[np.ndarray]:
    """The template under the first `count` symmetries of the square."""
    variants = []
    for flipped in (template, template[:, ::-1]):
        for turns in range(4):
            variants.append(np.ascontiguousarray(np.rot90(flipped, turns)))
    return variants[:count]


def _crops(
    prompts: Sequence[tuple[np.ndarray, list[Instance]]],
    class_name: str,
    config: TemplateMatcherConfig,
) -> list[np.ndarray]:
    """Grey crops of the class's largest prompt instances, at working resolution."""
    crops = []
    for image, instances in prompts:
        gray, factor = _downscale(image, config.max_side)
        for instance in instances:
            if instance.class_name != class_name:
                continue
            x0, y0, x1, y1 = np.round(instance.box * factor).astype(int)
            crop = gray[max(y0, 0) : y1, max(x0, 0) : x1]
            if min(crop.shape) >= MIN_TEMPLATE_SIDE and crop.std() >= MIN_TEMPLATE_STD:
                crops.append(crop)
    crops.sort(key=lambda c: -c.size)
    return crops[: config.max_templates_per_class]


def _templates(crop: np.ndarray, config: TemplateMatcherConfig) -> list[np.ndarray]:
    """All scaled and oriented versions of one crop."""
    out = []
    for scale in config.scales:
        h, w = round(crop.shape[0] * scale), round(crop.shape[1] * scale)
        if min(h, w) < MIN_TEMPLATE_SIDE:
            continue
        scaled = cv2.resize(
            crop, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        out.extend(_orientations(scaled, config.orientations))
    return out


def _peaks(response: np.ndarray, size: tuple[int, int], config: TemplateMatcherConfig) -> tuple:
    """(boxes (N, 4), scores (N,)) at local maxima of a response map, strongest first."""
    return response_peaks(response, size, config.min_score, config.peaks_per_map)


class TemplateMatcher:
    """Prompt crops in, `Prediction`s out; no training, no state between images."""

    def __init__(
        self,
        prompts: dict[str, list[tuple[np.ndarray, list[Instance]]]],
        config: TemplateMatcherConfig | None = None,
    ) -> None:
        self.config = config or TemplateMatcherConfig()
        self.templates: dict[str, list[np.ndarray]] = {}
        for class_name, examples in sorted(prompts.items()):
            self.templates[class_name] = [
                t
                for crop in _crops(examples, class_name, self.config)
                for t in _templates(crop, self.config)
            ]

    def _match_class(self, gray: np.ndarray, class_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and scores (N,) of one class on a grey working image, after NMS."""
        boxes, scores = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
        for template in self.templates[class_name]:
            if template.shape[0] > gray.shape[0] or template.shape[1] > gray.shape[1]:
                continue
            response = cv2.matchTemplate(gray, template, cv2.TM_CCOEFF_NORMED)
            response = np.nan_to_num(np.clip(response, -1.0, 1.0), nan=0.0)
            found = _peaks(response, template.shape, self.config)
            boxes.append(found[0])
            scores.append(found[1])
        all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
        keep = nms(all_boxes, all_scores, self.config.nms_iou)
        return all_boxes[keep], all_scores[keep]

    def predict(self, image_id: str, image: np.ndarray) -> list[Prediction]:
        """Detections on one image (uint8 (H, W, 3) RGB or (H, W) grey), best first, at most 100."""
        gray, factor = _downscale(image, self.config.max_side)
        height, width = image.shape[:2]
        found = []
        for class_name in self.templates:
            boxes, scores = self._match_class(gray, class_name)
            boxes = np.clip(boxes / factor, 0, [width, height, width, height]).astype(np.float32)
            found.extend(
                Prediction(image_id, class_name, float(s), b, None)
                for b, s in zip(boxes, scores, strict=True)
            )
        found.sort(key=lambda p: -p.score)
        return found[: self.config.max_detections]
