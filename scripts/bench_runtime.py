"""Benchmark every inference backend this machine has on one model, in one run.

    python scripts/bench_runtime.py --out runs/bench_runtime.json
    python scripts/bench_runtime.py --model runs/default/model.pt --out BENCH.json --iters 50
    python scripts/bench_runtime.py --backends torch onnxruntime-cpu --iters 5 --out /tmp/b.json
    python scripts/bench_runtime.py --images ../shared/datasets/magnetic_tile/Free --out B.json

Writes {"backends": {NAME: {"batch1": {"p50_ms", "p99_ms", "images_per_s", ...}, "batch8": ...}},
"skipped": {NAME: reason}, "ratios", "machine", "model", "peak_rss_mib"} with NAME among torch,
onnxruntime-cpu, onnxruntime-cuda, tensorrt (those this machine can run). Latencies are of the
model call; end-to-end figures (preprocess + model + postprocess with masks) sit beside them.
`ratios.onnxruntime-cpu_vs_torch` is eager PyTorch's p50 over ONNX Runtime CPU's (target >= 1.5).
Without --model it uses models/weights/unispector_small.pt or runs/default/model.pt, whichever
exists, else a randomly initialised `small` model (the report says which). The images are 8
synthetic ones unless --images names a folder of real ones (masks beside them left out); the
prompts are the centre regions of those images.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.build import build_model
from models.checkpoint import save_model
from models.config import get_preset
from models.decode import image_files, read_image
from models.export import check_images
from models.predictor import Predictor, PromptRegion
from models.runtime.base import BACKEND_NAMES, BackendUnavailable
from models.runtime.bench import bench_batch, current_rss_mib, machine_info, peak_rss_mib
from models.runtime.select import DEFAULT_MODEL_PATH, RuntimeSettings, select_backend

ROOT = Path(__file__).resolve().parents[1]
MODEL_CANDIDATES = (DEFAULT_MODEL_PATH, ROOT / "runs" / "default" / "model.pt")
ORDER = ("torch", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")  # reference first


def resolve_model(arg: Path | None, scratch: Path) -> tuple[Path, dict]:
    if arg is not None:
        return arg, {"path": str(arg), "random_init": False}
    for path in MODEL_CANDIDATES:
        if path.is_file():
            return path, {"path": str(path), "random_init": False}
    torch.manual_seed(0)
    cfg = get_preset("small", pretrained=False)
    path = scratch / "random_small.pt"
    save_model(build_model(cfg).eval(), cfg, path, {"note": "randomly initialised for benchmarks"})
    return path, {"path": None, "random_init": True, "preset": "small"}


def load_images(folder: Path | None, n: int = 8) -> list[np.ndarray]:
    """The first `n` images under `folder`, or `n` synthetic ones: how many detections each
    image yields moves the postprocess time, so real images give the figures a line will see."""
    if folder is None:
        return check_images(n)
    files = image_files(folder)
    if not files:
        sys.exit(f"no images under {folder}: give a folder of JPEG, PNG, BMP or TIFF files")
    return [read_image(f) for f in files[:n]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_runtime.json")
    p.add_argument("--backends", nargs="+", choices=BACKEND_NAMES, default=list(ORDER))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=30, help="timed calls per batch size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--classes", type=int, default=5, help="prototypes C per call")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: library default)")
    p.add_argument("--onnx-cache", type=Path, default=None, help="where to export missing graphs")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of real images to time on (its first 8; default: synthetic ones)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory() as scratch:
        model_path, model_report = resolve_model(args.model, Path(scratch))
        cache = args.onnx_cache or Path(scratch) / "onnx"
        images = load_images(args.images)
        report: dict = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "model": model_report,
            "settings": {
                "iters": args.iters,
                "warmup": args.warmup,
                "classes": args.classes,
                "threads": args.threads,
                "images": str(args.images or "synthetic"),
                "image_sizes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images}),
            },
            "backends": {},
            "skipped": {},
            "memory_mib": {},
        }
        prototypes = None
        for name in [n for n in ORDER if n in args.backends]:
            settings = RuntimeSettings(backend=name, onnx_cache_dir=cache, threads=args.threads)
            try:
                choice = select_backend(model_path, settings)
            except BackendUnavailable as exc:
                report["skipped"][name] = str(exc)
                continue
            predictor = Predictor(choice.backend, choice)
            if prototypes is None:  # real prototypes: centre regions, first backend's encoder
                report["model"].update(
                    fingerprint=predictor.fingerprint,
                    image_size=predictor.size,
                    preset=predictor.info.preset,
                )
                rows = []
                for i in range(args.classes):
                    im = images[i % len(images)]
                    h, w = im.shape[:2]
                    box = np.array([0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h], np.float32)
                    rows.append(predictor.encode_prompts(im, [PromptRegion(box)])[0])
                prototypes = np.stack(rows)
            result = {"device": choice.backend.device}
            for b in args.batches:
                result[f"batch{b}"] = bench_batch(
                    predictor, images, prototypes, b, args.iters, args.warmup
                )
                print(f"{name} batch{b}: {json.dumps(result[f'batch{b}'])}", file=sys.stderr)
            report["backends"][name] = result
            report["memory_mib"][name] = {
                "rss_after": current_rss_mib(),
                "peak_so_far": peak_rss_mib(),
            }
            del predictor, choice
            gc.collect()
        report["peak_rss_mib"] = peak_rss_mib()
        if torch.cuda.is_available():
            report["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        base = report["backends"].get("torch")
        report["ratios"] = {}
        for name, res in report["backends"].items():
            if base is None or name == "torch":
                continue
            report["ratios"][f"{name}_vs_torch"] = {
                f"batch{b}": round(base[f"batch{b}"]["p50_ms"] / res[f"batch{b}"]["p50_ms"], 2)
                for b in args.batches
            }
        if "onnxruntime-cpu_vs_torch" in report["ratios"]:
            r = report["ratios"]["onnxruntime-cpu_vs_torch"]
            report["ratios"]["onnxruntime-cpu_target_1.5x_met"] = all(v >= 1.5 for v in r.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {k: report[k] for k in ("backends", "skipped", "ratios", "peak_rss_mib")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
