"""Procedural synthetic defect images with exact masks, for pre-training and for tests.

Real defect data is scarce and its classes are the ones we must hold out, so the detector first
learns "a few exemplars of *something* on *some* surface" from an unbounded stream of made-up
defects. Each image is a surface (plain, gradient, brushed metal, weave, noise, tiles, wood,
speckle; grey or colour) with defects drawn on it. A defect is first drawn as an exact binary shape,
the InsA rule is applied to that shape, and only then is its appearance (darker or brighter, blurred
edge, shading, texture) painted from the kept shape, so the mask is exactly what was drawn.
Defects never touch each other, so the per-defect instances equal what the InsA rule would give on
the per-class union mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.data.instances import instances_from_mask
from models.data.records import DefectDataset, Instance, Record

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "bubble",
    "crack",
    "dent",
    "fray",
    "inclusion",
    "line",
    "missing_piece",
    "pit",
    "scratch",
    "spot",
    "stain",
    "uneven",
)
SURFACES: tuple[str, ...] = (
    "plain",
    "gradient",
    "brushed",
    "weave",
    "noise",
    "tiles",
    "wood",
    "speckled",
)
Rng = np.random.Generator
GRAY_SHARE = 0.5  # share of grey-level surfaces (most inspection cameras are monochrome)
SUBTLE_SHARE = 0.25  # share of low-contrast defects
MAX_PLACEMENT_TRIES = 40  # each failed try shrinks the defect a little; failing them all is a bug
SEPARATION_PX = 2  # defects keep this gap so that they never merge into one component

# ----------------------------------------------------------------------------------------------
# small numeric helpers


def log_uniform(rng: Rng, lo: float, hi: float) -> float:
    """Sizes spread evenly over scales, so small and large defects are equally common."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _value_noise(rng: Rng, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth float32 (h, w) noise in about [0, 1] with `cells` features along the longer side."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fractal_noise(rng: Rng, h: int, w: int, base: int, octaves: int) -> np.ndarray:
    """Sum of value-noise octaves normalised to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    for octave in range(octaves):
        total += _value_noise(rng, h, w, base * 2**octave) * 0.5**octave
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _roi(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding slices of a non-empty mask, padded and clipped: painting stays local and fast."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)),
    )


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """float32 alpha of a bool mask with a Gaussian edge (the camera's blur of a sharp shape)."""
    alpha = mask.astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma > 0.3 else alpha


def _random_point(rng: Rng, h: int, w: int) -> np.ndarray:
    return np.array([rng.uniform(0, w), rng.uniform(0, h)])


def _draw_polyline(canvas: np.ndarray, points: np.ndarray, thickness: int) -> None:
    cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, 1, thickness, cv2.LINE_8)


# ----------------------------------------------------------------------------------------------
# surfaces: (rng, h, w) -> float32 luminance in [0, 1] (colour is applied afterwards)


def _surface_plain(rng: Rng, h: int, w: int) -> np.ndarray:
    return 0.5 + 0.05 * (_value_noise(rng, h, w, 3) - 0.5)


def _surface_gradient(rng: Rng, h: int, w: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xs * np.cos(theta) + ys * np.sin(theta)) / max(h, w)
    ramp -= ramp.min()
    return ramp / max(float(ramp.max()), 1e-6) * 0.9 + 0.05 * _value_noise(rng, h, w, 4)


def _surface_brushed(rng: Rng, h: int, w: int) -> np.ndarray:
    side = int(np.ceil(np.hypot(h, w)))
    streaks = rng.standard_normal((side, side)).astype(np.float32)
    streaks = cv2.blur(streaks, (int(rng.integers(25, 90)), 1))
    rotation = cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(0, 180), 1.0)
    streaks = cv2.warpAffine(streaks, rotation, (side, side), borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (side - h) // 2, (side - w) // 2
    streaks = streaks[y0 : y0 + h, x0 : x0 + w]
    streaks = streaks / max(float(np.abs(streaks).max()), 1e-6)
    return 0.5 + 0.35 * streaks + 0.15 * (_value_noise(rng, h, w, 3) - 0.5)


def _surface_weave(rng: Rng, h: int, w: int) -> np.ndarray:
    period = float(rng.uniform(4, 12))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 0.5 + 0.5 * np.cos(2 * np.pi * xs / period)
    weft = 0.5 + 0.5 * np.cos(2 * np.pi * ys / period)
    over = ((xs // period + ys // period) % 2).astype(np.float32)
    cloth = over * warp + (1 - over) * weft
    return 0.25 + 0.6 * cloth + 0.15 * _value_noise(rng, h, w, 6)


def _surface_noise(rng: Rng, h: int, w: int) -> np.ndarray:
    return _fractal_noise(rng, h, w, base=int(rng.integers(3, 10)), octaves=4)


def _surface_tiles(rng: Rng, h: int, w: int) -> np.ndarray:
    size = int(rng.integers(24, 90))
    grout = int(rng.integers(1, 5))
    ys, xs = np.mgrid[0:h, 0:w]
    shades = rng.uniform(0.45, 0.75, size=(h // size + 2, w // size + 2)).astype(np.float32)
    lum = shades[ys // size, xs // size] + 0.08 * _value_noise(rng, h, w, 8)
    in_grout = (ys % size < grout) | (xs % size < grout)
    lum[in_grout] = rng.uniform(0.05, 0.25)
    return lum


def _surface_wood(rng: Rng, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = np.array([rng.uniform(-2, 3) * w, rng.uniform(-2, 3) * h], np.float32)
    radius = np.hypot(xs - centre[0], ys - centre[1])
    turbulence = _fractal_noise(rng, h, w, base=3, octaves=3)
    rings = np.sin(2 * np.pi * (radius / rng.uniform(6, 20) + 2.0 * turbulence))
    return 0.45 + 0.25 * rings + 0.1 * turbulence


def _surface_speckled(rng: Rng, h: int, w: int) -> np.ndarray:
    base = 0.5 + 0.15 * (_fractal_noise(rng, h, w, base=4, octaves=2) - 0.5)
    dots = (rng.random((h, w), dtype=np.float32) < rng.uniform(0.005, 0.04)).astype(np.float32)
    dots *= rng.choice([-1.0, 1.0], size=(h, w)).astype(np.float32)
    return base + 0.3 * cv2.GaussianBlur(dots, (0, 0), 0.7) * 2


SURFACE_FNS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "plain": _surface_plain,
    "gradient": _surface_gradient,
    "brushed": _surface_brushed,
    "weave": _surface_weave,
    "noise": _surface_noise,
    "tiles": _surface_tiles,
    "wood": _surface_wood,
    "speckled": _surface_speckled,
}


def _palette(rng: Rng, gray: bool) -> tuple[np.ndarray, np.ndarray]:
    """Dark and bright end colours (float32 (3,)) of the surface."""
    mid = rng.uniform(50, 200)
    span = rng.uniform(15, 90)
    if gray:
        dark, bright = np.full(3, mid - span / 2), np.full(3, mid + span / 2)
    else:
        hue = 1 + rng.uniform(-0.3, 0.3, size=3)  # muted: paints, anodising, board, fabric
        dark, bright = (mid - span / 2) * hue, (mid + span / 2) * hue
    return dark.astype(np.float32), bright.astype(np.float32)


def render_surface(
    rng: Rng, size: tuple[int, int], surface: str | None = None, gray: bool | None = None
) -> tuple[np.ndarray, bool]:
    """float32 (H, W, 3) surface in 0..255 and whether it is grey-level."""
    h, w = size
    surface = surface or SURFACES[int(rng.integers(len(SURFACES)))]
    if surface not in SURFACE_FNS:
        raise ValueError(f"unknown surface {surface!r}; choose from {SURFACES}")
    gray = bool(rng.random() < GRAY_SHARE) if gray is None else gray
    lum = np.clip(SURFACE_FNS[surface](rng, h, w), 0, 1)
    dark, bright = _palette(rng, gray)
    return dark + lum[..., None] * (bright - dark), gray


# ----------------------------------------------------------------------------------------------
# defect shapes: (rng, h, w, scale) -> bool (h, w); `scale` < 1 shrinks a defect that did not fit


def _shape_scratch(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    length = log_uniform(rng, 0.08, 0.6) * min(h, w) * scale
    theta = rng.uniform(0, np.pi)
    along = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-along[1], along[0]])
    t = np.linspace(0, 1, 12)[:, None]
    bend = rng.normal(0, 0.12) * length
    points = _random_point(rng, h, w) + t * length * along + 4 * t * (1 - t) * bend * normal
    canvas = np.zeros((h, w), np.uint8)
    _draw_polyline(canvas, points, int(rng.integers(1, 4)))
    return canvas.astype(bool)


def _walk(rng: Rng, start: np.ndarray, theta: float, length: float) -> np.ndarray:
    """A jagged random walk: the path of a crack."""
    steps = max(int(length / 4), 2)
    angles = theta + np.cumsum(rng.normal(0, 0.35, steps))
    deltas = 4 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([start, start + np.cumsum(deltas, axis=0)])


def _shape_crack(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    length = log_uniform(rng, 0.1, 0.5) * min(h, w) * scale
    theta = rng.uniform(0, 2 * np.pi)
    canvas = np.zeros((h, w), np.uint8)
    trunk = _walk(rng, _random_point(rng, h, w), theta, length)
    thickness = int(rng.integers(1, 3))
    _draw_polyline(canvas, trunk, thickness)
    for _ in range(int(rng.integers(0, 4))):
        fork = trunk[int(rng.integers(len(trunk)))]
        angle = theta + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
        _draw_polyline(canvas, _walk(rng, fork, angle, length * rng.uniform(0.2, 0.5)), 1)
    return canvas.astype(bool)


def _draw_ellipse(
    canvas: np.ndarray, centre: np.ndarray, axes: tuple[float, float], angle: float
) -> None:
    axes_px = (max(int(round(axes[0])), 1), max(int(round(axes[1])), 1))
    centre_px = (int(round(centre[0])), int(round(centre[1])))
    cv2.ellipse(canvas, centre_px, axes_px, angle, 0, 360, 1, -1, cv2.LINE_8)


def _shape_pit(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    radius = max(log_uniform(rng, 0.007, 0.03) * min(h, w) * scale, 2.0)
    canvas = np.zeros((h, w), np.uint8)
    axes = (radius, radius * rng.uniform(0.7, 1.0))
    _draw_ellipse(canvas, _random_point(rng, h, w), axes, rng.uniform(0, 180))
    return canvas.astype(bool)


def _shape_spot(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    radius = max(log_uniform(rng, 0.01, 0.07) * min(h, w) * scale, 2.0)
    canvas = np.zeros((h, w), np.uint8)
    axes = (radius, radius * rng.uniform(0.5, 1.0))
    _draw_ellipse(canvas, _random_point(rng, h, w), axes, rng.uniform(0, 180))
    return canvas.astype(bool)


def _blob(rng: Rng, h: int, w: int, size: float, cells: int) -> np.ndarray:
    """An irregular blob: noise thresholded under an elliptical envelope, placed anywhere."""
    bh, bw = max(int(size * rng.uniform(0.5, 1.0)), 4), max(int(size), 4)
    ys, xs = np.mgrid[-1 : 1 : bh * 1j, -1 : 1 : bw * 1j]
    envelope = np.sqrt(np.clip(1 - (xs**2 + ys**2), 0, 1)).astype(np.float32)
    local = (_value_noise(rng, bh, bw, cells) * 0.7 + 0.3) * envelope > rng.uniform(0.25, 0.4)
    canvas = np.zeros((h, w), bool)
    y0, x0 = int(rng.integers(-bh // 3, h - bh // 2)), int(rng.integers(-bw // 3, w - bw // 2))
    cy, cx = max(y0, 0), max(x0, 0)
    y1, x1 = min(y0 + bh, h), min(x0 + bw, w)
    if y1 > cy and x1 > cx:
        canvas[cy:y1, cx:x1] = local[cy - y0 : y1 - y0, cx - x0 : x1 - x0]
    return canvas


def _shape_stain(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    return _blob(
        rng, h, w, log_uniform(rng, 0.08, 0.3) * min(h, w) * scale, int(rng.integers(3, 7))
    )


def _shape_uneven(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    return _blob(rng, h, w, log_uniform(rng, 0.12, 0.35) * min(h, w) * scale, 3)


def _jagged_polygon(rng: Rng, centre: np.ndarray, radius: float) -> np.ndarray:
    n = int(rng.integers(7, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.55, 1.15, n)
    points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    return np.round(points).astype(np.int32)


def _border_point(rng: Rng, h: int, w: int) -> np.ndarray:
    side = int(rng.integers(4))
    along = rng.uniform(0.1, 0.9)
    return np.array([[along * w, 0], [along * w, h - 1], [0, along * h], [w - 1, along * h]][side])


def _shape_missing_piece(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    """A chipped edge (a bite out of the border) or a hole through the part."""
    radius = max(log_uniform(rng, 0.03, 0.18) * min(h, w) * scale, 3.0)
    on_edge = rng.random() < 0.6
    centre = _border_point(rng, h, w) if on_edge else _random_point(rng, h, w)
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [_jagged_polygon(rng, centre, radius)], 1, cv2.LINE_8)
    return canvas.astype(bool)


def _shape_inclusion(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    """A chain of small elongated specks, all along the rolling direction."""
    length = max(log_uniform(rng, 0.012, 0.05) * min(h, w) * scale, 2.0)
    angle = rng.uniform(0, 180)
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    centre = _random_point(rng, h, w)
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        axes = (length * rng.uniform(0.6, 1.2), length * rng.uniform(0.2, 0.5))
        _draw_ellipse(canvas, centre, axes, angle + rng.normal(0, 5))
        centre = centre + direction * length * rng.uniform(1.0, 3.0)
    return canvas.astype(bool)


def _shape_fray(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    """A frayed border: a ragged band along one edge with fibres reaching inwards."""
    turns = int(rng.integers(4))
    ch, cw = (h, w) if turns % 2 == 0 else (w, h)  # drawn against the top edge, then rotated
    span = max(log_uniform(rng, 0.1, 0.5) * cw * scale, 6.0)
    depth = max(rng.uniform(0.01, 0.03) * ch, 2.0)
    x0 = rng.uniform(0, cw - span)
    canvas = np.zeros((ch, cw), np.uint8)
    cv2.rectangle(canvas, (int(x0), 0), (int(x0 + span), int(depth)), 1, -1)
    for _ in range(int(rng.integers(5, 20))):
        start = np.array([rng.uniform(x0, x0 + span), depth * rng.uniform(0.3, 1.0)])
        angle = np.pi / 2 + rng.normal(0, 0.4)
        reach = depth * rng.uniform(1, 4)
        end = start + reach * np.array([np.cos(angle), np.sin(angle)])
        _draw_polyline(canvas, np.stack([start, end]), 1)
    return np.ascontiguousarray(np.rot90(canvas, turns)).astype(bool)


def _shape_bubble(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    radius = max(log_uniform(rng, 0.015, 0.07) * min(h, w) * scale, 2.5)
    canvas = np.zeros((h, w), np.uint8)
    _draw_ellipse(canvas, _random_point(rng, h, w), (radius, radius), 0.0)
    return canvas.astype(bool)


def _shape_dent(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    radius = max(log_uniform(rng, 0.04, 0.2) * min(h, w) * scale, 3.0)
    canvas = np.zeros((h, w), np.uint8)
    axes = (radius, radius * rng.uniform(0.4, 1.0))
    _draw_ellipse(canvas, _random_point(rng, h, w), axes, rng.uniform(0, 180))
    return canvas.astype(bool)


def _shape_line(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    """A long straight mark (roller or guide line), usually along an image axis."""
    length = log_uniform(rng, 0.4, 1.0) * max(h, w) * scale
    axis_aligned = rng.random() < 0.6
    theta = (
        rng.choice([0, np.pi / 2]) + rng.normal(0, 0.03) if axis_aligned else rng.uniform(0, np.pi)
    )
    half = 0.5 * length * np.array([np.cos(theta), np.sin(theta)])
    centre = _random_point(rng, h, w)
    canvas = np.zeros((h, w), np.uint8)
    _draw_polyline(canvas, np.stack([centre - half, centre + half]), int(rng.integers(2, 6)))
    return canvas.astype(bool)


# ----------------------------------------------------------------------------------------------
# appearance: paint a kept mask onto the float image, in place


@dataclass
class Look:
    """How a defect differs from its surface."""

    contrast: float  # signed grey-level change; < 0 darker
    tint: np.ndarray  # float32 (3,) per-channel factor of the change; ones on grey surfaces
    sigma: float  # edge blur in pixels


def _add(
    image: np.ndarray, mask: np.ndarray, delta: np.ndarray | float, look: Look, pad: int
) -> None:
    """image[roi] += soft(mask) * delta * tint, with delta a scalar or a float32 (roi) map."""
    rows, cols = _roi(mask, pad)
    alpha = _soft(mask[rows, cols], look.sigma) * delta
    image[rows, cols] += alpha[..., None] * look.tint


def _pad(look: Look) -> int:
    return int(3 * look.sigma) + 2


def _paint_flat(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    _add(image, mask, look.contrast, look, _pad(look))


def _paint_textured(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    """A stain or uneven patch: the change itself varies, and the texture inside is rougher."""
    pad = _pad(look)
    rows, cols = _roi(mask, pad)
    rh, rw = rows.stop - rows.start, cols.stop - cols.start
    delta = look.contrast * (0.6 + 0.8 * _value_noise(rng, rh, rw, 4))
    delta += rng.uniform(2, 10) * rng.standard_normal((rh, rw)).astype(np.float32)
    delta = cv2.GaussianBlur(delta, (0, 0), 0.8)
    _add(image, mask, delta, look, pad)


def _paint_depression(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    """A pit: strongest change in its centre, fading to its rim."""
    pad = _pad(look)
    rows, cols = _roi(mask, pad)
    depth = cv2.distanceTransform(mask[rows, cols].astype(np.uint8), cv2.DIST_L2, 3)
    depth = depth / max(float(depth.max()), 1e-6)
    _add(image, mask, look.contrast * (0.45 + 0.55 * depth), look, pad)


def _paint_shaded(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    """A dent under directional light: one side brighter, the other darker."""
    pad = _pad(look)
    rows, cols = _roi(mask, pad)
    ys, xs = np.mgrid[rows, cols].astype(np.float32)
    my, mx = np.nonzero(mask[rows, cols])
    cy, cx = my.mean() + rows.start, mx.mean() + cols.start
    radius = max(float(np.hypot(ys - cy, xs - cx)[mask[rows, cols]].max()), 1.0)
    light = rng.uniform(0, 2 * np.pi)
    shading = ((xs - cx) * np.cos(light) + (ys - cy) * np.sin(light)) / radius
    _add(image, mask, abs(look.contrast) * 1.3 * shading, look, pad)


def _paint_bubble(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    """Dark outline, slightly brighter body, and a specular highlight off-centre."""
    pad = _pad(look)
    rows, cols = _roi(mask, pad)
    local = mask[rows, cols].astype(np.uint8)
    inner = cv2.erode(local, np.ones((3, 3), np.uint8), iterations=max(1, local.shape[0] // 10))
    ring = (local > 0) & (inner == 0)
    strength = abs(look.contrast)
    delta = np.where(ring, -strength, 0.3 * strength).astype(np.float32)
    depth = cv2.distanceTransform(inner, cv2.DIST_L2, 3)
    highlight = depth > 0.6 * max(float(depth.max()), 1e-6)
    shift = max(local.shape[0] // 6, 1)
    delta += 0.8 * strength * np.roll(highlight, (-shift, -shift), axis=(0, 1)) * (local > 0)
    _add(image, mask, delta, look, pad)


def _paint_missing(rng: Rng, image: np.ndarray, mask: np.ndarray, look: Look) -> None:
    """Material gone: what shows through is the dark fixture or the bright backlight."""
    rows, cols = _roi(mask, _pad(look))
    alpha = _soft(mask[rows, cols], look.sigma)[..., None]
    fill = rng.uniform(0, 40) if rng.random() < 0.7 else rng.uniform(200, 255)
    image[rows, cols] = image[rows, cols] * (1 - alpha) + alpha * fill


@dataclass(frozen=True)
class DefectKind:
    """How one synthetic class is drawn and painted."""

    shape: Callable[[np.random.Generator, int, int, float], np.ndarray]
    paint: Callable[[np.random.Generator, np.ndarray, np.ndarray, Look], None]
    dark_share: float  # probability that the defect is darker than its surface
    sigma: tuple[float, float]  # range of edge blur in pixels


DEFECT_KINDS: dict[str, DefectKind] = {
    "scratch": DefectKind(_shape_scratch, _paint_flat, 0.5, (0.3, 1.0)),
    "pit": DefectKind(_shape_pit, _paint_depression, 0.85, (0.5, 1.2)),
    "spot": DefectKind(_shape_spot, _paint_flat, 0.6, (0.8, 2.5)),
    "crack": DefectKind(_shape_crack, _paint_flat, 0.9, (0.3, 0.8)),
    "stain": DefectKind(_shape_stain, _paint_textured, 0.7, (2.0, 5.0)),
    "missing_piece": DefectKind(_shape_missing_piece, _paint_missing, 1.0, (0.3, 0.9)),
    "inclusion": DefectKind(_shape_inclusion, _paint_flat, 0.8, (0.4, 1.2)),
    "fray": DefectKind(_shape_fray, _paint_flat, 0.6, (0.3, 0.9)),
    "bubble": DefectKind(_shape_bubble, _paint_bubble, 0.5, (0.4, 1.0)),
    "dent": DefectKind(_shape_dent, _paint_shaded, 0.5, (1.5, 4.0)),
    "line": DefectKind(_shape_line, _paint_flat, 0.5, (0.4, 1.5)),
    "uneven": DefectKind(_shape_uneven, _paint_textured, 0.5, (3.0, 6.0)),
}


def _sample_look(rng: Rng, kind: DefectKind, gray: bool) -> Look:
    subtle = rng.random() < SUBTLE_SHARE
    magnitude = rng.uniform(8, 18) if subtle else rng.uniform(20, 75)
    sign = -1.0 if rng.random() < kind.dark_share else 1.0
    tint = np.ones(3, np.float32) if gray else rng.uniform(0.5, 1.5, 3).astype(np.float32)
    return Look(sign * magnitude, tint, float(rng.uniform(*kind.sigma)))


# ----------------------------------------------------------------------------------------------
# composing an image


def _place(rng: Rng, class_name: str, occupied: np.ndarray) -> tuple[np.ndarray, list[Instance]]:
    """Draw a shape of `class_name` that survives the InsA rule and keeps clear of `occupied`.

    Returns the kept mask (the union of its surviving components) and its instances.
    """
    h, w = occupied.shape
    kind = DEFECT_KINDS[class_name]
    kernel = np.ones((2 * SEPARATION_PX + 1, 2 * SEPARATION_PX + 1), np.uint8)
    for attempt in range(MAX_PLACEMENT_TRIES):
        shape = kind.shape(rng, h, w, 0.93**attempt)
        instances = instances_from_mask(shape, class_name)
        if not instances:
            continue
        kept = np.logical_or.reduce([inst.mask for inst in instances])
        if not (cv2.dilate(kept.astype(np.uint8), kernel).astype(bool) & occupied).any():
            return kept, instances
    raise RuntimeError(f"could not place a {class_name!r} defect in a {h}x{w} image")


def _defect_plan(rng: Rng, classes: Sequence[str], n_defects: int | None) -> list[str]:
    """One class per defect to draw: every class at least once, shuffled."""
    unique = sorted(set(classes))
    if n_defects is None:
        n_defects = len(unique) + int(rng.integers(0, 3)) if unique else 0
    if n_defects == 0:
        return []
    if n_defects < len(unique):
        raise ValueError(f"{n_defects} defects cannot show all of {unique}")
    extra = [unique[i] for i in rng.integers(len(unique), size=n_defects - len(unique))]
    plan = unique + extra
    rng.shuffle(plan)
    return plan


def render_defect_image(
    rng: Rng,
    size: tuple[int, int] = (320, 320),
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    n_defects: int | None = None,
    surface: str | None = None,
) -> tuple[np.ndarray, list[Instance]]:
    """One synthetic image, uint8 (H, W, 3) RGB, and its instances.

    Every class in `classes` appears at least once and no other does; `n_defects` counts drawn
    defects (one drawn defect may be several instances, e.g. a chain of inclusions), None picks
    between len(classes) and len(classes) + 2, and 0 gives a defect-free image.
    """
    unknown = set(classes) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"unknown synthetic classes {sorted(unknown)}; known: {SYNTHETIC_CLASSES}")
    image, gray = render_surface(rng, size, surface)
    occupied = np.zeros(size, bool)
    instances: list[Instance] = []
    for class_name in _defect_plan(rng, classes, n_defects):
        kept, new = _place(rng, class_name, occupied)
        kind = DEFECT_KINDS[class_name]
        kind.paint(rng, image, kept, _sample_look(rng, kind, gray))
        occupied |= kept
        instances.extend(new)
    return _finish(rng, image), instances


def _finish(rng: Rng, image: np.ndarray) -> np.ndarray:
    """Camera effects (optics blur, sensor noise) and quantisation to uint8."""
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8))
    noise = rng.standard_normal(image.shape[:2], dtype=np.float32) * rng.uniform(0.5, 4)
    image = image + noise[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# dataset view


@dataclass
class SyntheticDataset:
    """`DefectDataset` of `n_images` lazily rendered images; `load` is deterministic per record.

    Records (the class set of each image) are planned up front from `seed`; pixels are rendered on
    demand from a generator seeded by (seed, index), so holding a million records costs only them.
    """

    n_images: int
    seed: int
    size: tuple[int, int] = (320, 320)
    classes: Sequence[str] = SYNTHETIC_CLASSES
    defect_free_share: float = 0.1
    max_classes_per_image: int = 2
    name: str = "synthetic"
    records: list[Record] = field(init=False)
    class_names: list[str] = field(init=False)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.classes = tuple(sorted(set(self.classes)))
        unknown = set(self.classes) - set(DEFECT_KINDS)
        if unknown or not self.classes:
            raise ValueError(f"classes must be a non-empty subset of {SYNTHETIC_CLASSES}")
        self.records = self._plan()
        self._index = {record.image_id: i for i, record in enumerate(self.records)}
        self.class_names = sorted({name for record in self.records for name in record.classes})

    def _plan(self) -> list[Record]:
        """Class sets for all images at once (vectorised: thousands of records in milliseconds)."""
        rng = np.random.default_rng(self.seed)
        n, n_classes = self.n_images, len(self.classes)
        free = rng.random(n) < self.defect_free_share
        counts = rng.integers(1, min(self.max_classes_per_image, n_classes) + 1, size=n)
        order = np.argsort(rng.random((n, n_classes)), axis=1)
        h, w = self.size
        records = []
        for i in range(n):
            chosen = (
                () if free[i] else tuple(sorted(self.classes[j] for j in order[i, : counts[i]]))
            )
            records.append(Record(f"{i:06d}", chosen, w, h))
        return records

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        index = self._index[record.image_id]
        rng = np.random.default_rng([self.seed, index])
        n_defects = 0 if not record.classes else None
        return render_defect_image(rng, self.size, record.classes, n_defects)


def write_folder_dataset(dataset: DefectDataset, out_dir: str | Path, n: int) -> list[Path]:
    """Write the first `n` single-class or defect-free records as root/CLASS/NAME.jpg + NAME.png.

    Multi-class images are skipped: one binary mask per image cannot say which defect is which.
    Returns the written image paths.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for record in dataset.records:
        if len(written) >= n:
            break
        if len(record.classes) > 1:
            continue
        folder = out_dir / (record.classes[0] if record.classes else "Free")
        folder.mkdir(parents=True, exist_ok=True)
        image, instances = dataset.load(record)
        mask = np.zeros(image.shape[:2], np.uint8)
        for instance in instances:
            mask[instance.mask] = 255
        stem = record.image_id.replace("/", "_")
        cv2.imwrite(
            str(folder / f"{stem}.jpg"),
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        cv2.imwrite(str(folder / f"{stem}.png"), mask)
        written.append(folder / f"{stem}.jpg")
    return written
