"""COCO run-length encoding of binary masks (pycocotools), the service's compact mask format.

`encode_rle` gives {"size": [H, W], "counts": str}: the compressed COCO RLE with its counts as an
ASCII string, so it goes straight into JSON and decodes with any COCO tool.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool/0-1 mask -> {"size": [H, W], "counts": str}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8) != 0, dtype=np.uint8))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
    }


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(n, H, W) masks -> n RLEs (one pycocotools call)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks are (n, H, W), got shape {masks.shape}")
    if len(masks) == 0:
        return []
    stacked = np.asfortranarray((masks != 0).transpose(1, 2, 0), dtype=np.uint8)  # (H, W, n)
    return [
        {
            "size": [int(v) for v in r["size"]],
            "counts": r["counts"].decode("ascii")
            if isinstance(r["counts"], bytes)
            else str(r["counts"]),
        }
        for r in mask_utils.encode(stacked)
    ]


def _coco(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO "iscrowd" annotations)
        h, w = rle["size"]
        return mask_utils.frPyObjects({"size": [int(h), int(w)], "counts": counts}, int(h), int(w))
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of `encode_rle` (also takes uncompressed list counts): (H, W) bool."""
    return mask_utils.decode(_coco(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """Foreground pixel count of an RLE, without decoding it."""
    return int(mask_utils.area(_coco(rle)))
