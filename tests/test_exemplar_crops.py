"""The service's exemplar crops (service/exemplar_crops.py) over a real Redis store: each class
gets the grey pixels of its largest exemplars, cut once per snapshot, and an exemplar whose image
cannot be read is left out instead of failing the inspection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prompt_store.records import Region
from prompt_store.redis_store import RedisPromptStore
from service.exemplar_crops import ExemplarCropCache
from tests.test_prompt_store import FP_A, NS, vec

pytestmark = pytest.mark.integration


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    rgb = np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    return data.tobytes(), rgb


class CountingStore(RedisPromptStore):
    """The real store, counting the prompt images it is asked for."""

    reads = 0

    def get_source_image(self, ns: str, img_hash: str) -> bytes:
        CountingStore.reads += 1
        return super().get_source_image(ns, img_hash)


def test_each_class_gets_its_exemplars_pixels_cut_once_per_image(redis_store):
    store = CountingStore(redis_store.client)
    CountingStore.reads = 0
    png, rgb = _png(1)
    boxes = {"scratch": (10.0, 5.0, 40.0, 25.0), "pit": (50.0, 30.0, 70.0, 50.0)}
    for i, (cls, b) in enumerate(boxes.items()):
        store.add_exemplar(NS, cls, vec(i), png, Region(box=b), "qa", fingerprint=FP_A)
    cache = ExemplarCropCache(store, 1 << 20, 1 << 20)
    snap = store.fetch_prototypes(NS, FP_A)
    crops = cache.crops(snap, [0, 1])  # classes in name order: pit, scratch
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    (pit,), (scratch,) = crops
    assert np.array_equal(pit.pixels, grey[30:50, 50:70])
    assert np.array_equal(scratch.pixels, grey[5:25, 10:40])
    assert CountingStore.reads == 1  # one image holds both exemplars

    png2, _ = _png(2)
    store.add_exemplar(NS, "pit", vec(9), png2, Region(box=(0, 0, 30, 30)), "qa", fingerprint=FP_A)
    new = store.fetch_prototypes(NS, FP_A)
    pit_crops = cache.crops(new, [0])[0]
    assert [c.pixels.shape for c in pit_crops] == [(30, 30), (20, 20)]  # largest first
    assert CountingStore.reads == 2  # the unchanged exemplars were carried over


def test_an_exemplar_whose_image_is_gone_is_left_out(redis_store):
    png, _ = _png(3)
    redis_store.add_exemplar(
        NS, "dent", vec(1), png, Region(box=(10, 10, 30, 30)), "qa", fingerprint=FP_A
    )
    snap = redis_store.fetch_prototypes(NS, FP_A)
    redis_store.client.delete(f"inspect:ns:{{{NS}}}:img:{snap.exemplar_images[0][0]}")
    cache = ExemplarCropCache(redis_store, 1 << 20, 1 << 20)
    assert cache.crops(snap, [0]) == ((),)  # inspected without the check, not refused
