"""The exemplar-border prior: a class whose exemplars all lie inside the picture is not expected at
its border.

Where the image border cuts through the part, the fixture, the part's own edge and the shadow
between them look like many small defects; an engineer who draws only exemplars inside the surface
(pores, inclusions, spots) says by that alone that such a region is not one of them, while one who
draws exemplars cut by the border (edge chips, frays, bands across the part) says the opposite.
So when none of a class's exemplars touches its prompt image's border, each detection of that class
whose box touches the inspected image's border has its probability multiplied by the model file's
`border_factor` (0.5 for new models; 1 turns the prior off); a class with any exemplar at the border
is left alone. The prior demotes, never vetoes: a defect that does sit at the border is still
reported when the network is sure of it.

On magnetic tiles, split models, the highest-scored detections on defect-free tiles mostly touch
the border (median distance 0) while the held-out blowholes do not (median 10% of the side); the
prior lifts Blowhole held out and leaves Fray and Uneven, whose exemplars touch the border, as they
were (README, "Open-set").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BORDER_TOLERANCE = 0.01  # a box within this share of the image side of an edge touches it


def touches_border(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n,) bool: which xyxy boxes (n, 4), in the pixels of an image of that size, reach within
    `BORDER_TOLERANCE` of its side from any of its four edges."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tx, ty = BORDER_TOLERANCE * width, BORDER_TOLERANCE * height
    return (b[:, 0] <= tx) | (b[:, 1] <= ty) | (b[:, 2] >= width - tx) | (b[:, 3] >= height - ty)


def border_factors(
    boxes: np.ndarray,
    class_index: np.ndarray,
    interior_classes: Sequence[bool],
    height: int,
    width: int,
    factor: float,
) -> np.ndarray:
    """(n,) float32 factors: `factor` for a detection of an interior class (`interior_classes[c]`:
    no exemplar of class c touches its image's border) whose box touches this image's border, else
    1. Classes past the end of `interior_classes` count as not interior."""
    out = np.ones(len(class_index), dtype=np.float32)
    if factor >= 1.0 or len(out) == 0:
        return out
    interior = np.zeros(int(np.max(class_index)) + 1, bool)
    known = min(len(interior), len(interior_classes))
    interior[:known] = np.asarray(interior_classes[:known], dtype=bool)
    demote = interior[np.asarray(class_index)] & touches_border(boxes, height, width)
    out[demote] = factor
    return out
