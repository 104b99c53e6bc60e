"""Benchmark the synthetic defect generator: milliseconds per rendered image (target: 20 ms at
320 x 320 with two defects, so rendering never holds back a CPU training step).

Run:
    python scripts/bench_synthetic.py
    python scripts/bench_synthetic.py --size 640 --images 50
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from models.data.synthetic import SYNTHETIC_CLASSES, render_defect_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=320, help="square image side in pixels")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--defects", type=int, default=2, help="defect classes per image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    render_defect_image(rng, (args.size, args.size))  # warm-up
    times = []
    for _ in range(args.images):
        classes = rng.choice(SYNTHETIC_CLASSES, args.defects, replace=False)
        start = time.perf_counter()
        render_defect_image(rng, (args.size, args.size), classes)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    print(
        json.dumps(
            {
                "size": args.size,
                "images": args.images,
                "ms_median": round(float(np.median(ms)), 2),
                "ms_p90": round(float(np.quantile(ms, 0.9)), 2),
                "images_per_s": round(float(1000 / np.mean(ms)), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
