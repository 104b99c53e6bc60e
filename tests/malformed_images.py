"""A corpus of malformed and unusual image uploads, generated in memory (nothing shipped).

Each `Case` is bytes plus what the service must answer: a set of 4xx statuses for input that is
broken or hostile (truncated, wrong magic, decompression bombs, zero size, unsupported formats),
or 200 for input that is valid but unusual (16-bit, CMYK, palette, 1 x 100000, the first frame of
an animated PNG). Used by tests/test_service_reliability.py (through the service) and
scripts/fuzz.py (against any running service).

`corpus(max_pixels)` sizes the decompression bombs from the service's pixel limit, so a bomb is
always over it while its encoded bytes stay tiny (a few hundred KiB at most).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

__all__ = ["Case", "bomb_png", "corpus"]

SIDE = 64  # valid cases are SIDE x SIDE unless their point is their shape


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: frozenset[int]  # acceptable statuses of POST /v1/inspect

    @property
    def valid(self) -> bool:
        return 200 in self.expect


def _bad(name: str, data: bytes, *statuses: int) -> Case:
    return Case(name, data, frozenset(statuses))


def _ok(name: str, data: bytes) -> Case:
    return Case(name, data, frozenset({200}))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_raw(width: int, height: int, rows: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG from raw scanlines (each already prefixed with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def _pil(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _cv(ext: str, arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok, ext
    return buf.tobytes()


def bomb_png(side: int) -> bytes:
    """A real decompression bomb: side x side grey zeros, deflated to almost nothing."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def _jpeg_header(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 frame header claiming width x height, then EOI (no scan)."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def corpus(max_pixels: int = 40_000_000) -> list[Case]:
    """Every case, in a fixed order (deterministic content)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    png = _cv(".png", bgr)
    jpeg = _cv(".jpg", bgr)
    tiff = _cv(".tiff", bgr)
    pil = Image.fromarray(rgb)
    bomb_side = math.isqrt(max_pixels) + 64  # just over the service's pixel limit
    frames = [Image.fromarray(np.full((SIDE, SIDE, 3), v, np.uint8)) for v in (30, 200)]
    animated: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    garbage = bytes(rng.integers(0, 255, 200, dtype=np.uint8))
    grey16 = (rng.integers(0, 65535, (SIDE, SIDE), dtype=np.uint16)).astype(np.uint16)
    zero_ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR CRC
    bad_idat = bytearray(png)
    mid = len(png) // 2
    bad_idat[mid : mid + 16] = bytes(16)  # zeros over compressed pixel data
    return [
        # ---- truncated ----
        _bad("png-signature-only", png[:8], 400, 415),
        _bad("png-truncated-in-ihdr", png[:20], 400, 415),
        _bad("png-header-only", png[:33], 400),
        _bad("png-truncated-half", png[: len(png) // 2], 400),
        _bad("png-without-iend", png[:-12], 400),
        _bad("jpeg-soi-only", jpeg[:2], 400, 415),
        _bad("jpeg-truncated-header", jpeg[:100], 400),
        _bad("jpeg-truncated-half", jpeg[: len(jpeg) // 2], 400),
        _bad("jpeg-without-eoi", jpeg[:-2], 400),
        _bad("tiff-truncated-half", tiff[: len(tiff) // 2], 400),
        # ---- corrupt ----
        _bad("png-bad-ihdr-crc", bytes(bad_crc), 400),
        _bad("png-zeroed-idat", bytes(bad_idat), 400),
        _bad("jpeg-header-no-scan", _jpeg_header(SIDE, SIDE), 400),
        # ---- wrong magic ----
        _bad("png-wrong-magic", b"\x88" + png[1:], 415),
        _bad("jpeg-wrong-magic", b"\xff\xd7" + jpeg[2:], 415),
        _bad("png-body-behind-jpeg-magic", b"\xff\xd8\xff\xe0" + png[4:], 400, 415),
        _bad("bmp-magic-garbage", b"BM" + garbage, 400),
        _bad("tiff-magic-garbage", b"II*\x00" + garbage, 400),
        _bad("text", b"GET / HTTP/1.1\r\n\r\n" * 4, 415),
        _bad("html", b"<!doctype html><html><body>hi</body></html>", 415),
        _bad("zeros", bytes(4096), 415),
        _bad("empty", b"", 422),
        # ---- decompression bombs and absurd sizes ----
        _bad("png-bomb-real", bomb_png(bomb_side), 413),
        _bad("png-bomb-header-100000x100000", _png_raw(100_000, 100_000, b"\x00\x00"), 413),
        _bad("jpeg-bomb-header-65000x65000", _jpeg_header(65_000, 65_000), 413),
        _bad("png-0x0", b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", zero_ihdr), 400, 415, 422),
        _bad("png-1x0", _png_raw(1, 0, b""), 400, 415, 422),
        # ---- unsupported formats ----
        _bad("gif-animated", _pil(frames[0], "GIF", **animated), 415),
        _bad("webp", _pil(pil, "WEBP"), 415),
        _bad("ico", _pil(pil, "ICO"), 415),
        # ---- valid but unusual: answered like any image ----
        _ok("png-1x100000", _png_raw(1, 100_000, b"\x00\x80" * 100_000)),
        _ok("png-100000x1", _png_raw(100_000, 1, b"\x00" + b"\x80" * 100_000)),
        _ok("png-1x1", _png_raw(1, 1, b"\x00\x80")),
        _ok("png-16bit-rgb", _cv(".png", bgr.astype(np.uint16) * 257)),
        _ok("png-16bit-grey", _cv(".png", grey16)),
        _ok("tiff-16bit-grey", _cv(".tiff", grey16)),
        _ok("tiff-float32", _cv(".tiff", rgb.astype(np.float32) / 255.0)),
        _ok("jpeg-cmyk", _pil(pil.convert("CMYK"), "JPEG")),
        _ok("tiff-cmyk", _pil(pil.convert("CMYK"), "TIFF")),
        _ok("png-palette", _pil(pil.convert("P"), "PNG")),
        _ok("png-1bit", _pil(pil.convert("1"), "PNG")),
        _ok("png-grey-alpha", _pil(pil.convert("LA"), "PNG")),
        _ok("png-animated-first-frame", _pil(frames[0], "PNG", **animated)),
        _ok("tiff-multipage", _pil(frames[0], "TIFF", **animated)),
        _ok("jpeg-progressive", _pil(pil, "JPEG", progressive=True, quality=90)),
        _ok("bmp", _cv(".bmp", bgr)),
    ]
