"""Load benchmark over real HTTP: a steady camera load, then a burst above capacity.

Three phases against one service (started here, or a running one with --url):
  1. capacity: a closed loop of --probe-concurrency clients for --probe-s seconds measures the
     images/s the service sustains on this machine;
  2. steady: an open loop at --steady-rate requests/s (default half the capacity) for --steady-s
     seconds: requests leave on a fixed schedule whether or not earlier ones were answered, as
     cameras on a line do;
  3. burst: the same at --burst-rate (default three times the capacity) for --burst-s seconds.
For each phase it prints throughput (200s per second of the phase, the drain of the queue
included), p50/p99/max latency of the 200s, the share of 429s (and of 503s), `lost` (sent minus
answered: transport errors, client time-outs) and `late_200` (accepted requests answered later
than the deadline after they were sent, on the client's clock). The deadline is the service's
INSPECT_REQUEST_TIMEOUT_S (--deadline-s; set on a service started here); its clock starts when
the handler starts, after the upload, so the client allows --grace-s on top. Exit status 1 when
a request was lost, a 200 came later than deadline + grace, or any 5xx other than 503 came.

Run:
    python scripts/bench_load.py                                  # fresh service, default model
    python scripts/bench_load.py --steady-s 60 --burst-s 20 --out runs/bench_load.json
    python scripts/bench_load.py --probe-s 5 --steady-s 15 --burst-s 8           # quick look
    python scripts/bench_load.py --url http://line-7:8000 --namespace line-7 --api-key $KEY \\
        --deadline-s 10 --steady-rate 8 --burst-rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import ADMIN_KEY, SAMPLES, LocalService, status_counts, teach  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running service (default: start one here)")
    p.add_argument("--namespace", default="load", help="namespace to inspect (taught if new)")
    p.add_argument("--api-key", default=None, help="key for --url (default: the local key)")
    p.add_argument("--model", type=Path, help="model file of a service started here")
    p.add_argument("--image", type=Path, default=SAMPLES / "query_scratch.jpg")
    p.add_argument("--deadline-s", type=float, default=10.0, help="INSPECT_REQUEST_TIMEOUT_S")
    p.add_argument(
        "--grace-s",
        type=float,
        default=0.25,
        help="client-side allowance past the deadline (the service's clock starts later)",
    )
    p.add_argument("--queue-size", type=int, default=64, help="INSPECT_QUEUE_SIZE (started here)")
    p.add_argument("--probe-concurrency", type=int, default=4)
    p.add_argument("--probe-s", type=float, default=8.0)
    p.add_argument("--steady-rate", type=float, help="requests/s (default: 0.5 x capacity)")
    p.add_argument("--steady-s", type=float, default=30.0)
    p.add_argument("--burst-rate", type=float, help="requests/s (default: 3 x capacity)")
    p.add_argument("--burst-s", type=float, default=10.0)
    p.add_argument("--mask-format", default="rle", choices=["rle", "polygon", "none"])
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    return p.parse_args()


@dataclass
class Shot:
    """One request: when it was due, sent and answered, and how."""

    due: float
    sent: float = 0.0
    done: float = 0.0
    status: int | None = None  # None: no answer (lost)
    error: str | None = None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def summarise(
    name: str, shots: list[Shot], wall: float, deadline: float, grace: float
) -> dict[str, Any]:
    answered = [s for s in shots if s.status is not None]
    ok = [s.done - s.sent for s in answered if s.status == 200]
    statuses: dict[str, int] = {}
    for s in answered:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    errors: dict[str, int] = {}
    for s in shots:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    n = max(1, len(shots))
    return {
        "phase": name,
        "sent": len(shots),
        "answered": len(answered),
        "lost": len(shots) - len(answered),
        "statuses": statuses,
        "errors": errors,
        "throughput_ok_rps": round(len(ok) / wall, 2),
        "p50_ms": pct(ok, 50),
        "p99_ms": pct(ok, 99),
        "max_ms": pct(ok, 100),
        "share_429": round(statuses.get("429", 0) / n, 4),
        "share_503": round(statuses.get("503", 0) / n, 4),
        "late_200": sum(1 for t in ok if t > deadline),
        "late_200_past_grace": sum(1 for t in ok if t > deadline + grace),
        "answers_past_deadline_plus_1s": sum(
            1 for s in answered if s.done - s.sent > deadline + 1.0
        ),
        "max_send_lag_ms": round(max((s.sent - s.due for s in shots), default=0.0) * 1000, 1),
    }


async def _shoot(client: httpx.AsyncClient, shot: Shot, body: bytes, params: dict) -> None:
    await asyncio.sleep(max(0.0, shot.due - time.monotonic()))
    shot.sent = time.monotonic()
    try:
        res = await client.post("/v1/inspect", params=params, content=body)
        shot.status = res.status_code
    except httpx.HTTPError as exc:
        shot.error = type(exc).__name__
    shot.done = time.monotonic()


def _client(url: str, key: str, deadline: float, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=url,
        headers={"X-API-Key": key},
        timeout=httpx.Timeout(deadline + 30.0, connect=10.0),
        limits=limits,
    )


async def open_loop(
    url: str, key: str, body: bytes, params: dict, rate: float, seconds: float, deadline: float
) -> tuple[list[Shot], float]:
    """Requests due every 1/rate s for `seconds`, each on its own connection when needed."""
    count = max(1, int(rate * seconds))
    start = time.monotonic() + 0.2
    shots = [Shot(due=start + i / rate) for i in range(count)]
    connections = min(1024, int(rate * (deadline + 2)) + 8)
    async with _client(url, key, deadline, connections) as client:
        await asyncio.gather(*(_shoot(client, s, body, params) for s in shots))
    wall = max(s.done for s in shots) - start
    return shots, wall


async def closed_loop(
    url: str, key: str, body: bytes, params: dict, workers: int, seconds: float, deadline: float
) -> tuple[list[Shot], float]:
    """`workers` clients, each sending its next request when the last one is answered."""
    shots: list[Shot] = []
    end = time.monotonic() + seconds
    async with _client(url, key, deadline, workers) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                shot = Shot(due=time.monotonic())
                shots.append(shot)
                await _shoot(client, shot, body, params)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
    return shots, time.monotonic() - start


def main() -> int:
    args = parse_args()
    body = args.image.read_bytes()
    local: LocalService | None = None
    if args.url:
        url, key = args.url.rstrip("/"), args.api_key or ADMIN_KEY
    else:
        env = {
            "INSPECT_REQUEST_TIMEOUT_S": str(args.deadline_s),
            "INSPECT_QUEUE_SIZE": str(args.queue_size),
            "INSPECT_LOG_LEVEL": "WARNING",
        }
        local = LocalService(env, args.model)
        url, key = local.url, ADMIN_KEY
    try:
        if local is not None:
            ready = local.wait_ready()
            print(f"service ready: {ready['model']['backend']}, queue {ready['queue']}", flush=True)
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as c:
            if c.get(f"/v1/namespaces/{args.namespace}/prompts").status_code == 404:
                teach(url, args.namespace, key)
        params = {"namespace": args.namespace, "mask_format": args.mask_format}
        before = status_counts(url)

        shots, wall = asyncio.run(
            closed_loop(
                url, key, body, params, args.probe_concurrency, args.probe_s, args.deadline_s
            )
        )
        probe = summarise("capacity", shots, wall, args.deadline_s, args.grace_s)
        capacity = probe["throughput_ok_rps"]
        print(f"capacity: {capacity} images/s ({json.dumps(probe)})", flush=True)
        phases = [probe]
        for name, rate, seconds in (
            ("steady", args.steady_rate or 0.5 * capacity, args.steady_s),
            ("burst", args.burst_rate or 3.0 * capacity, args.burst_s),
        ):
            shots, wall = asyncio.run(
                open_loop(url, key, body, params, rate, seconds, args.deadline_s)
            )
            row = summarise(name, shots, wall, args.deadline_s, args.grace_s)
            row["rate_rps"] = round(rate, 2)
            phases.append(row)
            print(f"{name}: {json.dumps(row)}", flush=True)
        after = status_counts(url)
        server = {s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)}
    finally:
        code = local.stop() if local is not None else None
    bad_5xx = sum(v for s, v in server.items() if s.startswith("5") and s != "503")
    verdict = {
        "lost": sum(p["lost"] for p in phases),
        "late_200": sum(p["late_200"] for p in phases),
        "late_200_past_grace": sum(p["late_200_past_grace"] for p in phases),
        "unexpected_5xx": int(bad_5xx),
        "steady_all_ok": phases[1]["statuses"].get("200", 0) == phases[1]["sent"],
        "burst_shed_with_429": phases[2]["share_429"] > 0,
    }
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "target": args.url or "local service (started here)",
        "deadline_s": args.deadline_s,
        "image": args.image.name,
        "phases": phases,
        "server_statuses": server,
        "service_exit_code": code,
        "verdict": verdict,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    failed = verdict["lost"] or verdict["late_200_past_grace"] or verdict["unexpected_5xx"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
