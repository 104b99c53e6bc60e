"""Benchmark the prompt store alone: registration throughput and prototype fetch latency.

Starts a local redis-server with persistence on (or uses --redis-url), then measures
  * registration throughput (exemplars/s): one add_exemplar per call from one thread, the same
    from --threads writers, and add_exemplars in batches of --batch-size;
  * fetch_prototypes latency (p50/p99) for a --classes x --per-class namespace of --dim vectors.

Run:
    python scripts/bench_store.py --out runs/bench_store.json
    python scripts/bench_store.py --appendfsync everysec
    python scripts/bench_store.py --redis-url redis://127.0.0.1:6379/0   # an existing server
Namespaces it creates are named bench-<random> and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from prompt_store import LocalRedis, NewExemplar, RedisPromptStore, Region

FINGERPRINT = "bench-" + "0" * 58


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis-url", help="use this server instead of starting one")
    p.add_argument(
        "--appendfsync",
        choices=["always", "everysec"],
        default="always",
        help="fsync policy of the server we start (default: always, as shipped)",
    )
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=5)
    p.add_argument("--single", type=int, default=1000, help="exemplars added one per call")
    p.add_argument("--threads", type=int, default=8, help="concurrent writers for the MT test")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--image-bytes", type=int, default=16 * 1024, help="size of each source image")
    p.add_argument("--fetches", type=int, default=2000)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args()


class Exemplars:
    """Deterministic distinct exemplars: unique image bytes and region per index."""

    def __init__(self, dim: int, image_bytes: int, seed: int = 0) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.blob = self.rng.bytes(image_bytes)

    def make(self, i: int, class_name: str) -> NewExemplar:
        image = i.to_bytes(8, "little") + self.blob[8:]
        emb = self.rng.normal(size=self.dim).astype(np.float32)
        region = Region(box=(float(i % 500), 1.0, float(i % 500) + 32.0, 40.0))
        return NewExemplar(class_name, emb, image, region, "bench")


def bench_single(store: RedisPromptStore, gen: Exemplars, n: int, classes: int) -> float:
    """Exemplars/s with one add_exemplar call each, one thread."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    items = [gen.make(i, f"class-{i % classes}") for i in range(n)]
    start = time.perf_counter()
    for it in items:
        store.add_exemplar(
            ns,
            it.class_name,
            it.embedding,
            it.image_bytes,
            it.region,
            it.author,
            fingerprint=FINGERPRINT,
        )
    rate = n / (time.perf_counter() - start)
    store.delete_namespace(ns)
    return rate


def bench_threads(
    store: RedisPromptStore, gen: Exemplars, n: int, classes: int, threads: int
) -> float:
    """Exemplars/s with `threads` writers adding one exemplar per call into shared classes."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    items = [gen.make(i, f"class-{i % classes}") for i in range(n)]
    chunks = [items[t::threads] for t in range(threads)]

    def run(chunk: list[NewExemplar]) -> None:
        for it in chunk:
            store.add_exemplars(ns, [it], fingerprint=FINGERPRINT)

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = n / (time.perf_counter() - start)
    assert store.namespace_info(ns).exemplar_count == n, "lost writes"
    store.delete_namespace(ns)
    return rate


def bench_batched(
    store: RedisPromptStore, gen: Exemplars, batches: int, size: int, classes: int
) -> float:
    """Exemplars/s with add_exemplars(batch) (one atomic script per batch)."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    all_batches = [
        [gen.make(b * size + i, f"class-{(b * size + i) % classes}") for i in range(size)]
        for b in range(batches)
    ]
    start = time.perf_counter()
    for batch in all_batches:
        store.add_exemplars(ns, batch, fingerprint=FINGERPRINT)
    rate = batches * size / (time.perf_counter() - start)
    store.delete_namespace(ns)
    return rate


def bench_fetch(
    store: RedisPromptStore, gen: Exemplars, classes: int, per_class: int, fetches: int
) -> dict[str, float]:
    """Latency of fetch_prototypes for a classes x per_class namespace, in milliseconds."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    items = [gen.make(i, f"class-{i % classes:03d}") for i in range(classes * per_class)]
    store.add_exemplars(ns, items, fingerprint=FINGERPRINT)
    snap = store.fetch_prototypes(ns, FINGERPRINT)
    assert snap.matrix.shape == (classes, gen.dim)
    for _ in range(50):  # warm the pool and the caches
        store.fetch_prototypes(ns, FINGERPRINT)
    times = []
    for _ in range(fetches):
        start = time.perf_counter()
        store.fetch_prototypes(ns, FINGERPRINT)
        times.append((time.perf_counter() - start) * 1e3)
    store.delete_namespace(ns)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
        "mean_ms": statistics.fmean(times),
        "max_ms": times[-1],
    }


def main() -> None:
    args = parse_args()
    with ExitStack() as stack:
        if args.redis_url:
            url, fsync = args.redis_url, "unknown (external server)"
        else:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
            server = stack.enter_context(LocalRedis(data_dir=data, appendfsync=args.appendfsync))
            url, fsync = server.url, args.appendfsync
        store = RedisPromptStore.from_url(url)
        stack.callback(store.close)
        gen = Exemplars(args.dim, args.image_bytes)
        figures: dict[str, Any] = {
            "redis_version": store.client.info("server")["redis_version"],
            "appendfsync": fsync,
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "redis_url")},
            "single_add_per_s": bench_single(store, gen, args.single, args.classes),
            "threaded_add_per_s": bench_threads(
                store, gen, args.single, args.classes, args.threads
            ),
            "batched_add_per_s": bench_batched(
                store, gen, args.batches, args.batch_size, args.classes
            ),
            "fetch_prototypes": bench_fetch(store, gen, args.classes, args.per_class, args.fetches),
        }
    print(
        f"redis {figures['redis_version']}, appendfsync {fsync}, d={args.dim}, "
        f"{args.image_bytes} B images"
    )
    print(f"registration, 1 per call, 1 thread:     {figures['single_add_per_s']:9.0f} exemplars/s")
    print(
        f"registration, 1 per call, {args.threads} threads:   "
        f"{figures['threaded_add_per_s']:9.0f} exemplars/s"
    )
    print(
        f"registration, batches of {args.batch_size}:         "
        f"{figures['batched_add_per_s']:9.0f} exemplars/s"
    )
    f = figures["fetch_prototypes"]
    print(
        f"fetch_prototypes {args.classes}x{args.per_class}: p50 {f['p50_ms']:.3f} ms, "
        f"p99 {f['p99_ms']:.3f} ms, mean {f['mean_ms']:.3f} ms"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
