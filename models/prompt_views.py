"""Prompt views: an exemplar seen in flips of its image, so its embedding does not depend on which
way the part lay when it was photographed.

A QA engineer registers a handful of exemplars, and each one's embedding moves a little with the
defect's orientation in its image: SSPE's radial spectrum is orientation-invariant, but the spatial
prompt path is not. A line shows the same defect in any orientation, so each exemplar is encoded
in the views of a flip group of its image and the embeddings are averaged (then re-normalised).
Because the views form a group, registering a flipped photo of the same part gives the same
embedding. The count of views is the model file's `prompt_views` (`models/config.py`):

    1: the image as given        2: + its mirror image
    4: + upside down, + turned half round (the flips that keep the image's shape)
    8: the four above and their transposes (quarter turns included)

It costs `prompt_views` encoder passes per registered image, once, and nothing per inspection.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

VIEW_COUNTS = (1, 2, 4, 8)


def _flip(
    image: np.ndarray, boxes: np.ndarray, masks: list[np.ndarray | None], h: bool, v: bool
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """The image, its (R, 4) xyxy boxes and its masks flipped left-right (`h`) and/or upside down
    (`v`)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = boxes.T
    if h:
        image, x0, x1 = image[:, ::-1], width - x1, width - x0
        masks = [None if m is None else m[:, ::-1] for m in masks]
    if v:
        image, y0, y1 = image[::-1], height - y1, height - y0
        masks = [None if m is None else m[::-1] for m in masks]
    return image, np.stack([x0, y0, x1, y1], axis=1), masks


def _transpose(
    image: np.ndarray, boxes: np.ndarray, masks: list[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """Rows become columns: the image mirrored about its main diagonal."""
    return (
        image.swapaxes(0, 1),
        boxes[:, [1, 0, 3, 2]],
        [None if m is None else m.T for m in masks],
    )


def prompt_views(
    image: np.ndarray, boxes: np.ndarray, masks: list[np.ndarray | None], count: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]]:
    """The first `count` views (1, 2, 4 or 8) of an image (H, W[, C]) with its regions: (R, 4)
    xyxy boxes in pixels and one (H, W) bool mask or None per region, each view contiguous."""
    if count not in VIEW_COUNTS:
        raise ValueError(f"prompt_views must be one of {VIEW_COUNTS}, got {count}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flips = ((False, False), (True, False), (False, True), (True, True))
    bases = [(image, boxes, list(masks))]
    if count == 8:
        bases.append(_transpose(image, boxes, list(masks)))
    for base in bases:
        for h, v in flips[: min(count, 4)]:
            im, bx, ms = _flip(*base, h, v)
            yield (
                np.ascontiguousarray(im),
                bx.astype(np.float32),
                [None if m is None else np.ascontiguousarray(m) for m in ms],
            )
