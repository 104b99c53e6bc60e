"""Figures of the anomaly mode: added latency per inspection, memory per namespace, build times.

    python scripts/bench_anomaly.py --out runs/bench_anomaly.json
    python scripts/bench_anomaly.py --references 100 1000 --iters 30 --threads 1 --out B.json

Starts a local redis-server (persistence on, in a temporary folder), registers synthetic
defect-free parts (crops of one machined surface with fresh sensor noise, 320 x 320) as the
references of one namespace per count in --references, exactly as the service stores them, and
measures, per count:
  * registration: feature extraction + k-center prefix + store write, per reference;
  * the service's memory of the namespace (service/anomaly.py AnomalyMemories): rows, bytes held,
    cold build time (read from the store + leave-one-out calibration), and the incremental
    refresh after one more reference;
  * the store's bytes for the namespace's references (Redis MEMORY USAGE over their keys);
  * latency of one inspection on the model thread's path (Inspector.run_batch: detector on the
    served backend with 2 prompted classes, then the anomaly signal), p50/p90 over --iters
    interleaved runs, without references (anomaly off) and with them; the difference is the
    added latency. A references-only namespace (no prompted class, detector skipped) is timed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.anomaly.features import FeatureConfig, PatchFeatureExtractor
from models.data.synthetic import render_surface
from models.evaluation.report_json import report_json
from models.predictor import Predictor
from models.runtime.bench import machine_info, peak_rss_mib
from models.runtime.select import RuntimeSettings
from prompt_store import LocalRedis, RedisPromptStore
from prompt_store.references import NewReference
from service.anomaly import AnomalyMemories, AnomalyParams, AnomalyScorer
from service.inference import InspectJob, Inspector
from service.prototypes import StoreHealth
from service.schemas import MaskFormat
from service.settings import ServiceSettings

SIZE = 320


class Parts:
    """One product: crops of a large machined surface, new noise per part; defects drawn."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        surface, _ = render_surface(rng, (3 * SIZE, 3 * SIZE), "brushed", gray=True)
        self.surface = surface

    def good(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + i)
        y, x = rng.integers(0, 2 * SIZE, size=2)
        crop = self.surface[y : y + SIZE, x : x + SIZE]
        noise = rng.normal(0, 2.0, crop.shape[:2]).astype(np.float32)[..., None]
        return np.clip(crop + noise, 0, 255).astype(np.uint8)

    def defective(self, i: int) -> np.ndarray:
        image = self.good(i).copy()
        cv2.line(image, (100, 120), (170, 150), (30, 30, 30), 3)
        cv2.circle(image, (220, 90), 9, (35, 35, 35), -1)
        return image


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _store_bytes(store: RedisPromptStore, ns: str) -> int:
    total = 0
    for key in store.client.scan_iter(match=f"inspect:ns:{{{ns}}}:*", count=1000):
        text = key.decode()
        if any(part in text for part in (":refs", ":ref:", ":reffeat:", ":anomaly")):
            total += int(store.client.memory_usage(key, samples=0) or 0)
    return total


def _p(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_anomaly.json"))
    p.add_argument("--references", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads")
    p.add_argument("--backend", default="auto")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    settings = ServiceSettings(threads=args.threads)
    predictor = Predictor.load(None, RuntimeSettings(backend=args.backend, threads=args.threads))
    features = FeatureConfig(settings.anomaly_backbone, settings.anomaly_image_size)
    extractor = PatchFeatureExtractor.build(features)
    scorer = AnomalyScorer(extractor)
    inspector = Inspector(predictor, scorer)
    params = AnomalyParams.from_settings(settings)
    parts = Parts()
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((2, predictor.embed_dim)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    report: dict = {
        "machine": machine_info(),
        "threads": args.threads,
        "backend": predictor.backend_name,
        "settings": {
            "anomaly_backbone": features.source,
            "anomaly_image_size": features.image_size,
            "patches_per_reference": settings.anomaly_patches_per_reference,
            "max_patches": settings.anomaly_max_patches,
            "calibration_references": settings.anomaly_calibration_references,
        },
        "namespaces": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalRedis(data_dir=Path(tmp) / "redis").start()
        store = RedisPromptStore.from_url(server.url)
        try:
            for n in args.references:
                ns = f"bench-{n}"
                t0 = time.perf_counter()
                for start in range(0, n, 32):
                    images = [parts.good(i) for i in range(start, min(n, start + 32))]
                    patches = extractor.reference_patches(
                        images, settings.anomaly_patches_per_reference
                    )
                    items = [
                        NewReference(_png(im), SIZE, SIZE, f, "bench")
                        for im, f in zip(images, patches, strict=True)
                    ]
                    store.references.add_references(
                        ns,
                        items,
                        fingerprint=predictor.fingerprint,
                        embed_dim=predictor.embed_dim,
                        feature_fingerprint=extractor.fingerprint,
                        max_references=settings.anomaly_max_references,
                    )
                register_s = (time.perf_counter() - t0) / n
                health = StoreHealth()
                memories = AnomalyMemories(
                    store.references, extractor.fingerprint, extractor.dim, health, params, 4
                )
                t0 = time.perf_counter()
                memory = memories.get(ns).memory
                cold_s = time.perf_counter() - t0
                assert memory is not None
                extra = parts.good(n + 10_000)
                (more,) = extractor.reference_patches(
                    [extra], settings.anomaly_patches_per_reference
                )
                version = store.references.add_references(
                    ns,
                    [NewReference(_png(extra), SIZE, SIZE, more, "bench")],
                    fingerprint=predictor.fingerprint,
                    embed_dim=predictor.embed_dim,
                    feature_fingerprint=extractor.fingerprint,
                    max_references=settings.anomaly_max_references,
                )[0].version
                memories.invalidate(ns, version)
                t0 = time.perf_counter()
                memory = memories.get(ns).memory
                refresh_s = time.perf_counter() - t0
                assert memory is not None

                query = parts.defective(n + 20_000)
                good_query = parts.good(n + 30_000)

                def job(anomaly, prototypes, image=query):
                    return InspectJob(
                        image=image,
                        prototypes=prototypes,
                        class_names=tuple(f"c{i}" for i in range(len(prototypes))),
                        thresholds=np.full(len(prototypes), 0.5, np.float32),
                        max_detections=100,
                        mask_format=MaskFormat.rle,
                        heatmap=False,
                        anomaly=anomaly,
                    )

                variants = {
                    "detector_only": job(None, protos),
                    "detector_and_anomaly": job(memory, protos),
                    "anomaly_only": job(memory, protos[:0]),
                }
                for j in variants.values():  # warm-up
                    inspector.run_batch([j])
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(args.iters):
                    for name, j in variants.items():
                        t0 = time.perf_counter()
                        inspector.run_batch([j])
                        times[name].append((time.perf_counter() - t0) * 1000)
                bad = inspector.run_batch([variants["detector_and_anomaly"]])[0].anomaly
                good = inspector.run_batch([job(memory, protos, good_query)])[0].anomaly
                p50 = {k: statistics.median(v) for k, v in times.items()}
                report["namespaces"][ns] = {
                    "references": memory.references,
                    "memory_rows": len(memory.bank),
                    "service_memory_bytes": memory.nbytes,
                    "service_memory_mib": round(memory.nbytes / 2**20, 2),
                    "store_bytes": _store_bytes(store, ns),
                    "store_mib": round(_store_bytes(store, ns) / 2**20, 2),
                    "register_s_per_reference": round(register_s, 4),
                    "memory_cold_build_s": round(cold_s, 3),
                    "memory_refresh_after_one_more_s": round(refresh_s, 3),
                    "threshold": memory.threshold,
                    "defective_query": {"raw": bad.raw_score, "unknown": len(bad.unknown)},
                    "good_query": {"raw": good.raw_score, "unknown": len(good.unknown)},
                    "latency_ms": {
                        k: {"p50": round(v, 2), "p90": round(_p(times[k], 0.9), 2)}
                        for k, v in p50.items()
                    },
                    "added_latency_ms_p50": round(
                        p50["detector_and_anomaly"] - p50["detector_only"], 2
                    ),
                }
                print(json.dumps({ns: report["namespaces"][ns]}, indent=2), flush=True)
                store.delete_namespace(ns)
        finally:
            store.close()
            server.stop()
    report["peak_rss_mib"] = peak_rss_mib()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report_json(report))


if __name__ == "__main__":
    main()
