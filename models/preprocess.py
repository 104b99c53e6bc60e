"""Letterboxing shared by training, evaluation and every inference backend.

An image of any size is scaled to fit an S x S square with its aspect ratio kept and padded
bottom/right with mid-grey; `Letterbox` remembers the scale so boxes and masks map back to the
original pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # mid-grey padding, the usual letterbox colour


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed image."""

    scale: float  # network pixels per original pixel
    width: int  # original width
    height: int  # original height
    size: int  # network input side S

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        return cls(scale=size / max(width, height), width=width, height=height, size=size)

    @property
    def inner(self) -> tuple[int, int]:
        """(w, h) of the resized image inside the square."""
        return (max(1, round(self.width * self.scale)), max(1, round(self.height * self.scale)))

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) uint8."""
        w, h = self.inner
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        out = np.full((self.size, self.size, 3), PAD_VALUE, dtype=np.uint8)
        out[:h, :w] = cv2.resize(image, (w, h), interpolation=interp)
        return out

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool/uint8 -> (S, S) float32 in [0, 1] (area-averaged when shrinking)."""
        w, h = self.inner
        out = np.zeros((self.size, self.size), dtype=np.float32)
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        out[:h, :w] = cv2.resize(mask.astype(np.float32), (w, h), interpolation=interp)
        return out

    def boxes_to_network(self, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) xyxy original pixels -> (n, 4) xyxy normalised to the S x S input."""
        return np.asarray(boxes, dtype=np.float32) * self.scale / self.size

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) xyxy normalised to the S x S input -> xyxy original pixels, clipped."""
        out = np.asarray(boxes, dtype=np.float32) * self.size / self.scale
        out[:, 0::2] = out[:, 0::2].clip(0, self.width)
        out[:, 1::2] = out[:, 1::2].clip(0, self.height)
        return out

    def masks_to_original(self, masks: np.ndarray) -> np.ndarray:
        """(n, h, w) probabilities over the S x S input at any resolution -> (n, H, W) float32."""
        if len(masks) == 0:
            return np.zeros((0, self.height, self.width), dtype=np.float32)
        m = masks.shape[-1] / self.size  # mask pixels per network pixel
        w, h = self.inner
        crop = masks[:, : max(1, round(h * m)), : max(1, round(w * m))]
        return np.stack(
            [
                cv2.resize(
                    c.astype(np.float32), (self.width, self.height), interpolation=cv2.INTER_LINEAR
                )
                for c in crop
            ]
        )


def to_tensor_layout(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32 in [0, 1], the network's input layout."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
