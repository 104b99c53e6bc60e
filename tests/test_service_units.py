"""Unit tests of the service's parts: image decoding and limits, mask encodings, API keys,
settings, the micro-batcher and the prototype cache (no model, no server)."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from models.rle import decode_rle, encode_rle
from prompt_store.errors import NotFound, StoreUnavailable
from prompt_store.records import PrototypeSnapshot, StoreEvent
from service.batching import MicroBatcher
from service.errors import Problem
from service.images import (
    decode_image,
    decode_mask,
    encode_polygons,
    grey_level_bins,
    grey_level_spread,
    heatmap,
    regions_from_mask,
    thumbnail,
)
from service.prototypes import PrototypeCache, StoreHealth
from service.security import KeyRing, Role, presented_key
from service.settings import ServiceSettings
from service.store import store_settings

MB = 1024 * 1024


def _rgb(h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _enc(ext: str, arr: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, arr, params or [])
    assert ok
    return buf.tobytes()


# ---- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "make", "depth"),
    [
        (".png", lambda bgr: bgr, 8),
        (".png", lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 8),
        (".png", lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, 16),
        (".png", lambda bgr: bgr.astype(np.uint16) * 257, 16),
        (".png", lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), 8),
        (".bmp", lambda bgr: bgr, 8),
        (".tiff", lambda bgr: bgr, 8),
        (".tiff", lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, 16),
        (".jpg", lambda bgr: bgr, 8),
    ],
)
def test_decode_formats_to_uint8_rgb(ext, make, depth):
    rgb = _rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    decoded = decode_image(_enc(ext, make(bgr)), MB, 10**6)
    assert decoded.rgb.shape == (40, 60, 3) and decoded.rgb.dtype == np.uint8
    assert decoded.bit_depth == depth
    if ext != ".jpg":
        arr = make(bgr)
        if arr.ndim == 3 and arr.shape[2] >= 3 and arr.dtype == np.uint8:
            assert np.array_equal(decoded.rgb, rgb)  # channel order is RGB
        if arr.ndim == 2:
            grey = (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else arr
            assert np.array_equal(decoded.rgb[..., 0], grey)


def _problem(fn, *args) -> Problem:
    with pytest.raises(Problem) as info:
        fn(*args)
    return info.value


def test_decode_refusals_are_clear_problems():
    png = _enc(".png", _rgb())
    jpg = _enc(".jpg", _rgb(200, 200))
    assert _problem(decode_image, b"", MB, 10**6).status == 422
    assert _problem(decode_image, b"hello world", MB, 10**6).status == 415
    assert _problem(decode_image, png, 100, 10**6).status == 413  # bytes, before decoding
    assert _problem(decode_image, png, MB, 1000).status == 413  # pixels, from the header
    assert _problem(decode_image, png[: len(png) // 2], MB, 10**6).status == 400
    assert _problem(decode_image, jpg[: len(jpg) - 300], MB, 10**6).status == 400
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    assert _problem(decode_image, gif.getvalue(), MB, 10**6).kind == "unsupported-image-format"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels but carries almost no data (a bomb's
    header: refusing it must not need the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header():
    bomb = _png_header_only(30000, 30000)  # 900 Mpx claimed in 100 bytes
    problem = _problem(decode_image, bomb, 8 * MB, 40_000_000)
    assert problem.status == 413 and "pixels" in problem.detail
    # above PIL's own bomb guard too (2 x 89 Mpx), whatever our limit says
    assert _problem(decode_image, _png_header_only(20000, 20000), 8 * MB, 10**9).status == 413


def test_zero_size_image_is_a_4xx():
    problem = _problem(decode_image, _png_header_only(0, 16), MB, 10**6)
    assert 400 <= problem.status < 500


def test_mask_regions_rle_and_polygons():
    mask = np.zeros((50, 80), bool)
    mask[5:15, 10:30] = True
    mask[30:45, 60:70] = True
    mask[48, 2] = True  # a single stray pixel: ignored below min_pixels
    regions = regions_from_mask(mask, min_pixels=4)
    boxes = sorted(tuple(b.tolist()) for b, _ in regions)
    assert boxes == [(10.0, 5.0, 30.0, 15.0), (60.0, 30.0, 70.0, 45.0)]  # x1/y1 exclusive
    for _, comp in regions:
        assert np.array_equal(decode_rle(encode_rle(comp)), comp)
        assert isinstance(encode_rle(comp)["counts"], str)
        (poly,) = encode_polygons(comp)
        xs, ys = poly[0::2], poly[1::2]
        ys_in, xs_in = np.nonzero(comp)
        assert min(xs) == xs_in.min() and max(xs) == xs_in.max()
        assert min(ys) == ys_in.min() and max(ys) == ys_in.max()
    png = _enc(".png", mask.astype(np.uint8) * 255)
    assert np.array_equal(decode_mask(png, 80, 50, MB), mask)
    assert _problem(decode_mask, png, 81, 50, MB).kind == "mask-size-mismatch"


def test_a_mask_saved_as_jpeg_or_in_colour_still_registers_but_a_photo_or_full_mask_does_not():
    mask = np.zeros((60, 80), np.uint8)
    cv2.ellipse(mask, (40, 30), (22, 9), 30, 0, 360, 255, -1)
    cv2.line(mask, (5, 55), (30, 45), 255, 2)
    truth = mask > 0
    uploads = {
        "jpeg q75": _enc(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 75]),
        "jpeg q95": _enc(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 95]),
        "red on black": _enc(".png", np.dstack([mask * 0, mask * 0, mask])),
        "16-bit label map": _enc(".png", truth.astype(np.uint16) * 1000),
        "0 / 1": _enc(".png", truth.astype(np.uint8)),
    }
    for name, upload in uploads.items():
        got = decode_mask(upload, 80, 60, MB)
        iou = (got & truth).sum() / (got | truth).sum()
        assert iou > 0.9, name  # JPEG's ringing around the edges is not part of the defect
        assert len(regions_from_mask(got, min_pixels=4)) == 2, name  # no stray exemplars
    photo = _enc(".jpg", _rgb(60, 80))
    assert _problem(decode_mask, photo, 80, 60, MB).kind == "mask-not-binary"
    full = _enc(".png", np.full((60, 80), 255, np.uint8))
    assert _problem(decode_mask, full, 80, 60, MB).kind == "mask-covers-image"
    inverted = np.full((60, 80), 255, np.uint8)
    inverted[20:26, 30:40] = 0  # a small defect drawn black on white
    assert _problem(decode_mask, _enc(".png", inverted), 80, 60, MB).kind == "mask-covers-image"


@settings(max_examples=50, deadline=None)
@given(
    levels=st.tuples(st.integers(0, 255), st.integers(0, 255)),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_a_two_level_image_has_no_grey_level_spread(levels, share, seed):
    """Whatever its two levels and their proportions, a two-level image is a mask, not a photo."""
    pick = np.random.default_rng(seed).random((24, 32)) < share
    grey = np.where(pick, levels[0], levels[1]).astype(np.uint8)
    assert grey_level_spread(grey_level_bins(grey)) == 0.0


def test_heatmap_is_the_clipped_score_weighted_sum_of_masks():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    heat = heatmap(np.array([0.7, 0.6], np.float32), masks, 4, 4)
    assert heat[0, 0] == pytest.approx(0.7)
    assert heat[1, 0] == pytest.approx(1.0)  # 0.7 + 0.6 clipped
    assert heat[2, 0] == pytest.approx(0.6) and heat[3, 0] == 0


def test_thumbnail_is_a_small_png_of_the_region():
    png = thumbnail(_rgb(400, 600), (100.0, 100.0, 300.0, 150.0), None, 64)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and max(image.size) == 64


# ---- security and settings ------------------------------------------------------------------


def test_keyring_roles():
    ring = KeyRing(
        [pydantic_secret("camera-key-0123456789")], [pydantic_secret("admin-key-0123456789")]
    )
    assert ring.role_of("camera-key-0123456789") is Role.INSPECT
    assert ring.role_of("admin-key-0123456789") is Role.ADMIN
    assert ring.role_of("camera-key-012345678") is None and ring.role_of(None) is None
    assert ring.require("admin-key-0123456789", Role.INSPECT) is Role.ADMIN  # admin may inspect
    assert _problem(ring.require, "camera-key-0123456789", Role.ADMIN).status == 403
    assert _problem(ring.require, "bad", Role.INSPECT).status == 401
    assert _problem(ring.require, None, Role.INSPECT).status == 401
    open_ring = KeyRing([], [])
    assert open_ring.open_mode and open_ring.require(None, Role.ADMIN) is Role.ADMIN
    assert presented_key(None, "Bearer abc") == "abc"
    assert presented_key("xyz", "Bearer abc") == "xyz"
    assert presented_key(None, "Basic abc") is None


def pydantic_secret(text: str):
    from pydantic import SecretStr

    return SecretStr(text)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("INSPECT_INSPECT_API_KEYS", "camera-key-0123456789, camera-key-abcdefghij")
    monkeypatch.setenv("INSPECT_ADMIN_API_KEYS", "admin-key-0123456789")
    monkeypatch.setenv("INSPECT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("INSPECT_LOG_LEVEL", "debug")
    s = ServiceSettings()
    assert [k.get_secret_value() for k in s.inspect_api_keys] == [
        "camera-key-0123456789",
        "camera-key-abcdefghij",
    ]
    assert not s.open_mode and s.max_batch_size == 4 and s.log_level == "DEBUG"
    assert "camera-key" not in repr(s)  # keys never printed
    monkeypatch.setenv("INSPECT_ADMIN_API_KEYS", "short")
    with pytest.raises(ValidationError) as info:
        ServiceSettings()
    assert "short" not in str(info.value)
    monkeypatch.delenv("INSPECT_ADMIN_API_KEYS")
    for bad in (("INSPECT_MAX_BATCH_SIZE", "0"), ("INSPECT_QUEUE_SIZE", "-1")):
        monkeypatch.setenv(*bad)
        with pytest.raises(ValidationError):
            ServiceSettings()
        monkeypatch.delenv(bad[0])
    monkeypatch.setenv("INSPECT_MODEL_PATH", "/no/such/model.pt")
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_redis_url_selects_the_store(monkeypatch):
    for name in ("REDIS_URL", "INSPECT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert store_settings(ServiceSettings()) is None  # embedded default store
    monkeypatch.setenv("REDIS_URL", "redis://:pw@db.example:6380/2")
    assert store_settings(ServiceSettings()).url == "redis://:pw@db.example:6380/2"
    monkeypatch.setenv("INSPECT_REDIS_URL", "redis://other:6379/0")
    with pytest.raises(ValueError, match="both set") as info:
        store_settings(ServiceSettings())
    assert "pw" not in str(info.value)
    monkeypatch.delenv("REDIS_URL")
    assert store_settings(ServiceSettings()).url == "redis://other:6379/0"


# ---- micro-batching -------------------------------------------------------------------------


class _Model:
    """Records the batches it was called with; sleeps to simulate work."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, jobs):
        self.calls.append(list(jobs))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return [j * 10 for j in jobs]


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_jobs_share_model_calls_by_key():
    model = _Model()

    async def main():
        b = MicroBatcher(model, max_batch=8, max_wait_s=0.05, queue_size=32)
        await b.start()
        far = time.monotonic() + 10
        arrivals = [b.arrival() for _ in range(6)]
        jobs = [b.submit("a" if i % 3 else "b", i, far, arrivals[i]) for i in range(6)]
        results = await asyncio.gather(*jobs)
        await b.close()
        return results

    assert _run(main()) == [0, 10, 20, 30, 40, 50]
    assert sorted(map(sorted, model.calls)) == [[0, 3], [1, 2, 4, 5]]  # one call per key
    assert all(name.startswith("model") for name in model.threads)  # off the event loop


def test_lone_request_does_not_wait_for_company():
    model = _Model(seconds=0.0)

    async def main():
        b = MicroBatcher(model, max_batch=8, max_wait_s=0.5, queue_size=4)
        await b.start()
        start = time.monotonic()
        with b.arrival() as arrival:
            result = await b.submit("k", 1, time.monotonic() + 5, arrival)
        elapsed = time.monotonic() - start
        await b.close()
        return result, elapsed

    result, elapsed = _run(main())
    assert result == 10 and elapsed < 0.25


def test_full_queue_answers_429_with_retry_after():
    model = _Model(seconds=0.3)

    async def main():
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.0, queue_size=1)
        await b.start()
        far = time.monotonic() + 10
        first = asyncio.create_task(b.submit("k", 1, far))
        await asyncio.sleep(0.05)  # first is running on the model thread
        second = asyncio.create_task(b.submit("k", 2, far))  # waits in the queue
        await asyncio.sleep(0.01)
        with pytest.raises(Problem) as full:
            await b.submit("k", 3, far)  # no room: refused at once, never queued
        results = await asyncio.gather(first, second)
        await b.close()
        return full.value, results

    full, results = _run(main())
    assert full.status == 429 and int(full.headers["Retry-After"]) >= 1
    assert results == [10, 20] and model.calls == [[1], [2]]


def test_deadline_passes_while_queued():
    model = _Model(seconds=0.3)

    async def main():
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.0, queue_size=4)
        await b.start()
        first = asyncio.create_task(b.submit("k", 1, time.monotonic() + 10))
        await asyncio.sleep(0.05)
        with pytest.raises(Problem) as late:
            await b.submit("k", 2, time.monotonic() + 0.1)  # cannot start before 0.25 s
        assert await first == 10
        await b.close()
        return late.value, model.calls

    late, calls = _run(main())
    assert late.status == 503 and late.kind == "deadline-exceeded"
    assert late.headers["Retry-After"]
    assert calls == [[1]]  # the abandoned job never reached the model


def test_queue_longer_than_the_deadline_answers_429_at_once():
    """A job that cannot start before its deadline (the queued batches take longer) is refused
    with 429 at submit, not held until a 503: overload answers stay fast."""
    model = _Model(seconds=0.3)

    async def main():
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.0, queue_size=8)
        await b.start()
        b._batch_ewma_s = 0.3  # as measured after a few calls
        far = time.monotonic() + 10
        running = asyncio.create_task(b.submit("k", 1, far))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.submit("k", i, far)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(Problem) as refused:
            await b.submit("k", 4, time.monotonic() + 0.5)  # 2 queued x 0.3 s > 0.5 s
        waited = time.monotonic() - started
        fits = await b.submit("k", 5, time.monotonic() + 5)  # 0.6 s of queue fits in 5 s
        results = await asyncio.gather(running, *queued)
        await b.close()
        return refused.value, waited, results, fits

    refused, waited, results, fits = _run(main())
    assert refused.status == 429 and refused.kind == "overloaded" and waited < 0.05
    assert int(refused.headers["Retry-After"]) >= 1
    assert results == [10, 20, 30] and fits == 50


def test_close_drains_queued_jobs_and_refuses_new_ones():
    model = _Model(seconds=0.05)

    async def main():
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.0, queue_size=8)
        await b.start()
        far = time.monotonic() + 10
        tasks = [asyncio.create_task(b.submit("k", i, far)) for i in range(4)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(b.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Problem) as refused:
            await b.submit("k", 9, far)
        results = await asyncio.gather(*tasks)
        await closing
        return results, refused.value

    results, refused = _run(main())
    assert results == [0, 10, 20, 30] and refused.status == 503


# ---- prototype cache ------------------------------------------------------------------------


class _Store:
    def __init__(self) -> None:
        self.version = 1
        self.up = True
        self.fetches = 0

    def fetch_prototypes(self, ns: str, fingerprint: str) -> PrototypeSnapshot:
        self.fetches += 1
        if not self.up:
            raise StoreUnavailable("down")
        if ns == "missing":
            raise NotFound("no such namespace")
        matrix = np.eye(2, 4, dtype=np.float32)
        return PrototypeSnapshot(ns, self.version, fingerprint, ["a", "b"], matrix, [1, 1])


def test_prototype_cache_refreshes_on_events_and_survives_outages():
    store = _Store()
    health = StoreHealth()
    cache = PrototypeCache(store, "fp", health)  # type: ignore[arg-type]
    assert cache.get("ns").snapshot.version == 1
    assert cache.get("ns").snapshot.version == 1 and store.fetches == 1  # cached

    store.version = 2
    cache.on_event(StoreEvent("other", 5, "exemplar_added"))  # another namespace: no refetch
    assert cache.get("ns").snapshot.version == 1
    cache.on_event(StoreEvent("ns", 2, "exemplar_added"))
    assert cache.get("ns").snapshot.version == 2 and store.fetches == 2

    store.up = False
    cache.invalidate("ns", 3)  # a write this replica made; the store then went away
    got = cache.get("ns")
    assert got.degraded and got.snapshot.version == 2  # last snapshot keeps serving
    assert not health.up
    fetches = store.fetches
    assert cache.get("ns").degraded and store.fetches == fetches  # no Redis call while down
    assert _problem(cache.get, "never-loaded").status == 503

    store.up, store.version = True, 3  # back, but the health check has not noticed yet
    assert not cache.get("first-use").degraded  # a namespace never loaded is tried anyway
    assert health.up  # and that success ends the outage
    cache.invalidate_all()
    got = cache.get("ns")
    assert not got.degraded and got.snapshot.version == 3

    cache.on_event(StoreEvent(None, -1, "resync"))
    store.version = 4
    assert cache.get("ns").snapshot.version == 4
    with pytest.raises(NotFound):
        cache.get("missing")


# ---- anomaly memories: stale-while-revalidate ----------------------------------------------


class _ReferenceStore:
    def __init__(self) -> None:
        self.version = 1

    def snapshot(self, ns: str):
        from prompt_store.references import AnomalySettings, ReferenceSnapshot

        return ReferenceSnapshot(ns, self.version, "fp", "feat", 4, {}, AnomalySettings())


def _gated_memories(store: _ReferenceStore):
    """AnomalyMemories whose rebuild blocks on `gate` (a slow recalibration) and can fail."""
    from models.anomaly.memory import MemoryBank
    from service.anomaly import AnomalyMemories, AnomalyParams, NamespaceMemory

    params = AnomalyParams(10, 2, 1.0, 0.0, 0.0, 0.5, True)

    class Gated(AnomalyMemories):
        gate = threading.Event()
        started = threading.Event()
        fail = False
        rebuilds = 0

        def _rebuild(self, snap, old):  # type: ignore[no-untyped-def]
            self.rebuilds += 1
            self.started.set()
            assert self.gate.wait(5), "gate never opened"
            if self.fail:
                raise RuntimeError("boom")
            bank = MemoryBank.build([], params.max_patches)
            return NamespaceMemory(
                snap.namespace, snap.version, "ok", bank, 0, 1.0, 0, snap.settings, params
            )

    memories = Gated(store, "feat", 4, StoreHealth(), params, max_namespaces=4)  # type: ignore[arg-type]
    memories.gate.set()
    return memories


def test_anomaly_memory_is_refreshed_in_the_background_while_the_old_one_serves(caplog):
    store = _ReferenceStore()
    memories = _gated_memories(store)
    one = memories.get("ns").memory  # first use: built here, synchronously
    assert one is not None and one.version == 1 and memories.rebuilds == 1

    memories.gate.clear()
    memories.started.clear()
    store.version = 2
    memories.on_event(StoreEvent("ns", 2, "reference_added"))
    assert memories.started.wait(5)  # the worker is inside the rebuild, held at the gate
    for _ in range(3):  # returned at once, the gate still closed: no inspection waits
        assert memories.get("ns").memory is one and memories.serve("ns").memory is one
    memories.on_event(StoreEvent("ns", 2, "reference_added"))  # during the rebuild: one more run
    memories.gate.set()
    two = memories.wait_current("ns", 5).memory
    assert two.version == 2 and memories.get("ns").memory is two
    assert memories.rebuilds == 3  # first use + the refresh + one coalesced rerun

    memories.fail = True
    memories.invalidate("ns", 3)
    with caplog.at_level("ERROR", logger="service.anomaly"):
        assert memories.wait_current("ns", 5).memory is two  # failed: the old one keeps serving
    assert memories.get("ns").memory is two and memories.rebuilds == 4  # no retry at once
    failed = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert failed[0].fields == {"namespace": "ns", "version": 2, "error": "RuntimeError: boom"}
    memories.close()
    assert not memories.refresh_soon("ns")  # closed: nothing is scheduled any more


@pytest.mark.integration
def test_no_redis_url_starts_the_embedded_persistent_store(monkeypatch, tmp_path):
    import shutil

    from service.store import open_store

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    for name in ("REDIS_URL", "INSPECT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    handle = open_store(ServiceSettings(redis_data_dir=tmp_path / "redis"))
    try:
        assert handle.embedded is not None and handle.embedded.running
        assert "embedded" in handle.description
        handle.store.create_namespace("embedded-check", "fp-1", 4)
        assert (tmp_path / "redis" / "appendonlydir").exists()  # AOF persistence on
    finally:
        handle.close()
    assert not handle.embedded.running
    again = open_store(ServiceSettings(redis_data_dir=tmp_path / "redis"))
    try:  # a restart finds what was written
        assert again.store.namespaces() == ["embedded-check"]
    finally:
        again.close()


class _Clock:
    """A virtual perf_counter: the fake model advances it, so the timings are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _BatchModel:
    """A fake predictor whose per-call cost is `fixed + per_image * n` seconds of `clock`."""

    embed_dim = 4
    size = 32

    def __init__(self, clock: _Clock, fixed: float, per_image: float) -> None:
        self.clock, self.fixed, self.per_image = clock, fixed, per_image

    def detect(self, images, prototypes, score_threshold=None, max_detections=100):
        self.clock.now += self.fixed + self.per_image * len(images)
        return []

    def release_unused_memory(self) -> None:
        pass


def test_batch_size_calibration_picks_the_fastest_per_image(monkeypatch):
    import service.inference as inference

    clock = _Clock()
    monkeypatch.setattr(inference, "time", clock)  # deterministic under any machine load
    # a big fixed cost per call: bigger batches are cheaper per image
    model = _BatchModel(clock, 0.02, 0.002)
    best, rates = inference.Inspector(model).best_batch_size(8, seconds=0.05, rounds=1)
    assert best == 8 and sorted(rates) == [1, 2, 4, 8]
    # no fixed cost: batching buys nothing, stay at 1
    model = _BatchModel(clock, 0.0, 0.004)
    best, _ = inference.Inspector(model).best_batch_size(6, seconds=0.05, rounds=1)
    assert best == 1


class _SizeAwareModel:
    """A fake predictor (no network) that reports one 40 x 40 px detection per image, scored 0.8
    times the size prior the way models.postprocess applies it, so the test sees what reaches it."""

    embed_dim = 4
    size = 32

    def detect(
        self,
        images,
        prototypes,
        score_threshold=None,
        max_detections=100,
        with_masks=True,
        class_sides=None,
        class_crops=None,
        proposal_classes=None,
        detection_weights=None,
    ):
        from models.postprocess import Detections
        from models.size_prior import size_factors

        box = np.array([[10.0, 10.0, 50.0, 50.0]], dtype=np.float32)
        factor = size_factors(box, class_sides, 0.7)[0, 0] if class_sides is not None else 1.0
        return [
            Detections(np.zeros(1, np.int64), np.array([0.8 * factor], np.float32), box, None)
            for _ in images
        ]


def test_an_inspection_passes_the_exemplar_sizes_of_its_snapshot_to_the_predictor():
    from models.size_prior import log_sides
    from service.inference import InspectJob, Inspector
    from service.schemas import MaskFormat

    def job(sides):
        return InspectJob(
            image=np.zeros((64, 64, 3), np.uint8),
            prototypes=np.ones((1, 4), np.float32),
            class_names=("pit",),
            thresholds=np.array([0.5], np.float32),
            max_detections=10,
            mask_format=MaskFormat.none,
            heatmap=False,
            class_sides=sides,
        )

    inspector = Inspector(_SizeAwareModel())
    taught_small = (log_sides(np.array([[0.0, 0.0, 5.0, 5.0]])),)
    taught_same = (log_sides(np.array([[0.0, 0.0, 40.0, 40.0]])),)
    assert inspector.run_batch([job(taught_same)])[0].rejects
    assert not inspector.run_batch([job(taught_small)])[0].rejects  # 8x smaller: below 0.5


def test_self_check_judges_each_exemplar_by_its_own_class_at_iou_half():
    """Only detections of the exemplar's class count; IoU 0.5 is found, the threshold is caught."""
    from prompt_store.records import ExemplarRecord, Region
    from service.inference import InspectOutcome
    from service.routes.self_check import _hits, _verdict

    def rec(eid: str, box: tuple[float, float, float, float]) -> ExemplarRecord:
        return ExemplarRecord(eid, "dent", "0" * 64, Region(box, None), "qa", "", "fp")

    exemplars = [rec("a", (0, 0, 10, 10)), rec("b", (50, 50, 60, 60)), rec("c", (80, 0, 90, 10))]
    detections = [
        {"class_name": "dent", "score": 0.9, "box": [0, 0, 10, 12]},  # covers a
        {"class_name": "dent", "score": 0.05, "box": [50, 50, 60, 60]},  # covers b, weakly
        {"class_name": "scratch", "score": 0.99, "box": [80, 0, 90, 10]},  # c, the wrong name
    ]
    outcome = InspectOutcome(detections, 0.99, None, {})
    a, b, c = _hits(outcome, "dent", exemplars, threshold=0.3)
    assert (a.found, a.caught, a.score) == (True, True, 0.9)
    assert (b.found, b.caught, b.best_iou) == (True, False, 1.0)
    assert (c.found, c.caught, c.score, c.best_iou) == (False, False, None, 0.0)
    nothing = _hits(InspectOutcome([], 0.0, None, {}), "dent", exemplars, threshold=0.3)
    assert [h.found for h in nothing] == [False, False, False]
    assert _verdict(0, 0, 3)[0] == "not-outlined"
    assert _verdict(1, 1, 3)[0] == "partly-outlined"
    verdict, advice = _verdict(2, 1, 3)
    assert verdict == "outlined" and "lower threshold" in advice
