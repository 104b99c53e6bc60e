"""The service's outline gate (service/outline_gate.py) on a busy line: concurrent inspections of a
new prompt version share one outline computation, and a store that cannot give the prompt images
costs one computation per `RETRY_S`, not one per inspection."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

import service.outline_gate as gate_module
from models.postprocess import Detections
from prompt_store.records import PrototypeSnapshot
from service.outline_gate import RETRY_S, OutlineGate


class _Store:
    """Prompt images by hash; a hash it does not hold cannot be read (an outage, an image gone)."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images

    def get_source_image(self, ns: str, image_hash: str) -> bytes:
        return self.images[image_hash]


class _FindsTheExemplar:
    """A predictor that finds class 0's exemplar box exactly and class 1 nowhere."""

    def detect(self, images, prototypes, score_threshold, **kwargs):
        box = np.array([[10, 10, 30, 30]], np.float32)
        det = Detections(np.zeros(1, np.int64), np.array([0.9], np.float32), box, None)
        return [det for _ in images]


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _snapshot(version: int = 1) -> PrototypeSnapshot:
    box = np.array([[10, 10, 30, 30]], np.float32)
    return PrototypeSnapshot(
        namespace="line",
        version=version,
        fingerprint="f",
        class_names=["found", "missed"],
        matrix=np.eye(2, 4, dtype=np.float32),
        counts=[1, 1],
        exemplar_boxes=(box, box),
        exemplar_images=(("a",), ("b",)),
    )


async def _on_this_thread(fn, *args):
    """Stands in for the batcher's `run_exclusive` where no model thread is running."""
    return fn(*args)


def _decide(gate: OutlineGate) -> np.ndarray:
    return asyncio.run(gate.compute(_on_this_thread, _FindsTheExemplar(), _snapshot(), None))


def _gate(store: _Store) -> OutlineGate:
    return OutlineGate(store, 0.2, 0.4, 1 << 20, 1 << 20)  # type: ignore[arg-type]


def test_outlines_decide_proposals_and_weights_per_class():
    gate = _gate(_Store({"a": _png(), "b": _png()}))
    outlines = _decide(gate)
    assert outlines.tolist() == pytest.approx([1.0, 0.0])
    assert gate.classes(outlines, [1, 0]) == (True, False)
    assert gate.weights(outlines, [1, 0]) == pytest.approx((0.0, 1.0))
    assert gate.cached(_snapshot()) is outlines, "kept for the version"
    assert gate.cached(_snapshot(2)) is None, "a new prompt version is decided again"
    one_by_one = [gate.class_outline(_FindsTheExemplar(), _snapshot(2), None, r) for r in (0, 1)]
    assert one_by_one == [(1.0, True), (0.0, True)], "a class at a time, as the service runs it"
    assert gate.keep(_snapshot(2), one_by_one, 0.1).tolist() == outlines.tolist()
    assert gate.cached(_snapshot(2)) is not None


def test_concurrent_inspections_share_one_computation():
    gate = _gate(_Store({}))
    started = 0

    async def compute() -> np.ndarray:
        nonlocal started
        started += 1
        await asyncio.sleep(0.05)
        return np.ones(2, np.float32)

    async def many() -> list[np.ndarray]:
        tasks = [gate.flight(_snapshot(), compute) for _ in range(8)]
        assert len({id(t) for t in tasks}) == 1
        return await asyncio.gather(*tasks)

    results = asyncio.run(many())
    assert started == 1 and len(results) == 8


def test_a_failed_computation_is_not_retried_on_every_inspection(caplog):
    gate = _gate(_Store({}))

    async def broken() -> np.ndarray:
        raise ConnectionError("store down")

    async def fail_once() -> None:
        task = gate.flight(_snapshot(), broken)
        with pytest.raises(ConnectionError):
            await task
        await asyncio.sleep(0)  # the done callback runs

    asyncio.run(fail_once())
    assert "class outlines not computed" in caplog.text
    kept = gate.cached(_snapshot())
    assert kept is not None and kept.tolist() == [1.0, 1.0], "every class counts as outlined"
    assert gate.weights(kept, [0, 1]) == (1.0, 1.0)


def test_outlines_with_a_prompt_image_missing_are_computed_again_later(monkeypatch):
    store = _Store({"a": _png()})  # class 1's image cannot be read
    gate = _gate(store)
    outlines = _decide(gate)
    assert outlines.tolist() == pytest.approx([1.0, 1.0]), "a class without an image: outlined"
    assert gate.cached(_snapshot()) is outlines, "used meanwhile"
    now = gate_module.time.monotonic()
    monkeypatch.setattr(gate_module.time, "monotonic", lambda: now + RETRY_S + 1)
    assert gate.cached(_snapshot()) is None, "and computed again once RETRY_S has passed"


def test_shutdown_cancels_a_computation_still_running():
    gate = _gate(_Store({}))

    async def forever() -> np.ndarray:
        await asyncio.sleep(3600)
        return np.ones(2, np.float32)

    async def run() -> asyncio.Task[np.ndarray]:
        task = gate.flight(_snapshot(), forever)
        await asyncio.sleep(0)
        await gate.close()
        return task

    task = asyncio.run(run())
    assert task.cancelled()
    assert gate.cached(_snapshot()) is None, "nothing decided, nothing kept"
