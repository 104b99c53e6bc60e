"""Fuzz the service: the malformed-image corpus, then schemathesis against its OpenAPI document.

Against one service (started here, or a running one with --url):
  1. every case of the malformed-image corpus (tests/malformed_images.py: truncated, wrong magic,
     decompression bombs, 0x0, 1x100000, 16-bit, CMYK, animated, ...) as an inspection, as a
     prompt image and as a prompt mask: a broken case must get its 4xx problem, a valid but
     unusual one 200 (inspection) or 201 (prompt); a mask may also get a 4xx (size mismatch,
     empty); never a 5xx;
  2. schemathesis (`python -m schemathesis.cli run`) on /openapi.json with --max-examples per
     operation (the test suite runs 25), phases examples, coverage and fuzzing, check
     not_a_server_error;
  3. the service's own count of 5xx answers over both (from /metrics), whether it is still up,
     and whether its log holds a traceback (services started here).
Exit status 1 on any 5xx, unexpected status, crash or traceback.

Run:
    python scripts/fuzz.py                                     # fresh service, default model
    python scripts/fuzz.py --max-examples 500 --out runs/fuzz.json
    python scripts/fuzz.py --max-examples 50 --skip-schemathesis   # the corpus only
    python scripts/fuzz.py --url http://127.0.0.1:8000 --api-key $ADMIN_KEY
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import ADMIN_KEY, REPO, LocalService, status_counts, teach  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.malformed_images import SIDE, corpus  # noqa: E402

PROBLEM = "application/problem+json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running service (default: start one here)")
    p.add_argument("--api-key", default=None, help="admin key for --url")
    p.add_argument("--model", type=Path, help="model file of a service started here")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="its INSPECT_MAX_IMAGE_PIXELS"
    )
    p.add_argument("--max-examples", type=int, default=200, help="schemathesis, per operation")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-schemathesis", action="store_true")
    p.add_argument("--timeout-s", type=int, default=1800, help="limit of the schemathesis run")
    p.add_argument("--out", type=Path)
    return p.parse_args()


def run_corpus(url: str, key: str, ns: str, max_pixels: int) -> dict[str, Any]:
    """Each case three ways; returns counts and the cases that got an unexpected answer."""
    import cv2
    import numpy as np

    prompt = cv2.imencode(".png", np.full((SIDE, SIDE, 3), 90, np.uint8))[1].tobytes()
    target = f"fuzz-{uuid.uuid4().hex[:8]}"
    bad: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    cases = corpus(max_pixels)
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
        for case in cases:
            answers = {
                "inspect": client.post("/v1/inspect", params={"namespace": ns}, content=case.data),
                "prompt": client.post(
                    f"/v1/namespaces/{target}/prompts",
                    files={"image": ("x", case.data)},
                    data={"class_name": "odd", "boxes": "[[0, 0, 1, 1]]"},
                ),
                "mask": client.post(
                    f"/v1/namespaces/{target}/prompts",
                    files={"image": ("p.png", prompt), "mask": ("m", case.data)},
                    data={"class_name": "odd-mask"},
                ),
            }
            for how, res in answers.items():
                counts[str(res.status_code)] = counts.get(str(res.status_code), 0) + 1
                problem = res.headers.get("content-type", "").startswith(PROBLEM)
                if how == "inspect":
                    ok = res.status_code in case.expect
                elif how == "prompt":
                    ok = res.status_code == 201 if case.valid else res.status_code in case.expect
                else:
                    ok = res.status_code == 201 or 400 <= res.status_code < 500
                ok = ok and (res.status_code < 400 or problem)
                if not ok:
                    bad.append({"case": case.name, "as": how, "status": res.status_code})
    return {"cases": len(cases), "requests": 3 * len(cases), "statuses": counts, "unexpected": bad}


def run_schemathesis(url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(args.max_examples),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",  # hypothesis' lambda reflection is not thread-safe on CPython 3.11
        "--header",
        f"X-API-Key: {key}",
        "--suppress-health-check",
        "all",
        "--seed",
        str(args.seed),
        "--no-color",
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout_s, cwd=tmp, check=False
        )
    text = out.stdout + out.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    summary = [ln for ln in text.splitlines() if re.search(r"generated|passed|failed|error", ln)]
    return {
        "exit_code": out.returncode,
        "generated": int(counts.group(1)) if counts else None,
        "passed": int(counts.group(2)) if counts else None,
        "seconds": round(time.monotonic() - started, 1),
        "summary": summary[-8:],
        "tail": text[-3000:] if out.returncode else "",
    }


def main() -> int:
    args = parse_args()
    local: LocalService | None = None
    if args.url:
        url, key = args.url.rstrip("/"), args.api_key or ADMIN_KEY
    else:
        env = {"INSPECT_MAX_IMAGE_PIXELS": str(args.max_pixels), "INSPECT_LOG_LEVEL": "INFO"}
        local = LocalService(env, args.model)
        url, key = local.url, ADMIN_KEY
    report: dict[str, Any] = {"target": args.url or "local service (started here)"}
    try:
        if local is not None:
            local.wait_ready()
        ns = f"fuzz-ns-{uuid.uuid4().hex[:6]}"
        teach(url, ns, key)
        before = status_counts(url)
        report["corpus"] = run_corpus(url, key, ns, args.max_pixels)
        print(f"corpus: {json.dumps(report['corpus'])}", flush=True)
        if not args.skip_schemathesis:
            report["schemathesis"] = run_schemathesis(url, key, args)
            print(f"schemathesis: {json.dumps(report['schemathesis'])}", flush=True)
        after = status_counts(url)
        report["server_statuses"] = {
            s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)
        }
        if local is not None:
            report["alive"] = local.proc.poll() is None
            log = local.log_text()
            report["tracebacks_in_log"] = len(re.findall(r"Traceback|Exception in ASGI", log))
    finally:
        if local is not None:
            report["service_exit_code"] = local.stop()
    five_xx = sum(v for s, v in report["server_statuses"].items() if s.startswith("5"))
    report["server_5xx"] = int(five_xx)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    st = report.get("schemathesis", {"exit_code": 0})
    failed = (
        five_xx
        or report["corpus"]["unexpected"]
        or st["exit_code"] != 0
        or not report.get("alive", True)
        or report.get("tracebacks_in_log", 0)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
