"""The service under faults, hostile input and careless clients (the quick cases; the long runs
are scripts/bench_load.py, scripts/fuzz.py and scripts/soak.py).

What test_service_api.py and test_service_resilience.py already show (Redis stopped and
restarted mid-traffic, 429 on overload, graceful shutdown, the common bad inputs, schemathesis)
is not repeated here. This module adds: SIGKILL of the service *and* of redis-server during
registrations (every acknowledged registration survives, nothing is half-written), a slow client,
clients that hang up mid-upload, corrupt and foreign model files, a corpus of malformed images
(tests/malformed_images.py), and the security rules (admin routes refuse inspect keys, no key or
password in the logs, upload limits before decoding; the non-root container is
tests/test_deploy.py's).

The module runs its own redis-servers (one with a password, one that gets SIGKILLed) and three
service processes on the session's tiny model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import fingerprint
from models.config import ModelConfig
from prompt_store import LocalRedis, RedisPromptStore
from prompt_store.records import prototype_of
from tests.malformed_images import SIDE, bomb_png, corpus
from tests.service_fixtures import ADMIN_KEY, INSPECT_KEY, REPO, ServiceProcess, encode_png

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROBLEM = "application/problem+json"
MAX_IMAGE_BYTES = 1024 * 1024
MAX_PIXELS = 1_000_000
BODY_LIMIT = 2 * MAX_IMAGE_BYTES + 1024 * 1024  # service/main.py: image + mask + form fields
REDIS_PASSWORD = "redis-pw-" + "5f1c0e9a7b3d4c21"
WRONG_KEY = "wrong-key-" + "a8c3e5f7b9d1e2f4"
TRACEBACK = re.compile(r"Traceback|Exception in ASGI|unhandled error")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory):
    server = LocalRedis(data_dir=tmp_path_factory.mktemp("redis-secure"), password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def crash_redis(tmp_path_factory):
    """The redis-server that is SIGKILLed: AOF with fsync before every acknowledgement."""
    server = LocalRedis(data_dir=tmp_path_factory.mktemp("redis-crash"), appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(service_factory, secure_redis, crash_redis):
    """(svc, victim): svc on the password-protected Redis with small limits and DEBUG JSON logs
    (the widest net for leaked secrets); victim on the Redis that gets killed. Both load at once."""
    svc = service_factory(
        REDIS_URL=secure_redis.url,
        INSPECT_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
        INSPECT_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
        INSPECT_LOG_FORMAT="json",
        INSPECT_LOG_LEVEL="DEBUG",
        INSPECT_BATCH_AUTOTUNE="false",
    )
    victim = service_factory(REDIS_URL=crash_redis.url, INSPECT_BATCH_AUTOTUNE="false")
    return svc.wait_ready(), victim.wait_ready()


@pytest.fixture(scope="module")
def svc(services):
    return services[0]


@pytest.fixture(scope="module")
def taught(svc, tiny_image_bytes):
    """A namespace with one `scratch` exemplar on svc, and a query image."""
    ns = "rel-" + uuid.uuid4().hex[:8]
    data, instances = tiny_image_bytes(0)
    with svc.client() as api:
        res = api.post(
            f"/v1/namespaces/{ns}/prompts",
            files={"image": ("p.png", data, "image/png")},
            data={"class_name": "scratch", "boxes": json.dumps([instances[0].box.tolist()])},
        )
        assert res.status_code == 201, res.text
    return ns, tiny_image_bytes(6)[0]


def _kind(res: httpx.Response) -> str:
    return res.json()["type"].rsplit("/", 1)[-1]


def _assert_problem(res: httpx.Response, statuses, what: str) -> None:
    assert res.status_code in statuses, f"{what}: {res.status_code} {res.text[:300]}"
    assert res.headers["content-type"].startswith(PROBLEM), what
    assert res.json()["status"] == res.status_code, what


def _status_counts(svc: ServiceProcess) -> dict[str, float]:
    """inspect_http_requests_total summed by status."""
    out: dict[str, float] = {}
    for line in httpx.get(svc.url + "/metrics").text.splitlines():
        if line.startswith("inspect_http_requests_total{"):
            status = re.search(r'status="(\d+)"', line).group(1)
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _memory_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _raw(port: int, head: bytes, body: bytes = b"", *, reset: bool = False) -> None:
    """Send a request's head and part of its body, then hang up (RST with `reset`)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head + body)
    time.sleep(0.1)  # let the service start reading it
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _answer(sock: socket.socket, first: bytes = b"") -> bytes:
    """What the service sends until it hangs up (it does after a 413; a reset, when the client
    was still sending, may cut the tail); a service that keeps the line open fails here."""
    data = first
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def _head(path: str, headers: dict[str, str]) -> bytes:
    """A complete POST request head (ends with the blank line)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"X-API-Key: {ADMIN_KEY}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- bad input at scale -----------------------------------------------------------------------


def test_malformed_image_corpus_gets_its_4xx_and_unusual_images_are_served(svc, taught):
    """Every case of the corpus as an inspection, a prompt image and a prompt mask: the expected
    4xx problem for broken or hostile bytes, 200/201 for valid but unusual images; never a 5xx."""
    ns, _ = taught
    target = "corpus-" + uuid.uuid4().hex[:8]
    before = _status_counts(svc)
    cases = corpus(MAX_PIXELS)
    prompt = encode_png(np.full((SIDE, SIDE, 3), 90, np.uint8))  # the corpus' size
    with svc.client() as api:
        for case in cases:
            res = api.post("/v1/inspect", params={"namespace": ns}, content=case.data)
            reg = api.post(
                f"/v1/namespaces/{target}/prompts",
                files={"image": ("x", case.data, "application/octet-stream")},
                data={"class_name": "odd", "boxes": "[[0, 0, 1, 1]]"},
            )
            mask = api.post(
                f"/v1/namespaces/{target}/prompts",
                files={"image": ("p.png", prompt), "mask": ("m", case.data)},
                data={"class_name": "odd-mask"},
            )
            if case.valid:
                assert res.status_code == 200, f"{case.name}: {res.text[:300]}"
                assert res.json()["verdict"] in ("pass", "reject")
                assert reg.status_code == 201, f"{case.name} (prompt): {reg.text[:300]}"
            else:
                _assert_problem(res, case.expect, case.name)
                _assert_problem(reg, case.expect, f"{case.name} (prompt)")
            if mask.status_code != 201:  # as a mask: used, or a 4xx (size mismatch, empty, ...)
                _assert_problem(mask, range(400, 500), f"{case.name} (mask)")
    after = _status_counts(svc)
    new = {s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)}
    assert not any(s.startswith("5") for s in new), new
    assert sum(new.values()) >= 3 * len(cases)
    assert svc.proc.poll() is None, svc.log_tail()


def test_upload_limits_are_enforced_before_decoding(svc, taught, tiny_image_bytes):
    ns, query = taught
    path = f"/v1/inspect?namespace={ns}"
    octet = "application/octet-stream"
    # 1. a declared body over the transport limit: 413 before a single body byte is sent
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(_head(path, {"Content-Type": octet, "Content-Length": str(50 * 1024 * 1024)}))
    answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body-too-large" in answer

    # 2. a chunked body (no length) is cut off once it passes the limit, not read to the end
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(_head(path, {"Content-Type": octet, "Transfer-Encoding": "chunked"}))
    chunk = b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024 - 8)
    sent, answer = 0, b""
    while sent < 64 * 1024 * 1024 and not answer:
        if select.select([sock], [], [], 0)[0]:
            answer = sock.recv(65536)
            break
        try:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:  # the service closed the connection after answering
            break
        sent += len(chunk)
    answer = _answer(sock, answer)  # the service answered and closed the connection
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 32 * 1024 * 1024  # refused long before the 64 MiB the client meant to send

    with svc.client() as api:
        # 3. an image over INSPECT_MAX_IMAGE_BYTES (inside the body limit) whose first bytes are a
        #    PNG signature: 413 image-too-large, not 400 corrupt-image, so no decoder saw it
        big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES)
        for res in (
            api.post("/v1/inspect", params={"namespace": ns}, content=big),
            api.post("/v1/inspect", params={"namespace": ns}, files={"image": ("b.png", big)}),
            api.post(
                f"/v1/namespaces/{ns}/prompts",
                files={"image": ("b.png", big)},
                data={"class_name": "scratch", "boxes": "[[0, 0, 4, 4]]"},
            ),
        ):
            _assert_problem(res, {413}, "oversized image")
            assert _kind(res) == "image-too-large"

        # 4. a real decompression bomb (8000 x 8000 grey zeros: 64 MB decoded, ~60 KB sent): 413
        #    from the header, and the service's peak memory does not move by what decoding takes
        bomb = bomb_png(8000)
        assert len(bomb) < 128 * 1024
        Path(f"/proc/{svc.proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM)
        resident = _memory_kib(svc.proc.pid)
        for _ in range(3):
            res = api.post("/v1/inspect", params={"namespace": ns}, content=bomb)
            _assert_problem(res, {413}, "bomb")
            assert _kind(res) == "image-too-many-pixels"
        peak_mib = (_memory_kib(svc.proc.pid, "VmHWM") - resident) / 1024
        assert peak_mib < 32, f"peak memory rose {peak_mib:.0f} MiB on a refused bomb"
        # and the service still inspects
        assert api.post("/v1/inspect", params={"namespace": ns}, content=query).status_code == 200


# ---- careless clients -------------------------------------------------------------------------


def test_slow_client_does_not_hold_up_the_line(svc, taught):
    """One camera uploads over 3 s, ten connections stall mid-header; the others are answered
    while the slow upload is still arriving, and the slow one is answered too."""
    ns, query = taught
    stalled = []
    for _ in range(10):  # slowloris: an incomplete request head, then silence
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
        sock.sendall(b"POST /v1/inspect?namespace=" + ns.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        stalled.append(sock)

    def trickle():
        pieces = np.array_split(np.frombuffer(query, np.uint8), 12)
        for piece in pieces:
            yield piece.tobytes()
            time.sleep(0.25)

    slow: dict[str, object] = {}

    def slow_upload() -> None:
        with svc.client() as c:
            slow["res"] = c.post("/v1/inspect", params={"namespace": ns}, content=trickle())
            slow["done"] = time.monotonic()

    thread = threading.Thread(target=slow_upload)
    thread.start()
    try:
        time.sleep(0.3)
        finished = []
        with svc.client(INSPECT_KEY) as camera:
            for _ in range(10):
                res = camera.post("/v1/inspect", params={"namespace": ns}, content=query)
                assert res.status_code == 200, res.text
                finished.append(time.monotonic())
    finally:
        thread.join(30)
        for sock in stalled:
            sock.close()
    res = slow["res"]
    assert isinstance(res, httpx.Response) and res.status_code == 200, res
    assert max(finished) < slow["done"], "the other cameras waited for the slow upload"


def test_client_disconnecting_mid_upload_is_quiet_and_harmless(svc, taught):
    """Hang-ups mid-body (raw, multipart, chunked, import; FIN and RST): no 5xx, no traceback in
    the log, and the next request is served."""
    ns, query = taught
    before = _status_counts(svc)
    octet = {"Content-Type": "application/octet-stream", "Content-Length": "50000"}
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": "50000"}
    part = (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + query[:3000]
    )
    port = svc.port
    _raw(port, _head(f"/v1/inspect?namespace={ns}", octet), query[:5000])
    _raw(port, _head(f"/v1/inspect?namespace={ns}", octet), query[:5000], reset=True)
    _raw(port, _head(f"/v1/inspect?namespace={ns}", multipart), part)
    _raw(port, _head(f"/v1/namespaces/{ns}/prompts", multipart), part)
    _raw(port, _head(f"/v1/namespaces/{ns}/prompts", multipart), part, reset=True)
    chunked = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
    _raw(port, _head(f"/v1/inspect?namespace={ns}", chunked), b"4000\r\n" + query[:100])
    json_head = {"Content-Type": "application/json", "Content-Length": "50000"}
    _raw(port, _head(f"/v1/namespaces/{ns}/import", json_head), b'{"format": ')
    with svc.client() as api:
        assert api.post("/v1/inspect", params={"namespace": ns}, content=query).status_code == 200
    deadline = time.monotonic() + 5
    while True:  # each hang-up is accounted for once the service noticed it
        after = _status_counts(svc)
        if sum(after.values()) - sum(before.values()) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    new = {s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)}
    assert not any(s.startswith("5") for s in new), new
    assert new.get("499", 0) >= 4, new  # counted as "client closed request"
    metrics = httpx.get(svc.url + "/metrics").text
    assert 'inspect_errors_total{type="client-disconnected"}' in metrics
    log = svc.log_path.read_text(errors="replace")
    assert not TRACEBACK.search(log), log[-3000:]
    assert svc.proc.poll() is None


# ---- security ---------------------------------------------------------------------------------


def test_every_admin_route_refuses_an_inspect_key(svc, taught):
    """Walk the OpenAPI document: every /v1/namespaces operation answers an inspect key (header
    or bearer) with 403 and an unknown key with 401, before touching the request body."""
    ns, query = taught
    spec = httpx.get(svc.url + "/openapi.json").json()
    values = {"namespace": ns, "class_name": "scratch", "exemplar_id": "0" * 32}
    operations = [
        (method.upper(), re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "0" * 32), path))
        for path, item in spec["paths"].items()
        if path.startswith("/v1/namespaces")
        for method in item
    ]
    assert len(operations) >= 11, operations
    with httpx.Client(base_url=svc.url, timeout=30) as client:
        for method, path in operations:
            for headers in ({"X-API-Key": INSPECT_KEY}, {"Authorization": f"Bearer {INSPECT_KEY}"}):
                res = client.request(method, path, headers=headers)
                _assert_problem(res, {403}, f"{method} {path}")
                assert _kind(res) == "forbidden"
            res = client.request(method, path, headers={"X-API-Key": WRONG_KEY})
            _assert_problem(res, {401}, f"{method} {path} (wrong key)")
        # the inspect key does what it is for
        res = client.post(
            "/v1/inspect",
            params={"namespace": ns},
            content=query,
            headers={"X-API-Key": INSPECT_KEY},
        )
        assert res.status_code == 200


def test_no_key_or_password_reaches_the_logs(svc, taught):
    """After requests carrying every key in every way (and the Redis password in REDIS_URL), the
    log (DEBUG, JSON), /readyz and /metrics hold none of them, nor their SHA-256."""
    ns, query = taught
    with httpx.Client(base_url=svc.url, timeout=30) as client:
        for headers, params in (
            ({"X-API-Key": ADMIN_KEY}, {}),
            ({"Authorization": f"Bearer {INSPECT_KEY}"}, {}),
            ({"X-API-Key": WRONG_KEY}, {}),
            ({"Authorization": f"Bearer {WRONG_KEY}"}, {}),
            ({"X-API-Key": INSPECT_KEY}, {"api_key": ADMIN_KEY}),  # a key misplaced in the URL
        ):
            client.post(
                "/v1/inspect", params={"namespace": ns, **params}, content=query, headers=headers
            )
            client.get(f"/v1/namespaces/{ns}/prompts", headers=headers)
        surfaces = {
            "log": svc.log_path.read_text(errors="replace"),
            "readyz": client.get("/readyz").text,
            "metrics": client.get("/metrics").text,
        }
    assert "service.access" in surfaces["log"]  # the requests were logged
    secrets = [ADMIN_KEY, INSPECT_KEY, WRONG_KEY, REDIS_PASSWORD]
    for secret in secrets:
        for form in (secret, hashlib.sha256(secret.encode()).hexdigest()):
            for name, text in surfaces.items():
                assert form not in text, f"{name} holds key material"
    assert not TRACEBACK.search(surfaces["log"]), surfaces["log"][-3000:]


def test_refused_keys_are_not_echoed_at_start():
    """A key that fails validation (too short) stops the start-up without printing the key."""
    secret = "tooshort-" + "9f8e7d"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
    env.update({"PYTHONPATH": str(REPO), "INSPECT_ADMIN_API_KEYS": secret})
    out = subprocess.run(
        [sys.executable, "-m", "service", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "admin_api_keys" in out.stderr and "16 characters" in out.stderr
    assert secret not in out.stdout + out.stderr


# ---- crashes ----------------------------------------------------------------------------------


def test_sigkill_during_registrations_keeps_every_acknowledged_one(
    services, crash_redis, service_factory, tiny_image_bytes
):
    """Two QA clients register exemplars; the service and redis-server are SIGKILLed mid-stream
    (no shutdown work at all). After a restart of both, every acknowledged exemplar is there, and
    the namespace is whole: every exemplar has its embedding and image, every prototype is the
    normalised mean of its class's embeddings, the version covers every acknowledgement."""
    _, victim = services
    ns = "crash-" + uuid.uuid4().hex[:8]
    acked: dict[str, int] = {}  # exemplar id -> acknowledged version
    lock = threading.Lock()
    stop = threading.Event()

    def register(worker: int) -> None:
        with victim.client(timeout=10) as c:
            k = 0
            while not stop.is_set():
                data, instances = tiny_image_bytes(k % 40, 11 + worker + 2 * (k // 40))
                box, name = instances[0].box.tolist(), instances[0].class_name
                try:
                    res = c.post(
                        f"/v1/namespaces/{ns}/prompts",
                        files={"image": ("p.png", data, "image/png")},
                        data={"class_name": name, "boxes": json.dumps([box])},
                    )
                except httpx.HTTPError:
                    return  # the service is gone
                if res.status_code == 201:
                    body = res.json()
                    with lock:
                        for ex in body["exemplars"]:
                            acked[ex["id"]] = body["version"]
                k += 1

    workers = [threading.Thread(target=register, args=(w,)) for w in range(2)]
    for t in workers:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.013)  # land somewhere inside a registration, not right after an answer
    victim.proc.kill()  # SIGKILL: no graceful anything
    victim.proc.wait()
    crash_redis.kill()  # and the store process too
    stop.set()
    for t in workers:
        t.join(30)
    assert len(acked) >= 12, f"only {len(acked)} registrations acknowledged before the kill"

    crash_redis.start()  # same port and data folder: replays the AOF
    restarted = service_factory(REDIS_URL=crash_redis.url, INSPECT_BATCH_AUTOTUNE="false")
    restarted.wait_ready()
    with restarted.client() as api:
        listing = api.get(f"/v1/namespaces/{ns}/prompts")
        assert listing.status_code == 200, listing.text
        listed = {e["id"] for c in listing.json()["classes"] for e in c["exemplars"]}
        missing = set(acked) - listed
        assert not missing, f"{len(missing)} acknowledged registrations lost"
        version = listing.json()["version"]
        assert version >= max(acked.values())
        query, _ = tiny_image_bytes(6)
        res = api.post("/v1/inspect", params={"namespace": ns}, content=query)
        assert res.status_code == 200 and res.json()["prompts"]["version"] == version

    store = RedisPromptStore.from_url(crash_redis.url)
    try:
        dump = store.dump_namespace(ns)
    finally:
        store.close()
    assert dump.version == version
    by_class: dict[str, list] = {}
    for rec in dump.exemplars:
        assert rec.embedding is not None and rec.embedding.shape == (dump.embed_dim,)
        assert np.isfinite(rec.embedding).all() and np.linalg.norm(rec.embedding) > 0
        assert rec.image_hash in dump.images and len(dump.images[rec.image_hash]) > 0
        by_class.setdefault(rec.class_name, []).append(rec)
    assert set(by_class) == set(dump.prototypes)
    for name, recs in by_class.items():
        expected = prototype_of([r.embedding for r in recs], order=[r.id for r in recs])
        assert np.array_equal(dump.prototypes[name], expected), name  # bit-exact, not partial


# ---- model files --------------------------------------------------------------------------------


def _bad_model_files(good: Path, folder: Path) -> dict[str, Path]:
    """Files a deployment could point INSPECT_MODEL_PATH at by mistake."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    out = {"truncated": folder / "truncated.pt"}
    out["truncated"].write_bytes(raw[: len(raw) // 3])
    torch.save({"fc.weight": torch.zeros(4, 4)}, folder / "foreign.pt")  # another network's file
    out["foreign"] = folder / "foreign.pt"
    blob = torch.load(good, map_location="cpu", weights_only=True)
    cfg = {**blob["config"], "embed_dim": blob["config"]["embed_dim"] // 2}
    cfg["ffn_dim"] = cfg["embed_dim"] * 2
    resealed = {**blob, "config": cfg}  # weights of one size under the config of another
    resealed["fingerprint"] = fingerprint(ModelConfig.from_dict(cfg), blob["state_dict"])
    torch.save(resealed, folder / "other_config.pt")
    out["other_config"] = folder / "other_config.pt"
    state = {k: v.clone() for k, v in blob["state_dict"].items()}
    first = next(iter(state))
    state[first] += 1
    torch.save({**blob, "state_dict": state}, folder / "edited.pt")  # fingerprint no longer fits
    out["edited"] = folder / "edited.pt"
    return out


@pytest.fixture(scope="module")
def bad_models(service_model_path, tmp_path_factory) -> dict[str, Path]:
    return _bad_model_files(service_model_path, tmp_path_factory.mktemp("bad-models"))


REASONS = {
    "truncated": "unreadable or corrupt",
    "foreign": "is not a unispector-model/1 file",
    "other_config": "does not match its config",
    "edited": "fails its fingerprint check",
}


def test_corrupt_or_foreign_model_file_stops_the_process(bad_models, tmp_path):
    """`python -m service` on a truncated file and on another network's file: the process exits
    non-zero without ever serving, and its log names the file, the reason and what to do."""
    files = bad_models
    procs = {}
    for name in ("truncated", "foreign"):
        env = {
            "INSPECT_MODEL_PATH": str(files[name]),
            "REDIS_URL": "redis://127.0.0.1:9/0",  # never reached: the model comes first
            "INSPECT_LOG_FORMAT": "text",
            "INSPECT_THREADS": "1",
        }
        procs[name] = ServiceProcess(env, tmp_path).start()
    for name, proc in procs.items():
        try:
            code = proc.proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.proc.kill()
            pytest.fail(f"{name}: still running with a bad model file:\n{proc.log_tail()}")
        log = proc.log_path.read_text(errors="replace")
        assert code != 0, name
        assert "Uvicorn running" not in log, name
        lines = [ln for ln in log.splitlines() if "ERROR service.state: cannot start" in ln]
        line = lines[0] if lines else ""
        assert str(files[name]) in line, f"{name}: no clear start-up error:\n{log[-2000:]}"
        assert REASONS[name] in line and "INSPECT_MODEL_PATH" in line, line


def test_model_file_of_another_configuration_or_edited_is_refused(bad_models):
    """The same start-up path in-process for the subtler cases: weights of one configuration
    under another's config (a torch size mismatch before the fix), and edited weights. (There is
    no model reload: a restart is the only way to change the model, so a refused file never
    replaces a serving one.)"""
    import asyncio

    from service.metrics import Metrics
    from service.settings import ServiceSettings
    from service.state import ModelFileError, start

    files = bad_models
    for name in ("other_config", "edited"):
        settings = ServiceSettings(model_path=files[name], threads=1)
        with pytest.raises(ModelFileError) as info:
            asyncio.run(start(settings, Metrics()))
        message = str(info.value)
        assert message.startswith("cannot start") and str(files[name]) in message
        assert REASONS[name] in message and "INSPECT_MODEL_PATH" in message, message


def test_missing_model_file_is_refused_by_the_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
    missing = tmp_path / "nope.pt"
    env.update({"PYTHONPATH": str(REPO), "INSPECT_MODEL_PATH": str(missing)})
    out = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and f"INSPECT_MODEL_PATH {missing} is not a file" in out.stderr


def test_corpus_images_are_well_formed_test_data():
    """The corpus itself: unique names, bombs tiny on the wire, valid cases decodable."""
    from models.decode import decode_image

    cases = corpus(MAX_PIXELS)
    assert len({c.name for c in cases}) == len(cases)
    for case in cases:
        if "bomb" in case.name:
            assert len(case.data) < 64 * 1024
        if case.valid:
            assert decode_image(case.data, max_pixels=MAX_PIXELS).rgb.ndim == 3
