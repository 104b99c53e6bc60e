"""Latency and throughput of a predictor, and a description of the machine (scripts/bench_runtime).

Per batch size, each iteration is one `Predictor.detect_timed` call on real-looking images; the
headline `p50_ms` / `p99_ms` / `images_per_s` are those of the model call alone (what differs
between backends), and the end-to-end figures (decode excluded: preprocess + model + postprocess
with masks) come beside them.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np

from models.predictor import Predictor


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 3)


def bench_batch(
    predictor: Predictor,
    images: list[np.ndarray],
    prototypes: np.ndarray,
    batch: int,
    iters: int,
    warmup: int,
) -> dict:
    """Timings of `iters` detect calls on `batch` images (cycled from `images`)."""
    chosen = [images[i % len(images)] for i in range(batch)]
    for _ in range(warmup):
        predictor.detect_timed(chosen, prototypes)
    predict, total, pre, post = [], [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        _, times = predictor.detect_timed(chosen, prototypes)
        total.append(time.perf_counter() - t0)
        predict.append(times.predict)
        pre.append(times.preprocess)
        post.append(times.postprocess)
    return {
        "p50_ms": _ms(predict, 50),
        "p99_ms": _ms(predict, 99),
        "images_per_s": round(batch * len(predict) / sum(predict), 2),
        "end_to_end_p50_ms": _ms(total, 50),
        "end_to_end_p99_ms": _ms(total, 99),
        "end_to_end_images_per_s": round(batch * len(total) / sum(total), 2),
        "preprocess_p50_ms": _ms(pre, 50),
        "postprocess_p50_ms": _ms(post, 50),
        "iterations": iters,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024), 1)


def current_rss_mib() -> float | None:
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except OSError:
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def machine_info() -> dict:
    """CPU, cores, memory, GPU and library versions of this machine."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info
