"""A local `redis-server` child process with persistence on, for the embedded default and tests.

Persistence: append-only file on (`appendonly yes`), RDB snapshots off, and by default
`appendfsync always`: Redis fsyncs the AOF before it answers a write, so a registration the QA
engineer saw acknowledged survives a crash of the process *and* of the machine (power loss).
Registrations are rare and human-paced and a batched add is one script (one fsync), so the cost
(about one disk flush per write call) is invisible next to encoding a prompt, while inspections
only read and never touch the disk. `everysec` (lose at most about one second on power loss, no
loss on a process crash) can be chosen where disks are slow; see scripts/bench_store.py for both.

Usage:
    with LocalRedis(data_dir=Path("/var/lib/inspect/redis")) as server:
        store = RedisPromptStore.from_url(server.url)

Nothing runs at import time; `start()` spawns the server and waits until it answers PING.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

from prompt_store.errors import StoreUnavailable

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (a race remains; start() retries on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the parent dies, so crashed tests leave no orphan."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_redis(pid: int) -> bool:
    """Guards against a stale pidfile whose pid now belongs to some other program."""
    try:
        return "redis" in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return True  # cannot tell (not Linux): assume the worst


@dataclass
class LocalRedis:
    """One redis-server on 127.0.0.1 whose data lives in `data_dir` (created if missing)."""

    data_dir: Path
    port: int = 0  # 0: pick a free port at start
    appendfsync: Literal["always", "everysec"] = "always"
    password: str | None = None  # requirepass, written to the 0600 config file, not argv
    binary: str = "redis-server"
    startup_timeout: float = 15.0  # loading a big AOF after a restart takes a while
    # Linux: SIGTERM the server when the process that started it dies (only when started from
    # the main thread: the kernel ties the signal to the starting *thread*, not the process).
    die_with_parent: bool = True
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """redis:// URL of the running server (with the password if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the server, None when stopped."""
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> LocalRedis:
        """Spawn the server and block until it answers PING (after loading its AOF)."""
        if self.running:
            return self
        exe = shutil.which(self.binary)
        if exe is None:
            raise StoreUnavailable(
                f"cannot start a local Redis: {self.binary!r} is not on PATH "
                "(Debian/Ubuntu: apt-get install redis-server)"
            )
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_second_server()
        fixed_port = self.port != 0
        for _attempt in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = free_port()
            self._spawn(exe)
            if self._wait_ready():
                return self
            if fixed_port or "Address already in use" not in self._log_tail():
                break
        raise StoreUnavailable(
            f"local redis-server did not become ready on port {self.port}; log tail:\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown: SIGTERM makes Redis fsync the AOF and exit; SIGKILL if it hangs."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL, no shutdown work): for durability tests."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config_text(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.data_dir}"',
            'logfile "redis.log"',
            f'pidfile "{self.data_dir / "redis.pid"}"',
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            'save ""',  # AOF is the source of truth; no fork-heavy RDB snapshots
            "aof-use-rdb-preamble yes",
        ]
        if self.password:
            lines.append(f'requirepass "{self.password}"')
        return "\n".join(lines) + "\n"

    def _spawn(self, exe: str) -> None:
        conf = self.data_dir / "redis.conf"
        conf.write_text(self._config_text())
        conf.chmod(0o600)
        tie = (
            self.die_with_parent
            and sys.platform == "linux"
            and threading.current_thread() is threading.main_thread()
        )
        preexec = _die_with_parent if tie else None
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [exe, str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,  # noqa: PLW1509
        )

    def _wait_ready(self) -> bool:
        """Poll PING until it answers; False if the process died or the deadline passed."""
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.ConnectionError:  # refused, or LOADING the AOF
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        return False

    def _refuse_second_server(self) -> None:
        """Two servers appending to one AOF corrupt it: refuse if the pidfile's owner lives."""
        pidfile = self.data_dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if pid != os.getpid() and _pid_alive(pid) and _is_redis(pid):
            raise StoreUnavailable(
                f"another redis-server (pid {pid}) is using {self.data_dir}; stop it first"
            )

    def _log_tail(self, lines: int = 20) -> str:
        log = self.data_dir / "redis.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
