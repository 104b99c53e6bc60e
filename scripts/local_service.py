"""A service to run the long checks against: one already running (a URL), or a fresh one here.

Not a command: the helper of scripts/bench_load.py, scripts/fuzz.py and scripts/soak.py. A fresh
service is a local redis-server (AOF, fsync every second) plus `python -m service` on free
loopback ports in a temporary folder, with the API keys below; `teach()` registers the shipped
scratch samples so inspections have something to find.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "service" / "assets" / "samples"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
INSPECT_KEY = "bench-inspect-key-0123456789abcd"


class LocalService:
    """redis-server + `python -m service` (settings from `env`), stopped by `stop()`."""

    def __init__(self, env: dict[str, str] | None = None, model: Path | None = None) -> None:
        from prompt_store import LocalRedis
        from prompt_store.local_redis import free_port

        self._tmp = tempfile.TemporaryDirectory(prefix="inspect-long-")
        workdir = Path(self._tmp.name)
        self.redis = LocalRedis(data_dir=workdir / "redis", appendfsync="everysec")
        self.redis.start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "service.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
        base.pop("REDIS_URL", None)
        settings = {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": self.redis.url,
            "INSPECT_ADMIN_API_KEYS": ADMIN_KEY,
            "INSPECT_INSPECT_API_KEYS": INSPECT_KEY,
            "INSPECT_LOG_FORMAT": "json",
            **({"INSPECT_MODEL_PATH": str(model.resolve())} if model else {}),
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "service", "--port", str(self.port)],
            cwd=workdir,
            env={**base, **settings},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        """Poll /readyz until 200; returns its body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log_tail()}")
            try:
                res = httpx.get(self.url + "/readyz", timeout=2)
                if res.status_code == 200:
                    return res.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL if it hangs; stops redis; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.redis.stop()
        code = self.proc.returncode
        self._tmp.cleanup()
        return code


def teach(url: str, namespace: str, key: str | None = ADMIN_KEY) -> int:
    """Register the two shipped scratch prompts; returns the namespace version."""
    headers = {"X-API-Key": key} if key else {}
    version = 0
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for k in (1, 2):
            files = {
                "image": ("p.jpg", (SAMPLES / f"scratch_prompt_{k}.jpg").read_bytes()),
                "mask": ("m.png", (SAMPLES / f"scratch_prompt_{k}_mask.png").read_bytes()),
            }
            res = client.post(
                f"/v1/namespaces/{namespace}/prompts", files=files, data={"class_name": "scratch"}
            )
            res.raise_for_status()
            version = res.json()["version"]
    return version


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux /proc), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def status_counts(url: str) -> dict[str, float]:
    """The service's own count of answers by HTTP status (inspect_http_requests_total)."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("inspect_http_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
