"""Regenerate the sample images of the README's curl walkthrough (deterministic).

Writes into service/assets/samples/:
    scratch_prompt_1.jpg, scratch_prompt_1_mask.png   a scratch exemplar and its mask
    scratch_prompt_2.jpg, scratch_prompt_2_mask.png   a second one (register both)
    query_scratch.jpg                                 an image with a scratch to inspect
    query_ok.jpg                                      a defect-free image (verdict: pass)

Run:
    python scripts/make_samples.py
    python scripts/make_samples.py --out /tmp/samples --size 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from models.data.synthetic import render_defect_image

OUT = Path(__file__).resolve().parent.parent / "service" / "assets" / "samples"
SEED = 11  # a draw whose query scratch the embedded model finds (score 0.35, IoU 0.92)
JPEG_QUALITY = 88


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok = cv2.imwrite(
        str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise OSError(f"cannot write {path}")


def _write_mask(path: Path, mask: np.ndarray) -> None:
    if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")


def make_samples(out: Path, size: int) -> list[Path]:
    """Render the samples into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    written = []
    for name, classes, n in (
        ("scratch_prompt_1", ("scratch",), 1),
        ("scratch_prompt_2", ("scratch",), 1),
        ("query_scratch", ("scratch",), 1),
        ("query_ok", (), 0),
    ):
        image, instances = render_defect_image(rng, (size, size), classes, n, "plain")
        _write_jpeg(out / f"{name}.jpg", image)
        written.append(out / f"{name}.jpg")
        if name.startswith("scratch_prompt"):
            mask = np.zeros((size, size), dtype=bool)
            for inst in instances:
                mask |= inst.mask
            _write_mask(out / f"{name}_mask.png", mask)
            written.append(out / f"{name}_mask.png")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    files = make_samples(args.out, args.size)
    total = sum(f.stat().st_size for f in files)
    for f in files:
        print(f"{f} {f.stat().st_size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
