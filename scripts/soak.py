"""Soak run: minutes of mixed traffic with the service's memory sampled; fails on growth.

Traffic (open loop, --rate requests/s): inspections with every option (RLE, polygon and no
masks, heatmaps, class subsets), a share of broken uploads (truncated, not an image, a
decompression bomb), and every --churn-every s a registration that is removed again (prototype
cache invalidation, store writes). The service's resident memory (VmRSS from /proc) is sampled
every --sample-s. The first --warmup-s are the warm-up (allocator pools, ONNX Runtime arenas);
growth is the median of the last 10 samples minus the median of the first 10 after the warm-up,
and the slope of a line fitted through the samples after the warm-up is printed too. Exit
status 1 when growth exceeds --max-growth-mib, or any answer was a 5xx or lost.

Run:
    python scripts/soak.py                                   # 5 minutes, fresh service here
    python scripts/soak.py --minutes 1 --warmup-s 15         # quick look
    python scripts/soak.py --minutes 30 --rate 8 --out runs/soak.json
    python scripts/soak.py --url http://127.0.0.1:8000 --pid $(pgrep -f 'python -m service') \\
        --api-key $ADMIN_KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import (  # noqa: E402
    ADMIN_KEY,
    SAMPLES,
    LocalService,
    rss_kib,
    status_counts,
    teach,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running service (then --pid is needed)")
    p.add_argument("--pid", type=int, help="process id of the service at --url")
    p.add_argument("--api-key", default=None, help="admin key for --url")
    p.add_argument("--model", type=Path, help="model file of a service started here")
    p.add_argument("--namespace", default="soak")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=2.0, help="requests/s")
    p.add_argument("--warmup-s", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=1.0)
    p.add_argument("--churn-every", type=float, default=10.0, help="seconds between registrations")
    p.add_argument("--max-growth-mib", type=float, default=25.0)
    p.add_argument("--out", type=Path)
    return p.parse_args()


def request_mix() -> list[tuple[str, dict[str, Any], bytes]]:
    """(label, query params, body) cycled through by the load loop."""
    scratch = (SAMPLES / "query_scratch.jpg").read_bytes()
    ok = (SAMPLES / "query_ok.jpg").read_bytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)  # 1.6 G pixels, on the header
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4097)))
    return [
        ("rle", {"mask_format": "rle"}, scratch),
        ("polygon+heatmap", {"mask_format": "polygon", "heatmap": "true"}, scratch),
        ("none", {"mask_format": "none"}, ok),
        ("class-subset", {"classes": "scratch", "score_threshold": "0.2"}, scratch),
        ("rle", {"mask_format": "rle"}, ok),
        ("truncated", {}, scratch[: len(scratch) // 2]),
        ("rle", {"mask_format": "rle", "max_detections": "3"}, scratch),
        ("not-an-image", {}, b"GET / HTTP/1.1\r\n" * 64),
        ("polygon", {"mask_format": "polygon"}, ok),
        ("bomb", {}, bomb),
    ]


async def traffic(url: str, key: str, ns: str, args: argparse.Namespace, stop: float) -> dict:
    mix = request_mix()
    statuses: dict[str, int] = {}
    lost = 0
    sent = 0
    churn = {"registered": 0, "removed": 0, "failed": 0}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits
    ) as client:

        async def one(i: int) -> None:
            nonlocal lost
            _, params, body = mix[i % len(mix)]
            try:
                res = await client.post(
                    "/v1/inspect", params={"namespace": ns, **params}, content=body
                )
                statuses[str(res.status_code)] = statuses.get(str(res.status_code), 0) + 1
            except httpx.HTTPError:
                lost += 1

        async def churner() -> None:
            image = (SAMPLES / "scratch_prompt_1.jpg").read_bytes()
            k = 0
            while time.monotonic() < stop:
                await asyncio.sleep(args.churn_every)
                k += 1
                box = [10 + k % 50, 10, 40 + k % 50, 30]  # a new region each time: a new exemplar
                try:
                    res = await client.post(
                        f"/v1/namespaces/{ns}/prompts",
                        files={"image": ("p.jpg", image)},
                        data={"class_name": "churn", "boxes": json.dumps([box])},
                    )
                    res.raise_for_status()
                    churn["registered"] += 1
                    eid = res.json()["exemplars"][0]["id"]
                    (await client.delete(f"/v1/namespaces/{ns}/exemplars/{eid}")).raise_for_status()
                    churn["removed"] += 1
                except httpx.HTTPError:
                    churn["failed"] += 1

        tasks = [asyncio.create_task(churner())]
        start = time.monotonic()
        i = 0
        while True:
            due = start + i / args.rate
            if due >= stop:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
            sent += 1
            i += 1
        await asyncio.gather(*tasks)
    return {"sent": sent, "statuses": statuses, "lost": lost, "churn": churn}


async def sampler(pid: int, every: float, stop: float, out: list[tuple[float, int]]) -> None:
    start = time.monotonic()
    while time.monotonic() < stop:
        out.append((time.monotonic() - start, rss_kib(pid)))
        await asyncio.sleep(every)
    out.append((time.monotonic() - start, rss_kib(pid)))


async def soak(url: str, key: str, pid: int, args: argparse.Namespace) -> tuple[dict, list]:
    stop = time.monotonic() + 60 * args.minutes
    samples: list[tuple[float, int]] = []
    result, _ = await asyncio.gather(
        traffic(url, key, args.namespace, args, stop),
        sampler(pid, args.sample_s, stop, samples),
    )
    return result, samples


def main() -> int:
    args = parse_args()
    local: LocalService | None = None
    if args.url:
        if args.pid is None:
            sys.exit("--url needs --pid (the service's process id) to sample its memory")
        url, key, pid = args.url.rstrip("/"), args.api_key or ADMIN_KEY, args.pid
    else:
        local = LocalService({"INSPECT_LOG_LEVEL": "WARNING"}, args.model)
        url, key, pid = local.url, ADMIN_KEY, local.pid
    try:
        if local is not None:
            local.wait_ready()
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as c:
            if c.get(f"/v1/namespaces/{args.namespace}/prompts").status_code == 404:
                teach(url, args.namespace, key)
        before = status_counts(url)
        print(f"soaking {url} (pid {pid}) for {args.minutes} min at {args.rate}/s", flush=True)
        result, samples = asyncio.run(soak(url, key, pid, args))
        after = status_counts(url)
        alive = local.proc.poll() is None if local is not None else True
    finally:
        code = local.stop() if local is not None else None
    server = {s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)}
    steady = [(t, kib) for t, kib in samples if t >= args.warmup_s]
    if len(steady) < 20:
        sys.exit(f"too few samples after the warm-up ({len(steady)}); run longer")
    mib = [kib / 1024 for _, kib in steady]
    first, last = statistics.median(mib[:10]), statistics.median(mib[-10:])
    times = np.array([t for t, _ in steady]) / 60.0
    slope = float(np.polyfit(times, np.array(mib), 1)[0])
    five_xx = sum(v for s, v in result["statuses"].items() if s.startswith("5"))
    report = {
        "target": args.url or "local service (started here)",
        "minutes": args.minutes,
        "rate_rps": args.rate,
        "traffic": result,
        "server_statuses": server,
        "rss_mib": {
            "start": round(samples[0][1] / 1024, 1),
            "after_warmup": round(first, 1),
            "end": round(last, 1),
            "max": round(max(kib for _, kib in samples) / 1024, 1),
            "growth_after_warmup": round(last - first, 1),
            "slope_mib_per_min": round(slope, 2),
            "samples": len(samples),
        },
        "bound_mib": args.max_growth_mib,
        "service_alive_at_end": alive,
        "service_exit_code": code,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**report, "samples": samples}, indent=2))
    failed = last - first > args.max_growth_mib or five_xx or result["lost"] or not alive
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
