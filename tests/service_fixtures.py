"""Fixtures for the service tests: a real `python -m service` on a free port, and test images.

`ServiceProcess` starts the service as a subprocess (the machine's environment without any
INSPECT_* or REDIS_URL of the caller, plus the settings a test gives), waits until /readyz
answers, and keeps its log for failure messages. Every test module starts at most a couple of
servers (module-scoped fixtures).

The model is the session's tiny model (`tiny_run`); SERVICE_TEST_MODEL_PATH points at another
model file to skip training it while iterating on the service alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from prompt_store.local_redis import free_port

__all__ = [
    "ServiceProcess",
    "encode_png",
    "service_model_path",
    "service_factory",
    "tiny_image_bytes",
]

REPO = Path(__file__).resolve().parent.parent
INSPECT_KEY = "inspect-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef01"


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) or grey (H, W) -> PNG bytes."""
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


class ServiceProcess:
    """`python -m service --port P` in a subprocess, talked to over real HTTP."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / f"service-{self.port}.log"
        base = {  # the machine's environment, less any service setting of the caller
            k: v
            for k, v in os.environ.items()
            if not k.startswith("INSPECT_") and k not in ("REDIS_URL", "SERVICE_TEST_MODEL_PATH")
        }
        base["PYTHONPATH"] = str(REPO)
        base["PYTHONUNBUFFERED"] = "1"
        self.env = {**base, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "service", "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 180.0) -> ServiceProcess:
        """Poll /readyz until 200; fail with the log tail if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                pytest.fail(f"service exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"service not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def client(self, key: str | None = ADMIN_KEY, timeout: float = 60.0) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@pytest.fixture(scope="session")
def service_model_path(request: pytest.FixtureRequest) -> Path:
    """The model file the test servers load (the tiny model unless overridden)."""
    override = os.environ.get("SERVICE_TEST_MODEL_PATH")
    if override:
        return Path(override)
    return request.getfixturevalue("tiny_run").model_path


@pytest.fixture(scope="module")
def service_factory(
    tmp_path_factory: pytest.TempPathFactory, service_model_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """start(**env) -> a started ServiceProcess (not yet waited on); all stopped at module end.

    Defaults: the test model, threshold 0.2 (the tiny model scores its defects ~0.3-0.5), keys
    INSPECT_KEY (inspect) and ADMIN_KEY (admin), text logs. Start several, then wait_ready()
    each: they load in parallel.
    """
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        settings = {
            "INSPECT_MODEL_PATH": str(service_model_path),
            "INSPECT_SCORE_THRESHOLD": "0.2",
            "INSPECT_INSPECT_API_KEYS": INSPECT_KEY,
            "INSPECT_ADMIN_API_KEYS": ADMIN_KEY,
            "INSPECT_LOG_FORMAT": "text",
            "INSPECT_THREADS": "1",
            **env,
        }
        workdir = tmp_path_factory.mktemp("service")
        proc = ServiceProcess(settings, workdir).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()


@pytest.fixture(scope="session")
def tiny_image_bytes() -> Callable[[int, int], tuple[bytes, list]]:
    """(index, seed) -> (PNG bytes, instances) of a tiny synthetic image (128 px, one defect;
    even indices `scratch`, odd `spot`; with TinySet(n, seed, free=k) indices >= n are clean)."""
    from tests.tiny import TinySet

    sets: dict[int, TinySet] = {}

    def get(index: int, seed: int = 5) -> tuple[bytes, list]:
        if seed not in sets:
            sets[seed] = TinySet(40, seed=seed, free=10)
        tiny = sets[seed]
        image, instances = tiny.load(tiny.records[index])
        return encode_png(image), instances

    return get
