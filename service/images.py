"""Uploads in, masks out: the service's side of images.

Decoding is models/decode.py (byte limit before anything is parsed, format and pixel size from
the header, then OpenCV's decode to uint8 RGB); here its refusals become problem details: 413 too
large (bytes or pixels), 415 not an image or an unsupported format, 400 truncated or corrupt, 422
empty. Masks go out as COCO RLE (models/rle.py) or COCO polygons; the anomaly heatmap as a PNG;
prompt regions come back as thumbnails.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

from models import decode
from models.decode import DecodedImage, ImageDecodeError
from service.errors import Problem

__all__ = [
    "DecodedImage",
    "check_size",
    "decode_image",
    "decode_mask",
    "encode_png",
    "encode_polygons",
    "defect_level",
    "grey_level_bins",
    "grey_level_spread",
    "heatmap",
    "heatmap_png_base64",
    "regions_from_mask",
    "thumbnail",
]

# ImageDecodeError.reason -> (HTTP status, problem type)
_DECODE_PROBLEMS = {
    "empty": (422, "empty-image"),
    "too-large": (413, "image-too-large"),
    "too-many-pixels": (413, "image-too-many-pixels"),
    "not-an-image": (415, "not-an-image"),
    "unsupported-format": (415, "unsupported-image-format"),
    "corrupt": (400, "corrupt-image"),
}


# A mask is two levels, give or take anti-aliased or JPEG-blurred edges (at most 2% of the pixels
# of every magnetic-tile mask, 1% of a mask shrunk to a third); a photo spreads over many (14% at
# least on the magnetic-tile photos, about half on most).
MAX_MASK_SPREAD = 0.1
# Defects drawn in the shared datasets cover at most 70% of their image (NEU-Seg's patches); a
# mask over nearly all of it is a mistake, and a prompt without background the model cannot use.
MAX_MASK_COVER = 0.95


def _problem(exc: ImageDecodeError, what: str = "image") -> Problem:
    status, kind = _DECODE_PROBLEMS.get(exc.reason, (400, "corrupt-image"))
    detail = str(exc) if what == "image" else str(exc).replace("the image", f"the {what}")
    return Problem(status, kind, detail)


def check_size(data: bytes, max_bytes: int, what: str = "image") -> None:
    """Refuse empty and oversize payloads before any parsing."""
    if len(data) == 0:
        raise Problem(422, "empty-image", f"the {what} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise Problem(
            413,
            "image-too-large",
            f"the {what} is {len(data)} bytes; the limit is {max_bytes} bytes",
        )


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Validated decode of an upload to uint8 RGB (H, W, 3), or a 4xx Problem."""
    try:
        return decode.decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise _problem(exc) from exc


def decode_mask(data: bytes, width: int, height: int, max_bytes: int) -> np.ndarray:
    """A mask upload (PNG preferred; any supported format) -> (H, W) bool: defect pixels are the
    non-zero ones, or those nearer the upper level of a two-level mask (`defect_level`).

    Refused (422) when it is not the image's size, when it has many grey levels (a photo sent as
    the mask) and when it marks nearly the whole image (an inverted mask, or the image itself):
    each would otherwise register an exemplar that teaches the class nothing.
    """
    check_size(data, max_bytes, "mask")
    try:
        _, w, h = decode.probe(data, width * height + 1)
    except ImageDecodeError as exc:
        raise _problem(exc, "mask") from exc
    if (w, h) != (width, height):
        raise Problem(
            422,
            "mask-size-mismatch",
            f"the mask is {w}x{h} but the image is {width}x{height}; they must match",
        )
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise Problem(400, "corrupt-image", "the mask could not be decoded")
    if raw.ndim == 3:
        raw = (raw[..., :3] if raw.shape[2] >= 3 else raw).max(axis=2)
    bins = grey_level_bins(raw)
    spread = grey_level_spread(bins)
    if spread > MAX_MASK_SPREAD:
        raise Problem(
            422,
            "mask-not-binary",
            f"{spread:.0%} of the mask's pixels lie outside its two main grey levels: it looks "
            "like a photo, not a mask; send a PNG whose defect pixels are non-zero and the rest 0",
        )
    mask = np.asarray(raw > defect_level(raw, bins))
    if mask.mean() >= MAX_MASK_COVER:
        raise Problem(
            422,
            "mask-covers-image",
            f"the mask marks {mask.mean():.0%} of the image as defect; an exemplar is a region of "
            "the image: is the mask inverted (the background must be 0) or is it the image itself?",
        )
    return mask


def grey_level_bins(grey: np.ndarray) -> np.ndarray:
    """Each pixel's bin among 16 equal grey-level bins: integer images binned over their type's
    range, float ones over [0, their maximum]."""
    if np.issubdtype(grey.dtype, np.integer):
        scaled = grey.astype(np.float64) / np.iinfo(grey.dtype).max
    else:
        vals = np.nan_to_num(grey.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scaled = vals / max(float(vals.max()), 1e-12)
    return np.clip((scaled * 16).astype(np.int64), 0, 15)


def grey_level_spread(bins: np.ndarray) -> float:
    """Share of pixels outside the two most-filled grey-level bins: 0 for a clean two-level mask,
    large for a photo."""
    counts = np.sort(np.bincount(bins.ravel(), minlength=16))[::-1]
    return float(1.0 - counts[:2].sum() / max(bins.size, 1))


def defect_level(grey: np.ndarray, bins: np.ndarray) -> float:
    """The grey value a mask's defect pixels lie above.

    A 0 / 255 mask saved as JPEG rings a few levels up from 0 around its edges and in stray
    blocks, which "non-zero" would turn into a grown region and extra exemplars: when the mask has
    a second level far from its most common one (a quarter of the range or more), the cut is
    midway between the two, and the upper one is the defect (the lower, for an inverted mask, is
    then refused for covering the image). Otherwise (a 0 / 1 mask, a label map of small labels)
    it is 0.
    """
    counts = np.bincount(bins.ravel(), minlength=16)
    main = int(np.argmax(counts))
    far = counts * (np.abs(np.arange(16) - main) >= 4)
    if not far.any():
        return 0.0
    other = int(np.argmax(far))
    return (float(np.median(grey[bins == main])) + float(np.median(grey[bins == other]))) / 2


def regions_from_mask(mask: np.ndarray, min_pixels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components (8-connected) of a mask -> [(box xyxy float32, component mask)].

    Boxes are exclusive on the right/bottom (x1 = last column + 1), as in the datasets.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_pixels:
            continue
        box = np.array([x, y, x + w, y + h], dtype=np.float32)
        out.append((box, labels == i))
    return out


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) bool -> COCO polygons: outer contours as flat [x0, y0, x1, y1, ...] lists."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    for contour in contours:
        if len(contour) < 3:  # COCO needs at least a triangle; a 1-2 pixel blob gets its box
            x, y, w, h = cv2.boundingRect(contour)
            contour = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.int32)
        polygons.append([float(v) for v in contour.reshape(-1)])
    return polygons


def encode_png(image: np.ndarray) -> bytes:
    """uint8 grey (H, W) or RGB (H, W, 3) -> PNG bytes."""
    arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def heatmap(scores: np.ndarray, masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Score-weighted sum of masks (IAP-AS: Score = sum_i s_i m_i), clipped to [0, 1], (H, W)."""
    out = np.zeros((height, width), dtype=np.float32)
    for score, mask in zip(scores, masks, strict=True):
        out += np.float32(score) * mask
    return np.clip(out, 0.0, 1.0)


def heatmap_png_base64(heat: np.ndarray) -> str:
    """(H, W) float in [0, 1] -> base64 of an 8-bit grey PNG (255 = score 1)."""
    grey = np.round(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.uint8)
    return base64.b64encode(encode_png(grey)).decode("ascii")


def thumbnail(
    rgb: np.ndarray, box: tuple[float, float, float, float], mask: np.ndarray | None, side: int
) -> bytes:
    """PNG crop of a region with a margin, its mask outlined, longest side scaled to `side`."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    margin = 0.15 * max(x1 - x0, y1 - y0) + 2
    cx0, cy0 = max(0, int(x0 - margin)), max(0, int(y0 - margin))
    cx1, cy1 = min(w, int(np.ceil(x1 + margin))), min(h, int(np.ceil(y1 + margin)))
    if cx1 <= cx0 or cy1 <= cy0:
        cx0, cy0, cx1, cy1 = 0, 0, w, h
    crop = rgb[cy0:cy1, cx0:cx1].copy()
    if mask is not None and mask.shape == (h, w):
        region = mask[cy0:cy1, cx0:cx1].astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(crop, contours, -1, (255, 0, 0), 1)
    else:
        bx0, by0 = int(x0) - cx0, int(y0) - cy0
        bx1, by1 = int(np.ceil(x1)) - cx0 - 1, int(np.ceil(y1)) - cy0 - 1
        cv2.rectangle(crop, (bx0, by0), (bx1, by1), (255, 0, 0), 1)
    scale = side / max(crop.shape[:2])
    if scale < 1:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    return encode_png(crop)
