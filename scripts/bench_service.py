"""Benchmark the inspection service over real HTTP against the bare model call.

Measures, on this machine:
  1. the bare runtime: `detect([image], prototypes)` in-process (p50/p99 latency, images/s);
  2. the service (`python -m service` on a free port, a local redis-server, the sample prompts
     registered) at concurrency 1, 8 and 32: client-side latency p50/p99, throughput, and the
     share of each request's time spent outside the model call (HTTP, decode, queueing, mask
     encoding, JSON); batching on, with the batch size the service calibrates at start-up;
  3. the same with micro-batching off (INSPECT_MAX_BATCH_SIZE=1), for the batching comparison;
  4. the same with batches forced up to --forced-batch (no calibration), to show what batching
     itself does on this machine.
The steps run one after another, never overlapping (2 cores); the load generator shares the
machine with the server, as a camera-side proxy on the same host would.

Targets (the service issue): p50 at concurrency 1 within 25% of the bare runtime's p50, and
throughput with batching at least as high as without.

Run:
    python scripts/bench_service.py --out runs/bench_service.json
    python scripts/bench_service.py --model runs/default/model.pt --requests 200
    python scripts/bench_service.py --concurrency 1,8 --requests 40    # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "service" / "assets" / "samples"
NAMESPACE = "bench"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="model file (default: the embedded default)")
    p.add_argument("--image", type=Path, default=SAMPLES / "query_scratch.jpg")
    p.add_argument("--requests", type=int, default=120, help="measured requests per level")
    p.add_argument("--warmup", type=int, default=8, help="unmeasured requests per level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    p.add_argument("--max-batch", type=int, default=8, help="service INSPECT_MAX_BATCH_SIZE")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="INSPECT_MAX_BATCH_WAIT_MS")
    p.add_argument("--threads", type=int, default=0, help="model threads (0: library default)")
    p.add_argument("--mask-format", default="rle", choices=["rle", "polygon", "none"])
    p.add_argument("--no-unbatched", action="store_true", help="skip the max-batch=1 run")
    p.add_argument(
        "--forced-batch",
        type=int,
        default=2,
        help="also run with this max batch and no calibration (0: skip)",
    )
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


# ---- bare runtime -------------------------------------------------------------------------------


def bench_bare(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """The model call alone on the decoded image, with prototypes of the sample prompts."""
    from service.images import decode_image, decode_mask, regions_from_mask
    from service.inference import Inspector, build_predictor
    from service.settings import ServiceSettings

    settings = ServiceSettings(model_path=args.model, threads=args.threads)
    predictor, backend = build_predictor(settings)
    embeddings = []
    for k in (1, 2):
        data = (SAMPLES / f"scratch_prompt_{k}.jpg").read_bytes()
        image = decode_image(data, 1 << 26, 1 << 28)
        mask = decode_mask(
            (SAMPLES / f"scratch_prompt_{k}_mask.png").read_bytes(),
            image.width,
            image.height,
            1 << 26,
        )
        embeddings.append(Inspector(predictor).encode(image.rgb, regions_from_mask(mask, 4)))
    emb = np.concatenate(embeddings)
    proto = emb.mean(axis=0, keepdims=True)
    proto /= np.linalg.norm(proto)
    query = decode_image(args.image.read_bytes(), 1 << 26, 1 << 28).rgb
    with_masks = args.mask_format != "none"
    for _ in range(args.warmup):
        predictor.detect([query], proto, with_masks=with_masks)
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        predictor.detect([query], proto, with_masks=with_masks)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    batch = {}
    for size in (8,):
        images = [query] * size
        t0 = time.perf_counter()
        rounds = max(2, n // (4 * size))
        for _ in range(rounds):
            predictor.detect(images, proto, with_masks=with_masks)
        batch[size] = rounds * size / (time.perf_counter() - t0)
    return {
        "backend": backend.backend,
        "fingerprint": predictor.fingerprint,
        "image_size": backend.image_size,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "images_per_s": n / wall,
        "batched_images_per_s": batch,
    }


# ---- the service --------------------------------------------------------------------------------


class Server:
    """redis-server + `python -m service` on free ports, in a temporary folder."""

    def __init__(
        self, args: argparse.Namespace, max_batch: int, autotune: bool, workdir: Path
    ) -> None:
        from prompt_store import LocalRedis
        from prompt_store.local_redis import free_port

        self.redis = LocalRedis(data_dir=workdir / f"redis-{max_batch}", appendfsync="everysec")
        self.redis.start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
        env.pop("REDIS_URL", None)
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "REDIS_URL": self.redis.url,
                "INSPECT_MAX_BATCH_SIZE": str(max_batch),
                "INSPECT_BATCH_AUTOTUNE": "true" if autotune else "false",
                "INSPECT_MAX_BATCH_WAIT_MS": str(args.max_wait_ms),
                "INSPECT_QUEUE_SIZE": "256",
                "INSPECT_REQUEST_TIMEOUT_S": "120",
                "INSPECT_THREADS": str(args.threads),
                "INSPECT_LOG_LEVEL": "WARNING",
            }
        )
        if args.model is not None:
            env["INSPECT_MODEL_PATH"] = str(args.model.resolve())
        self.log = (workdir / f"service-{max_batch}.log").open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "service", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        """Poll /readyz until 200; returns its body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited; see {self.log.name}")
            try:
                res = httpx.get(self.url + "/readyz", timeout=2)
                if res.status_code == 200:
                    return res.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("service not ready in time")

    def register_samples(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            for k in (1, 2):
                files = {
                    "image": ("p.jpg", (SAMPLES / f"scratch_prompt_{k}.jpg").read_bytes()),
                    "mask": ("m.png", (SAMPLES / f"scratch_prompt_{k}_mask.png").read_bytes()),
                }
                res = client.post(
                    f"/v1/namespaces/{NAMESPACE}/prompts",
                    files=files,
                    data={"class_name": "scratch"},
                )
                res.raise_for_status()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.redis.stop()


async def load(url: str, body: bytes, concurrency: int, n: int, mask_format: str) -> dict:
    """n requests from `concurrency` workers; client latencies and server timings."""
    latencies: list[float] = []
    outside: list[float] = []
    inference: list[float] = []
    statuses: dict[int, int] = {}
    remaining = n
    params = {"namespace": NAMESPACE, "mask_format": mask_format}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                res = await client.post("/v1/inspect", params=params, content=body)
                seconds = time.perf_counter() - t0
                statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
                if res.status_code != 200:
                    continue
                model_s = res.json()["timings_ms"].get("inference", 0.0) / 1000
                latencies.append(seconds)
                inference.append(model_s)
                outside.append(max(0.0, seconds - model_s) / seconds)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": n,
        "statuses": statuses,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "throughput_rps": len(latencies) / wall,
        "model_call_p50_ms": percentile(inference, 50) * 1000,
        "share_outside_model": statistics.fmean(outside) if outside else 0.0,
    }


def batch_sizes(url: str) -> dict[str, float]:
    """Mean images per model call, from the service's own histogram."""
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("inspect_batch_size_sum", "inspect_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[-1])
    return values


def bench_service(
    args: argparse.Namespace, max_batch: int, autotune: bool, levels: list[int]
) -> list[dict]:
    body = args.image.read_bytes()
    label = f"max_batch={max_batch}{' (calibrated)' if autotune else ''}"
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        server = Server(args, max_batch, autotune, Path(tmp))
        try:
            in_use = server.wait_ready()["queue"]["max_batch"]
            server.register_samples()
            rows = []
            for c in levels:
                asyncio.run(load(server.url, body, c, args.warmup, args.mask_format))
                before = batch_sizes(server.url)
                row = asyncio.run(load(server.url, body, c, args.requests, args.mask_format))
                after = batch_sizes(server.url)
                calls = after.get("inspect_batch_size_count", 0) - before.get(
                    "inspect_batch_size_count", 0
                )
                images = after.get("inspect_batch_size_sum", 0) - before.get(
                    "inspect_batch_size_sum", 0
                )
                row["mean_batch_size"] = images / calls if calls else 0.0
                row["max_batch"] = max_batch
                row["max_batch_in_use"] = in_use
                row["calibrated"] = autotune
                rows.append(row)
                print(
                    f"  {label}, in use {in_use}, c={c:>2}: p50 {row['p50_ms']:7.1f} ms  "
                    f"p99 {row['p99_ms']:7.1f} ms  {row['throughput_rps']:6.1f} req/s  "
                    f"batch {row['mean_batch_size']:.2f}  outside model "
                    f"{100 * row['share_outside_model']:.0f}%  statuses {row['statuses']}",
                    flush=True,
                )
            return rows
        finally:
            server.stop()


def main() -> None:
    args = parse_args()
    levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    print("bare runtime ...", flush=True)
    bare = bench_bare(args, args.requests)
    print(
        f"  p50 {bare['p50_ms']:.1f} ms  p99 {bare['p99_ms']:.1f} ms  "
        f"{bare['images_per_s']:.1f} img/s (batch of 8: {bare['batched_images_per_s'][8]:.1f})",
        flush=True,
    )
    print("service, batching on (batch size calibrated at start-up) ...", flush=True)
    batched = bench_service(args, args.max_batch, True, levels)
    unbatched: list[dict] = []
    forced: list[dict] = []
    if not args.no_unbatched:
        print("service, batching off ...", flush=True)
        unbatched = bench_service(args, 1, False, levels)
    if args.forced_batch > 1:
        print(f"service, batches of up to {args.forced_batch}, not calibrated ...", flush=True)
        forced = bench_service(args, args.forced_batch, False, levels)
    c1 = next((r for r in batched if r["concurrency"] == 1), None)
    verdicts: dict[str, Any] = {}
    if c1 is not None:
        ratio = c1["p50_ms"] / bare["p50_ms"]
        verdicts["c1_p50_over_bare"] = ratio
        verdicts["c1_within_25_percent"] = ratio <= 1.25
    if unbatched:
        # with one request in flight there is nothing to batch: compare where there is
        verdicts["batching_throughput_ratio"] = {
            str(b["concurrency"]): b["throughput_rps"] / max(u["throughput_rps"], 1e-9)
            for b, u in zip(batched, unbatched, strict=True)
        }
        verdicts["batching_throughput_not_lower"] = all(
            b["throughput_rps"] >= u["throughput_rps"]
            for b, u in zip(batched, unbatched, strict=True)
            if b["concurrency"] > 1
        )
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "image": str(
            args.image.relative_to(REPO) if args.image.is_relative_to(REPO) else args.image
        ),
        "bare": bare,
        "service_batched": batched,
        "service_unbatched": unbatched,
        "service_forced_batch": forced,
        "targets": verdicts,
    }
    print(json.dumps(verdicts, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
