"""Image bytes -> uint8 RGB (H, W, 3), the input every predictor takes.

Decoding is OpenCV's (`cv2.imdecode` with IMREAD_UNCHANGED, so 16-bit samples and alpha are seen
rather than silently converted), guarded so that broken or hostile input is refused cheaply and
clearly: the byte size first, then the format and pixel size from the header alone (PIL, lazy: a
decompression bomb is refused before any pixel is decoded), then the decode and the conversion:

- 16-bit samples keep their 8 most significant bits (`>> 8`, the full range mapped linearly);
- float samples (32-bit TIFF) are taken as [0, 1] and clipped;
- grey becomes three equal channels; alpha is dropped (the camera saw the colour, not the alpha);
- EXIF orientation is ignored: inspection cameras deliver pixels as the sensor saw them.

Every failure is an `ImageDecodeError` whose `reason` says which (the service maps it to a 4xx).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "MPO"})
FORMAT_NAMES = "JPEG, PNG, BMP or TIFF"
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """An image that cannot be used; `reason` is one of REASONS."""

    REASONS = (
        "empty",  # no bytes, or zero width/height
        "too-large",  # more bytes than allowed
        "too-many-pixels",  # width * height over the limit (or a decompression bomb)
        "not-an-image",  # no known image signature
        "unsupported-format",  # a real image in a format or sample type we do not take
        "corrupt",  # recognised but broken or truncated
    )

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels and what the source was."""

    rgb: np.ndarray  # (H, W, 3) uint8
    format: str  # "PNG", "JPEG", ...
    bit_depth: int  # 8, 16 or 32 (float) bits per source sample
    channels: int  # source channels: 1 grey, 3 colour, 4 colour + alpha (2: grey + alpha)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; refuses non-images and huge images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = str(im.format), im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            "too-many-pixels", f"the image is too large to decode safely ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        fmt, size = _signature(data), _tiff_size(data)
        if fmt is None:
            raise ImageDecodeError(
                "not-an-image", f"the data is not a {FORMAT_NAMES} image"
            ) from exc
        if size is None:  # a known signature PIL could not read: broken, not foreign
            raise ImageDecodeError(
                "corrupt", f"the {fmt} image header is corrupt or truncated"
            ) from exc
        width, height = size  # a TIFF PIL cannot open (e.g. float RGB); OpenCV decodes it
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's way of saying "broken header"
        raise ImageDecodeError("corrupt", f"the image header is corrupt: {exc}") from exc
    if fmt not in SUPPORTED_FORMATS:
        raise ImageDecodeError(
            "unsupported-format", f"{fmt} images are not accepted; send {FORMAT_NAMES}"
        )
    if width <= 0 or height <= 0:
        raise ImageDecodeError("empty", f"the image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too-many-pixels",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    return fmt, width, height


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}


def _signature(data: bytes) -> str | None:
    """The format a file's leading bytes claim, if one of ours."""
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a classic TIFF's first IFD, or None when it is not readable."""
    if _signature(data) != "TIFF" or len(data) < 8:
        return None
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack_from(order + "H", data, offset)
    tags: dict[int, int] = {}
    for i in range(count):
        at = offset + 2 + 12 * i
        if at + 12 > len(data):
            return None
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = order + ("H" if kind == 3 else "I")
            tags[tag] = struct.unpack_from(fmt, data, at + 8)[0]
    if 256 not in tags or 257 not in tags:
        return None
    return tags[256], tags[257]


def to_rgb8(raw: np.ndarray) -> tuple[np.ndarray, int, int]:
    """An IMREAD_UNCHANGED array (grey / BGR / BGRA; uint8, uint16 or float) ->
    (uint8 RGB (H, W, 3), source bits per sample, source channels)."""
    if raw.dtype == np.uint8:
        depth, x = 8, raw
    elif raw.dtype == np.uint16:
        depth, x = 16, (raw >> 8).astype(np.uint8)
    elif raw.dtype in (np.float32, np.float64):
        depth, x = 32, (np.clip(np.nan_to_num(raw), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageDecodeError("unsupported-format", f"{raw.dtype} image samples are not supported")
    channels = 1 if x.ndim == 2 else x.shape[2]
    if channels == 1:
        rgb = cv2.cvtColor(x.reshape(x.shape[:2]), cv2.COLOR_GRAY2RGB)
    elif channels == 2:  # grey + alpha
        rgb = cv2.cvtColor(np.ascontiguousarray(x[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        rgb = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        rgb = cv2.cvtColor(x, cv2.COLOR_BGRA2RGB)
    else:
        raise ImageDecodeError("unsupported-format", f"{channels}-channel images are not supported")
    return np.ascontiguousarray(rgb), depth, channels


def decode_image(
    data: bytes, max_bytes: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Validated decode of encoded image bytes to uint8 RGB."""
    if len(data) == 0:
        raise ImageDecodeError("empty", "the image is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageDecodeError(
            "too-large", f"the image is {len(data)} bytes; the limit is {max_bytes} bytes"
        )
    fmt, width, height = probe(data, max_pixels)
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if raw is None or raw.size == 0:
        raise ImageDecodeError(
            "corrupt", f"the {fmt} image could not be decoded (truncated or corrupt)"
        )
    if raw.shape[:2] != (height, width):
        raise ImageDecodeError("corrupt", f"the {fmt} image decodes to a different size")
    if fmt in ("JPEG", "MPO") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # libjpeg fills a truncated scan with grey and only warns: refuse it explicitly.
        raise ImageDecodeError("corrupt", "the JPEG image is truncated (no end-of-image marker)")
    if fmt == "PNG" and data.rfind(b"IEND") < data.rfind(b"IDAT"):
        raise ImageDecodeError("corrupt", "the PNG image is truncated (no IEND chunk)")
    rgb, depth, channels = to_rgb8(raw)
    return DecodedImage(rgb=rgb, format=fmt, bit_depth=depth, channels=channels)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB (H, W, 3) of an image file."""
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels).rgb


IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (any depth), sorted; a NAME.png lying beside a NAME image
    of another format is left out: it is that image's mask, as in the folder datasets."""
    files = sorted(
        f
        for f in Path(folder).rglob("*")
        if f.is_file() and f.suffix.lower() in IMAGE_FILE_SUFFIXES
    )
    stems = {f.with_suffix("") for f in files if f.suffix.lower() != ".png"}
    return [f for f in files if f.suffix.lower() != ".png" or f.with_suffix("") not in stems]
