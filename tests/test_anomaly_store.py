"""Reference images of the anomaly mode in the prompt store, against a real redis-server.

Same rules as exemplars: atomic, versioned writes with events, idempotent registration by image
content, model and feature fingerprints enforced, bad input refused with nothing changed, and
everything kept across a restart of a persistent server.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt_store import InvalidInput, LocalRedis, ModelMismatch, NotFound, RedisPromptStore
from prompt_store.records import StoreEvent
from prompt_store.references import (
    AnomalySettings,
    NewReference,
    patches_from_bytes,
    patches_to_bytes,
    reference_id,
)

FP = "a" * 64
FEAT = "f" * 64
DIM = 8
FDIM = 6
NS = "refs-1"

pytestmark = pytest.mark.integration


def ref(i: int, rows: int = 5, dim: int = FDIM) -> NewReference:
    rng = np.random.default_rng(i)
    return NewReference(
        image_bytes=f"image-{i}".encode(),
        width=64,
        height=48,
        patches=rng.standard_normal((rows, dim)).astype(np.float32),
        author="qa",
    )


def add(store: RedisPromptStore, items, ns: str = NS, **kw):
    args = {"fingerprint": FP, "embed_dim": DIM, "feature_fingerprint": FEAT, **kw}
    return store.references.add_references(ns, items, **args)


# ---- pure records ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-60000, 60000, width=32), min_size=3, max_size=3),
        min_size=1,
        max_size=6,
    )
)
def test_patch_bytes_round_trip_as_float16(rows: list[list[float]]) -> None:
    arr = np.asarray(rows, dtype=np.float32)
    raw, n, dim = patches_to_bytes(arr)
    assert (n, dim) == arr.shape and len(raw) == 2 * arr.size
    back = patches_from_bytes(raw, dim)
    assert back.dtype == np.float16
    np.testing.assert_array_equal(back, arr.astype(np.float16))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 4)),
        np.zeros(4),
        np.full((2, 2), np.nan),
        np.full((2, 2), 1e6),  # overflows float16
        np.array([["a", "b"]]),
    ],
)
def test_bad_patches_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInput):
        patches_to_bytes(bad)


@pytest.mark.parametrize(
    "kw",
    [
        {"threshold": 0},
        {"threshold": -1.0},
        {"threshold": float("inf")},
        {"threshold": True},
        {"min_region_fraction": 1.0},
        {"min_region_fraction": -0.1},
        {"unknown_rejects": "yes"},
    ],
)
def test_bad_anomaly_settings_are_refused(kw: dict) -> None:
    with pytest.raises(InvalidInput):
        AnomalySettings(**kw)


def test_anomaly_settings_round_trip_through_hash_fields() -> None:
    for s in (AnomalySettings(), AnomalySettings(0.25, 0.01, False), AnomalySettings(3.0)):
        assert AnomalySettings.from_fields(s.to_fields()) == s


def test_reference_id_is_content_addressed() -> None:
    assert reference_id("0" * 64) == reference_id("0" * 64)
    assert reference_id("0" * 64) != reference_id("1" * 64)
    assert len(reference_id("0" * 64)) == 32


# ---- against Redis -----------------------------------------------------------------------------


def test_register_list_fetch_remove(redis_store: RedisPromptStore) -> None:
    refs = redis_store.references
    events: queue.Queue[StoreEvent] = queue.Queue()
    sub = redis_store.subscribe(events.put, NS)
    try:
        first = add(redis_store, [ref(1), ref(2, rows=3)])
        assert [r.created for r in first] == [True, True]
        assert first[0].version == first[1].version == 1  # one change, one version
        ev = events.get(timeout=5)
        assert (ev.kind, ev.count, ev.version) == ("references_added", 2, 1)
        snap = refs.snapshot(NS)
        assert snap.version == 1 and snap.fingerprint == FP
        assert snap.feature_fingerprint == FEAT and snap.feature_dim == FDIM
        assert sorted(snap.rows.values()) == [3, 5]
        # the namespace exists for the prompts too, bound to the model
        info = redis_store.namespace_info(NS)
        assert (info.fingerprint, info.embed_dim, info.exemplar_count) == (FP, DIM, 0)

        rid = first[0].reference_id
        prefix = refs.fetch_features(NS, {rid: 2}, FDIM)[rid]
        np.testing.assert_array_equal(prefix, ref(1).patches[:2].astype(np.float16))
        listed = refs.list_references(NS)
        assert {r.id for r in listed} == {first[0].reference_id, first[1].reference_id}
        assert all((r.width, r.height, r.author) == (64, 48, "qa") for r in listed)

        version = refs.remove_reference(NS, rid)
        assert version == 2 and events.get(timeout=5).reference_id == rid
        assert set(refs.snapshot(NS).rows) == {first[1].reference_id}
        assert refs.fetch_features(NS, {rid: 2}, FDIM) == {}
        with pytest.raises(NotFound):
            refs.remove_reference(NS, rid)
    finally:
        sub.stop()


def test_registering_the_same_image_twice_is_a_no_op(redis_store: RedisPromptStore) -> None:
    a = add(redis_store, [ref(1)])[0]
    again = add(redis_store, [ref(1), ref(1)])
    assert [r.reference_id for r in again] == [a.reference_id, a.reference_id]
    assert [r.created for r in again] == [False, False]
    assert again[0].version == a.version  # nothing changed: no version bump
    assert len(redis_store.references.snapshot(NS).rows) == 1


def test_other_models_and_extractors_are_refused(redis_store: RedisPromptStore) -> None:
    add(redis_store, [ref(1)])
    before = redis_store.references.snapshot(NS)
    with pytest.raises(ModelMismatch):
        add(redis_store, [ref(2)], fingerprint="b" * 64)
    with pytest.raises(ModelMismatch):
        add(redis_store, [ref(2)], feature_fingerprint="e" * 64)
    with pytest.raises(ModelMismatch):
        add(redis_store, [ref(2, dim=FDIM + 1)])
    assert redis_store.references.snapshot(NS) == before
    # once the last reference is gone, another extractor may start afresh
    redis_store.references.remove_reference(NS, next(iter(before.rows)))
    assert add(redis_store, [ref(3)], feature_fingerprint="e" * 64)[0].created


def test_bad_input_and_limits_change_nothing(redis_store: RedisPromptStore) -> None:
    add(redis_store, [ref(1), ref(2)])
    before = redis_store.references.snapshot(NS)
    bad_items = [
        [],
        [ref(3), NewReference(b"", 4, 4, np.ones((2, FDIM)), "qa")],
        [ref(3), NewReference(b"x", 0, 4, np.ones((2, FDIM)), "qa")],
        [ref(3), NewReference(b"x", 4, 4, np.full((2, FDIM), np.inf), "qa")],
        [ref(3), NewReference(b"x", 4, 4, np.ones((2, FDIM)), " padded ")],
        [ref(3), ref(4, dim=FDIM + 2)],
    ]
    for items in bad_items:
        with pytest.raises(InvalidInput):
            add(redis_store, items)
    with pytest.raises(InvalidInput, match="exceed the limit"):
        add(redis_store, [ref(3), ref(4)], max_references=3)
    with pytest.raises(InvalidInput):
        redis_store.references.remove_reference(NS, "not-an-id")
    assert redis_store.references.snapshot(NS) == before
    assert add(redis_store, [ref(1), ref(3)], max_references=3)[1].created  # exactly at the limit


def test_settings_overrides_are_versioned(redis_store: RedisPromptStore) -> None:
    refs = redis_store.references
    with pytest.raises(NotFound):
        refs.set_settings(NS, AnomalySettings(threshold=2.0))
    add(redis_store, [ref(1)])
    v = refs.set_settings(NS, AnomalySettings(threshold=2.0, unknown_rejects=False))
    snap = refs.snapshot(NS)
    assert snap.version == v == 2
    assert snap.settings == AnomalySettings(threshold=2.0, unknown_rejects=False)
    refs.set_settings(NS, AnomalySettings(min_region_fraction=0.01))  # a PUT: replaces all
    assert refs.snapshot(NS).settings == AnomalySettings(min_region_fraction=0.01)


def test_deleting_the_namespace_removes_its_references(redis_store: RedisPromptStore) -> None:
    add(redis_store, [ref(1), ref(2)])
    redis_store.references.set_settings(NS, AnomalySettings(threshold=1.0))
    redis_store.delete_namespace(NS)
    assert [k for k in redis_store.client.scan_iter(match=f"inspect:ns:{{{NS}}}:*")] == [
        f"inspect:ns:{{{NS}}}:version".encode()
    ]
    with pytest.raises(NotFound):
        redis_store.references.snapshot(NS)


def test_references_survive_a_restart_and_stay_idempotent(tmp_path: Path) -> None:
    server = LocalRedis(data_dir=tmp_path / "redis").start()
    try:
        store = RedisPromptStore.from_url(server.url, retries=2, retry_backoff_base=0.01)
        first = add(store, [ref(i) for i in range(4)])
        before = store.references.snapshot(NS)
        feats = store.references.fetch_features(NS, before.rows, FDIM)
        server.kill()  # SIGKILL: no shutdown work, the AOF alone must hold everything
        server.start()
        after = store.references.snapshot(NS)
        assert after == before
        again = store.references.fetch_features(NS, after.rows, FDIM)
        assert {k: v.tobytes() for k, v in again.items()} == {
            k: v.tobytes() for k, v in feats.items()
        }
        repeat = add(store, [ref(i) for i in range(4)])
        assert [r.reference_id for r in repeat] == [r.reference_id for r in first]
        assert not any(r.created for r in repeat)
        assert store.references.snapshot(NS).version == before.version
        store.close()
    finally:
        server.stop()


def test_offline_job_registers_resumes_and_matches_the_api_records(
    redis_store: RedisPromptStore, tmp_path: Path
) -> None:
    import cv2

    from models.anomaly.features import PatchFeatureExtractor
    from models.anomaly.registration import find_images, register_references
    from tests.anomaly_samples import good_part

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"good{i}.png"), good_part(i))
    (tmp_path / "notes.txt").write_text("not an image")
    files = find_images([tmp_path], [".png"])
    assert [f.name for f in files] == ["good0.png", "good1.png", "good2.png"]
    extractor = PatchFeatureExtractor.imagenet()

    def run(**kw):
        return register_references(
            files,
            NS,
            redis_store,
            extractor,
            FP,
            DIM,
            per_reference=50,
            max_references=100,
            progress=False,
            **kw,
        )

    dry = run(dry_run=True)
    assert dry.written == 3 and NS not in redis_store.namespaces()
    first = run()
    assert (first.written, first.skipped) == (3, 0)
    again = run()  # resumes: everything is stored already, nothing is computed or written
    assert (again.written, again.skipped) == (0, 3)
    snap = redis_store.references.snapshot(NS)
    assert snap.version == first.version and set(snap.rows.values()) == {50}
    assert snap.feature_fingerprint == extractor.fingerprint


def test_service_memory_is_bounded_and_refreshed_incrementally(
    redis_store: RedisPromptStore,
) -> None:
    from service.anomaly import AnomalyMemories, AnomalyParams
    from service.prototypes import StoreHealth

    params = AnomalyParams(
        max_patches=12,
        calibration_references=2,
        quantile=1.0,
        sigma=0.0,
        min_region_fraction=0.0,
        explained_overlap=0.5,
        unknown_rejects=True,
    )
    reads: list[dict[str, int]] = []
    refs = redis_store.references
    fetch = refs.fetch_features

    def spy(ns, wanted, dim):
        reads.append(dict(wanted))
        return fetch(ns, wanted, dim)

    refs.fetch_features = spy  # type: ignore[method-assign]
    memories = AnomalyMemories(refs, FEAT, FDIM, StoreHealth(), params, max_namespaces=2)
    add(redis_store, [ref(1)])
    one = memories.get(NS).memory
    assert one.status == "uncalibrated" and one.threshold is None and len(one.bank) == 5

    version = add(redis_store, [ref(2), ref(3)])[0].version
    assert memories.peek(NS) is not None  # no event delivered here: still the held memory
    memories.invalidate(NS, version)
    assert memories.peek(NS) is None
    assert memories.get(NS).memory is one  # stale: served as held while the worker refreshes
    three = _refreshed(memories, NS, version)
    assert memories.get(NS).memory is three
    assert three.status == "ok" and three.references == 3 and three.calibration_scores == 2
    assert len(three.bank) == 12  # bounded: 3 references x min(5, 12 // 3) rows
    new_ids = {r.reference_id for r in add(redis_store, [ref(2), ref(3)])}
    assert set(reads[-1]) == new_ids  # it read only the references it did not hold
    assert all(n <= 5 for n in reads[-1].values())

    for i, ns in enumerate(("other-a", "other-b")):  # at most 2 namespaces held
        add(redis_store, [ref(10 + i)], ns=ns)
        memories.get(ns)
    assert len(memories) == 2 and memories.peek(NS) is None

    add(redis_store, [ref(20)], ns="foreign", feature_fingerprint="e" * 64)
    foreign = memories.get("foreign").memory
    assert foreign.status == "model_mismatch" and not foreign.active
    memories.close()


def _refreshed(memories, ns: str, version: int, timeout_s: float = 30.0):
    """The memory of ns once the background refresh has swapped in `version` (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cached = memories.wait_current(ns, max(0.0, deadline - time.monotonic()))
        if cached is not None and cached.memory.version >= version:
            return cached.memory
        time.sleep(0.01)
    raise AssertionError(f"the memory of {ns!r} did not reach version {version}")
