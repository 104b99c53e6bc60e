"""Tests of prompt_store: pure records maths, then the store against a real redis-server.

The only double is the fake *model* (`fake_encoder`, a deterministic function standing in for
the prompt encoder); Redis is always the real server started by tests/redis_fixture.py.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt_store import (
    Conflict,
    InvalidInput,
    LocalRedis,
    ModelMismatch,
    NewExemplar,
    NotFound,
    PromptStore,
    RedisPromptStore,
    Region,
    StoreEvent,
    StoreSettings,
    StoreUnavailable,
    exemplar_id,
    image_hash,
    prototype_of,
)
from prompt_store.export import content_sha256
from prompt_store.records import embedding_from_bytes, embedding_to_bytes
from prompt_store.settings import redact_url

FP_A = "a" * 64
FP_B = "b" * 64
DIM = 16
NS = "line-1"


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    """A random float32 embedding."""
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def box(i: int) -> Region:
    """A distinct valid region per i."""
    return Region(box=(float(i), 0.0, float(i) + 10.5, 20.25))


def fake_encoder(dim: int):
    """Test double for the prompt encoder of a 'new model': deterministic in (image, region)."""

    def encode(image: bytes, region: Region) -> np.ndarray:
        seed = hashlib.sha256(image + region.canonical_json().encode()).digest()
        return np.random.default_rng(int.from_bytes(seed[:8], "little")).normal(size=dim)

    return encode


def add(store: RedisPromptStore, cls: str, i: int, ns: str = NS, fp: str = FP_A, **kw):
    """Register exemplar number i of class cls (image i, region i)."""
    return store.add_exemplar(
        ns, cls, vec(i), b"image-%d" % i, box(i), "qa@plant", fingerprint=fp, **kw
    )


class EventLog:
    """Collects events from a subscription into a queue."""

    def __init__(self) -> None:
        self.events: queue.Queue[StoreEvent] = queue.Queue()

    def __call__(self, event: StoreEvent) -> None:
        self.events.put(event)

    def next(self, timeout: float = 5.0) -> StoreEvent:
        return self.events.get(timeout=timeout)

    def assert_quiet(self, wait: float = 0.2) -> None:
        with pytest.raises(queue.Empty):
            self.events.get(timeout=wait)


# ---- pure functions (no Redis) ------------------------------------------------------------------


def test_exemplar_id_is_stable_and_content_addressed() -> None:
    h = image_hash(b"img")
    assert exemplar_id(h, box(1), "scratch") == exemplar_id(h, box(1), "scratch")
    assert len(exemplar_id(h, box(1), "scratch")) == 32
    others = {
        exemplar_id(h, box(2), "scratch"),
        exemplar_id(h, box(1), "dent"),
        exemplar_id(image_hash(b"img2"), box(1), "scratch"),
    }
    assert exemplar_id(h, box(1), "scratch") not in others and len(others) == 3
    # int and float boxes are the same region
    assert Region((1, 2, 3, 4)).canonical_json() == Region((1.0, 2.0, 3.0, 4.0)).canonical_json()


@pytest.mark.parametrize(
    "bad",
    [
        (0, 0, 0, 5),
        (5, 0, 1, 5),
        (-1, 0, 3, 3),
        (0, 0, float("nan"), 3),
        (0, 0, float("inf"), 3),
        (0, 0, 3),
        (True, 0, 3, 3),
        ("0", 0, 3, 3),
    ],
)
def test_bad_boxes_are_refused(bad: tuple) -> None:
    with pytest.raises(InvalidInput):
        Region(box=bad)


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [4, 4]},
        {"size": [4, 4], "counts": [1, 2]},
        {"size": [0, 4], "counts": "ab"},
        {"size": [4, 4], "counts": ""},
        {"size": [4, 4], "counts": "ab", "extra": 1},
        "rle",
    ],
)
def test_bad_masks_are_refused(rle: object) -> None:
    with pytest.raises(InvalidInput):
        Region(box=(0, 0, 4, 4), mask_rle=rle)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "emb",
    [
        np.array([1.0, np.nan]),
        np.array([1.0, np.inf]),
        np.array([1e39, 1.0]),
        np.zeros(4),
        np.ones((2, 2)),
        np.array([]),
        np.array(["a", "b"]),
        np.ones(5000),
    ],
)
def test_bad_embeddings_are_refused(emb: np.ndarray) -> None:
    with pytest.raises(InvalidInput):
        embedding_to_bytes(emb)


def test_embedding_bytes_are_little_endian_float32_and_round_trip() -> None:
    v = vec(3)
    raw = embedding_to_bytes(v)
    assert raw == v.astype("<f4").tobytes() and len(raw) == 4 * DIM
    assert np.array_equal(embedding_from_bytes(raw, DIM), v)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-100, 100, width=32), min_size=8, max_size=8), min_size=1, max_size=6
    )
)
def test_prototype_is_the_normalised_mean(rows: list[list[float]]) -> None:
    embs = np.array(rows, dtype=np.float32)
    mean = embs.astype(np.float64).mean(axis=0)
    proto = prototype_of(list(embs))
    assert proto.dtype == np.float32
    if np.linalg.norm(mean) < 1e-6:
        return  # direction undefined: nothing meaningful to compare
    assert np.allclose(proto, mean / np.linalg.norm(mean), atol=1e-5)
    assert abs(np.linalg.norm(proto.astype(np.float64)) - 1) < 1e-5


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(1e-3, 1e4), st.floats(1e-3, 1e4)))
def test_region_canonical_json_round_trips(b: tuple[float, float, float, float]) -> None:
    region = Region(
        box=(b[0], b[1], b[0] + b[2], b[1] + b[3]), mask_rle={"size": [3, 5], "counts": "0a1b"}
    )
    again = Region.from_json(region.canonical_json())
    assert again == region and again.canonical_json() == region.canonical_json()


@pytest.mark.parametrize("name", ["", " pad", "a\x00b", "tab\tname", "x" * 129, "\u200bzero"])
def test_bad_class_names_are_refused_before_anything_happens(name: str) -> None:
    store = RedisPromptStore.from_url("redis://127.0.0.1:1/0")  # never contacted
    with pytest.raises(InvalidInput):
        store.add_exemplar(NS, name, vec(1), b"img", box(1), "qa", fingerprint=FP_A)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_REDIS_URL", "rediss://redis.example:6380/2")
    monkeypatch.setenv("INSPECT_REDIS_PASSWORD", "s3cret")
    monkeypatch.setenv("INSPECT_REDIS_SSL_CA_CERTS", "/etc/ca.pem")
    monkeypatch.setenv("INSPECT_REDIS_RETRIES", "5")
    cfg = StoreSettings()
    assert cfg.uses_tls and cfg.retries == 5 and str(cfg.ssl_ca_certs) == "/etc/ca.pem"
    assert "s3cret" not in repr(cfg)
    monkeypatch.setenv("INSPECT_REDIS_URL", "redis://redis.example:6379/0")
    with pytest.raises(ValueError, match="rediss"):
        StoreSettings()  # TLS options on a plaintext URL: refused, not ignored
    monkeypatch.setenv("INSPECT_REDIS_URL", "http://x")
    with pytest.raises(ValueError):
        StoreSettings()
    with pytest.raises(ValueError) as info:
        StoreSettings(url="redis://:hunter2@h:1/0", password="other")  # ambiguous: refused
    assert "hunter2" not in str(info.value) and "other" not in str(info.value)
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def test_unreachable_redis_gives_a_clear_error_without_the_password() -> None:
    store = RedisPromptStore.from_url(
        "redis://:hunter2@127.0.0.1:1/0",
        retries=1,
        retry_backoff_base=0.01,
        socket_connect_timeout=0.5,
    )
    with pytest.raises(StoreUnavailable) as info:
        store.fetch_prototypes(NS, FP_A)
    text = str(info.value)
    assert "127.0.0.1:1" in text and "hunter2" not in text and "2 attempt(s)" in text
    assert "INSPECT_REDIS_URL" in text
    with pytest.raises(StoreUnavailable, match="may or may not"):
        store.remove_class(NS, "scratch")  # not retried: a change is not idempotent


# ---- against the real server --------------------------------------------------------------------


@pytest.mark.integration
def test_round_trip(redis_store: RedisPromptStore) -> None:
    assert isinstance(redis_store, PromptStore)
    mask = {"size": [30, 30], "counts": "PPX1"}
    r = redis_store.add_exemplar(
        NS,
        "scratch",
        vec(1),
        b"image-1",
        Region((1, 2, 3, 4), mask),
        "alice",
        note="line 3\nshift B",
        fingerprint=FP_A,
    )
    add(redis_store, "dent", 2)
    assert r.created and r.version == 1
    info = redis_store.namespace_info(NS)
    assert (info.fingerprint, info.embed_dim, info.version) == (FP_A, DIM, 2)
    assert (info.class_count, info.exemplar_count, info.image_count) == (2, 2, 2)
    assert [(c.name, c.count) for c in redis_store.list_classes(NS)] == [
        ("dent", 1),
        ("scratch", 1),
    ]
    cls = redis_store.get_class(NS, "scratch", with_embeddings=True)
    (rec,) = cls.exemplars
    assert rec.id == r.exemplar_id == exemplar_id(image_hash(b"image-1"), rec.region, "scratch")
    assert rec.region == Region((1, 2, 3, 4), mask) and rec.author == "alice"
    assert rec.note == "line 3\nshift B" and rec.fingerprint == FP_A
    assert rec.embedding is not None and rec.embedding.tobytes() == vec(1).tobytes()
    assert redis_store.get_class(NS, "scratch").exemplars[0].embedding is None
    assert redis_store.get_source_image(NS, rec.image_hash) == b"image-1"
    assert redis_store.exemplar_ids(NS) == {r.exemplar_id, add(redis_store, "dent", 2).exemplar_id}
    assert redis_store.namespaces() == [NS]
    with pytest.raises(NotFound):
        redis_store.get_class(NS, "missing")
    with pytest.raises(NotFound):
        redis_store.fetch_prototypes("other", FP_A)


@pytest.mark.integration
def test_prototypes_match_the_mean_of_what_was_stored(redis_store: RedisPromptStore) -> None:
    ids: dict[str, list[str]] = {"scratch": [], "dent": [], "crack": []}
    for i in range(12):
        cls = list(ids)[i % 3]
        ids[cls].append(add(redis_store, cls, i).exemplar_id)
    snap = redis_store.fetch_prototypes(NS, FP_A)
    assert snap.class_names == ["crack", "dent", "scratch"] and snap.counts == [4, 4, 4]
    assert snap.matrix.shape == (3, DIM) and snap.matrix.dtype == np.float32
    for row, name in zip(snap.matrix, snap.class_names, strict=True):
        embs = [vec(i) for i in range(12) if list(ids)[i % 3] == name]
        mean = np.mean(np.array(embs, dtype=np.float64), axis=0)
        assert np.allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
        assert np.array_equal(row, prototype_of(embs, ids[name]))  # bit-identical to the reference
    removed = ids["dent"].pop(0)
    redis_store.remove_exemplar(NS, removed)
    snap = redis_store.fetch_prototypes(NS, FP_A)
    embs = [vec(i) for i in (4, 7, 10)]
    assert snap.counts[1] == 3 and np.array_equal(snap.matrix[1], prototype_of(embs, ids["dent"]))


@pytest.mark.integration
def test_snapshot_carries_each_class_exemplar_boxes(redis_store: RedisPromptStore) -> None:
    """The size prior needs the exemplars' boxes with the prototypes, class by class, and the
    template check each box's source image."""
    for i, cls in enumerate(["scratch", "dent", "scratch"]):
        add(redis_store, cls, i)
    snap = redis_store.fetch_prototypes(NS, FP_A)
    assert snap.class_names == ["dent", "scratch"] and snap.exemplar_boxes is not None
    dent, scratch = snap.exemplar_boxes
    assert dent.tolist() == [list(box(1).box)]
    assert sorted(scratch.tolist()) == sorted([list(box(0).box), list(box(2).box)])
    redis_store.rename_class(NS, "dent", "pit")
    redis_store.remove_exemplar(NS, add(redis_store, "scratch", 0).exemplar_id)
    snap = redis_store.fetch_prototypes(NS, FP_A)
    assert snap.class_names == ["pit", "scratch"]
    assert [b.tolist() for b in snap.exemplar_boxes] == [[list(box(1).box)], [list(box(2).box)]]
    # the template check crops each exemplar from its stored image, named beside its box
    image_hash = hashlib.sha256
    assert snap.exemplar_images == (
        (image_hash(b"image-1").hexdigest(),),
        (image_hash(b"image-2").hexdigest(),),
    )
    assert redis_store.get_source_image(NS, snap.exemplar_images[0][0]) == b"image-1"


@pytest.mark.integration
def test_every_change_bumps_the_version_and_publishes_an_event(
    redis_store: RedisPromptStore,
) -> None:
    log = EventLog()
    with redis_store.subscribe(log, NS):
        redis_store.create_namespace(NS, FP_A, DIM)
        steps = [
            ("namespace_created", lambda: None),
            ("exemplar_added", lambda: add(redis_store, "scratch", 1)),
            (
                "exemplars_added",
                lambda: redis_store.add_exemplars(
                    NS,
                    [NewExemplar("dent", vec(i), b"image-%d" % i, box(i), "bob") for i in (2, 3)],
                    fingerprint=FP_A,
                ),
            ),
            (
                "exemplar_removed",
                lambda: redis_store.remove_exemplar(NS, add(redis_store, "dent", 2).exemplar_id),
            ),
            ("class_renamed", lambda: redis_store.rename_class(NS, "dent", "dent-deep")),
            ("class_removed", lambda: redis_store.remove_class(NS, "scratch")),
            ("namespace_deleted", lambda: redis_store.delete_namespace(NS)),
        ]
        for expected_version, (kind, change) in enumerate(steps, start=1):
            change()
            event = log.next()
            assert (event.kind, event.version, event.namespace) == (kind, expected_version, NS)
            assert redis_store.version(NS) == expected_version
        # no-ops publish nothing and keep the version
        redis_store.create_namespace(NS, FP_A, DIM)
        assert log.next().kind == "namespace_created"
        add(redis_store, "scratch", 1)
        assert log.next().kind == "exemplar_added"
        version = redis_store.version(NS)
        assert version == len(steps) + 2  # versions survive delete_namespace: never backwards
        assert add(redis_store, "scratch", 1).created is False
        redis_store.create_namespace(NS, FP_A, DIM)
        log.assert_quiet()
        assert redis_store.version(NS) == version


@pytest.mark.integration
def test_events_carry_what_changed(redis_store: RedisPromptStore) -> None:
    log = EventLog()
    with redis_store.subscribe(log):  # all namespaces
        r = add(redis_store, "scratch", 1, ns="a")
        add(redis_store, "dent", 2, ns="b")
        redis_store.rename_class("a", "scratch", "scuff")
        first, second, third = log.next(), log.next(), log.next()
    assert (first.namespace, first.class_name, first.exemplar_id) == ("a", "scratch", r.exemplar_id)
    assert (second.namespace, second.class_name) == ("b", "dent")
    assert (third.kind, third.old_class_name, third.class_name) == (
        "class_renamed",
        "scratch",
        "scuff",
    )


@pytest.mark.integration
def test_another_model_is_refused(redis_store: RedisPromptStore) -> None:
    add(redis_store, "scratch", 1)
    with pytest.raises(ModelMismatch) as info:
        add(redis_store, "scratch", 2, fp=FP_B)
    assert FP_A in str(info.value) and FP_B in str(info.value) and "reextract" in str(info.value)
    with pytest.raises(ModelMismatch):
        redis_store.fetch_prototypes(NS, FP_B)
    with pytest.raises(ModelMismatch, match="32-d"):
        redis_store.add_exemplar(NS, "scratch", vec(3, 32), b"x", box(3), "qa", fingerprint=FP_A)
    with pytest.raises(ModelMismatch):
        redis_store.create_namespace(NS, FP_B, DIM)
    assert redis_store.version(NS) == 1 and redis_store.namespace_info(NS).exemplar_count == 1


@pytest.mark.integration
def test_registering_twice_changes_nothing(redis_store: RedisPromptStore) -> None:
    first = add(redis_store, "scratch", 1)
    again = redis_store.add_exemplar(
        NS, "scratch", vec(99), b"image-1", box(1), "someone else", fingerprint=FP_A
    )
    assert (again.exemplar_id, again.version, again.created) == (first.exemplar_id, 1, False)
    items = [NewExemplar("scratch", vec(i), b"image-%d" % i, box(i), "qa") for i in (1, 2, 2)]
    results = redis_store.add_exemplars(NS, items, fingerprint=FP_A)
    assert [r.created for r in results] == [False, True, False]
    assert len({r.version for r in results}) == 1 and results[0].version == 2
    rec = redis_store.get_class(NS, "scratch", with_embeddings=True).exemplars
    assert len(rec) == 2 and rec[0].author in ("qa@plant", "qa")
    first_emb = next(r for r in rec if r.id == first.exemplar_id).embedding
    assert np.array_equal(first_emb, vec(1))  # the first registration wins
    mapping = redis_store.rename_class(NS, "scratch", "scuff")
    renamed = redis_store.add_exemplar(
        NS, "scuff", vec(1), b"image-1", box(1), "qa", fingerprint=FP_A
    )
    assert not renamed.created and renamed.exemplar_id == mapping[first.exemplar_id]


@pytest.mark.integration
def test_bad_input_changes_nothing(redis_store: RedisPromptStore) -> None:
    add(redis_store, "scratch", 1)
    before = redis_store.dump_namespace(NS)
    bad_batches = [
        [
            NewExemplar("dent", vec(2), b"i2", box(2), "qa"),
            NewExemplar("dent", np.full(DIM, np.nan), b"i3", box(3), "qa"),
        ],
        [NewExemplar("dent", vec(2), b"", box(2), "qa")],
        [NewExemplar("dent", vec(2), b"i2", box(2), "qa", note="bell\x07")],
        [NewExemplar("dent", vec(2), b"i2", box(2), "")],
        [
            NewExemplar("dent", vec(2), b"i2", box(2), "qa"),
            NewExemplar("dent", vec(3, DIM + 1), b"i3", box(3), "qa"),
        ],
    ]
    for batch in bad_batches:
        with pytest.raises(InvalidInput):
            redis_store.add_exemplars(NS, batch, fingerprint=FP_A)
    small = RedisPromptStore(redis_store.client, StoreSettings(max_image_bytes=10))
    with pytest.raises(InvalidInput, match="MAX_IMAGE_BYTES"):
        small.add_exemplar(NS, "dent", vec(2), b"x" * 11, box(2), "qa", fingerprint=FP_A)
    with pytest.raises(InvalidInput):
        redis_store.add_exemplar("bad ns{", "dent", vec(2), b"x", box(2), "qa", fingerprint=FP_A)
    with pytest.raises(InvalidInput):
        redis_store.remove_exemplar(NS, "not-an-id")
    after = redis_store.dump_namespace(NS)
    assert after.version == before.version and [r.id for r in after.exemplars] == [
        r.id for r in before.exemplars
    ]


@pytest.mark.integration
def test_removals_renames_and_source_images(redis_store: RedisPromptStore) -> None:
    shared = b"shared-image"
    a = redis_store.add_exemplar(NS, "scratch", vec(1), shared, box(1), "qa", fingerprint=FP_A)
    b = redis_store.add_exemplar(NS, "dent", vec(2), shared, box(2), "qa", fingerprint=FP_A)
    add(redis_store, "crack", 3)
    h = image_hash(shared)
    redis_store.remove_exemplar(NS, a.exemplar_id)
    assert redis_store.get_source_image(NS, h) == shared  # still referenced by b
    with pytest.raises(NotFound):
        redis_store.remove_exemplar(NS, a.exemplar_id)
    with pytest.raises(Conflict):
        redis_store.rename_class(NS, "dent", "crack")
    redis_store.rename_class(NS, "dent", "dent-deep")
    assert redis_store.get_source_image(NS, h) == shared
    assert [c.name for c in redis_store.list_classes(NS)] == ["crack", "dent-deep"]
    redis_store.remove_class(NS, "dent-deep")
    with pytest.raises(NotFound):
        redis_store.get_source_image(NS, h)  # last reference gone: image gone
    with pytest.raises(NotFound):
        redis_store.remove_exemplar(NS, b.exemplar_id)
    with pytest.raises(NotFound):
        redis_store.remove_class(NS, "dent-deep")
    assert redis_store.fetch_prototypes(NS, FP_A).class_names == ["crack"]
    redis_store.delete_namespace(NS)
    assert redis_store.namespaces() == []
    left = [k.decode() for k in redis_store.client.keys("inspect:*")]
    assert left == [f"inspect:ns:{{{NS}}}:version"]  # only the version counter survives


@pytest.mark.integration
def test_eight_concurrent_writers_lose_nothing(redis_store: RedisPromptStore) -> None:
    writers, per_writer = 8, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(w: int) -> None:
        try:
            barrier.wait()
            for k in range(per_writer):
                i = w * per_writer + k
                cls = "shared" if k % 2 == 0 or k % 5 == 4 else f"own-{w}"
                if k % 5 == 4:  # some batched writes into the shared class too
                    redis_store.add_exemplars(
                        NS,
                        [NewExemplar("shared", vec(i), b"image-%d" % i, box(i), f"w{w}")],
                        fingerprint=FP_A,
                    )
                else:
                    add(redis_store, cls, i)
                add(redis_store, cls, i)  # and a duplicate that must stay a no-op
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = writers * per_writer
    info = redis_store.namespace_info(NS)
    assert info.exemplar_count == total and info.version == total  # one bump per created exemplar
    snap = redis_store.fetch_prototypes(NS, FP_A)
    assert sum(snap.counts) == total
    for name, row in zip(snap.class_names, snap.matrix, strict=True):
        recs = redis_store.get_class(NS, name, with_embeddings=True).exemplars
        expected_ids = {
            exemplar_id(image_hash(b"image-%d" % i), box(i), name)
            for i in range(total)
            if (
                "shared"
                if (i % per_writer) % 2 == 0 or (i % per_writer) % 5 == 4
                else f"own-{i // per_writer}"
            )
            == name
        }
        assert {r.id for r in recs} == expected_ids
        assert np.array_equal(row, prototype_of([r.embedding for r in recs], [r.id for r in recs]))


@pytest.mark.integration
def test_export_import_is_bit_exact(redis_store: RedisPromptStore, tmp_path: Path) -> None:
    redis_store.add_exemplar(
        NS,
        "scratch",
        vec(1),
        b"image-1",
        Region((0.1, 0.2, 30.333333333333332, 40.0), {"size": [50, 60], "counts": "abc"}),
        "Zoë",
        note="ünïcode",
        fingerprint=FP_A,
    )
    for i in range(2, 8):
        add(redis_store, ["dent", "crack"][i % 2], i)
    path = redis_store.export_namespace(NS, tmp_path / "backup" / "line-1.json")
    info = redis_store.import_namespace(path, "line-1-copy")
    assert info.exemplar_count == 7 and info.fingerprint == FP_A
    again = json.loads(redis_store.export_namespace("line-1-copy", tmp_path / "b.json").read_text())
    original = json.loads(path.read_text())
    per_site = {"namespace", "version", "exported_at", "content_sha256"}
    assert {k: v for k, v in original.items() if k not in per_site} == {
        k: v for k, v in again.items() if k not in per_site
    }
    a, b = redis_store.fetch_prototypes(NS, FP_A), redis_store.fetch_prototypes("line-1-copy", FP_A)
    assert a.matrix.tobytes() == b.matrix.tobytes() and a.class_names == b.class_names

    with pytest.raises(Conflict):  # non-empty target: refused, untouched
        redis_store.import_namespace(path, "line-1-copy")
    add(redis_store, "extra", 50, ns="line-1-copy")
    redis_store.import_namespace(path, "line-1-copy", overwrite=True)
    assert "extra" not in redis_store.fetch_prototypes("line-1-copy", FP_A).class_names

    doc = json.loads(path.read_text())
    doc["exemplars"][0]["author"] = "mallory"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="checksum"):
        redis_store.import_namespace(tampered, "line-1-bad")
    doc["exemplars"][0]["class_name"] = "other"
    doc["content_sha256"] = content_sha256(doc)  # checksum fixed up, content still wrong
    tampered.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="does not match its content"):
        redis_store.import_namespace(tampered, "line-1-bad")
    assert "line-1-bad" not in redis_store.namespaces()


@pytest.mark.integration
def test_empty_namespace_exports_and_imports(redis_store: RedisPromptStore, tmp_path: Path) -> None:
    redis_store.create_namespace("empty", FP_B, 7)
    path = redis_store.export_namespace("empty", tmp_path / "empty.json")
    info = redis_store.import_namespace(path, "empty-copy")
    assert (info.fingerprint, info.embed_dim, info.exemplar_count) == (FP_B, 7, 0)
    assert redis_store.fetch_prototypes("empty-copy", FP_B).matrix.shape == (0, 7)


@pytest.mark.integration
def test_reextract_rebuilds_for_a_new_model(redis_store: RedisPromptStore) -> None:
    for i in range(6):
        add(redis_store, ["scratch", "dent"][i % 2], i, note=f"n{i}")
    encode = fake_encoder(24)
    info = redis_store.reextract(NS, "line-1-v2", encode, FP_B)
    assert (info.fingerprint, info.embed_dim, info.exemplar_count) == (FP_B, 24, 6)
    old, new = redis_store.dump_namespace(NS), redis_store.dump_namespace("line-1-v2")
    assert [r.id for r in old.exemplars] == [r.id for r in new.exemplars]
    for o, n in zip(old.exemplars, new.exemplars, strict=True):
        assert (o.author, o.note, o.created_at, o.region) == (
            n.author,
            n.note,
            n.created_at,
            n.region,
        )
        expected = encode(old.images[o.image_hash], o.region).astype(np.float32)
        assert np.array_equal(n.embedding, expected)
    with pytest.raises(ModelMismatch):
        redis_store.fetch_prototypes("line-1-v2", FP_A)
    with pytest.raises(Conflict):
        redis_store.reextract(NS, "line-1-v2", encode, FP_B)
    redis_store.reextract(NS, NS, encode, FP_B)  # in place
    assert redis_store.fetch_prototypes(NS, FP_B).matrix.shape == (2, 24)


@pytest.mark.integration
def test_restart_with_persistence_keeps_everything(tmp_path: Path) -> None:
    server = LocalRedis(data_dir=tmp_path / "redis").start()
    try:
        store = RedisPromptStore.from_url(server.url, retries=2, retry_backoff_base=0.01)
        log = EventLog()
        sub = store.subscribe(log, NS)
        for i in range(10):
            add(store, f"class-{i % 3}", i)
        assert log.next().version == 1
        before = store.dump_namespace(NS)
        snap = store.fetch_prototypes(NS, FP_A)
        for crash in (True, False):  # SIGKILL (no shutdown work), then a clean stop
            if crash:
                server.kill()
            else:
                server.stop()
            with pytest.raises(StoreUnavailable):
                store.version(NS)
            server.start()  # same data dir and port
            after = store.dump_namespace(NS)
            assert after.version == before.version
            assert [(r.id, r.embedding.tobytes()) for r in after.exemplars] == [
                (r.id, r.embedding.tobytes()) for r in before.exemplars
            ]
            assert after.images == before.images
            assert store.fetch_prototypes(NS, FP_A).matrix.tobytes() == snap.matrix.tobytes()
            deadline = time.monotonic() + 10
            kinds = []
            while "resync" not in kinds and time.monotonic() < deadline:
                kinds.append(log.next(timeout=10).kind)
            assert "resync" in kinds  # the subscriber reconnected and told us to refetch
        sub.stop()
        store.close()
    finally:
        server.stop()


@pytest.mark.integration
def test_idempotent_calls_retry_through_a_short_outage(tmp_path: Path) -> None:
    server = LocalRedis(data_dir=tmp_path / "redis").start()
    try:
        store = RedisPromptStore.from_url(
            server.url, retries=8, retry_backoff_base=0.05, retry_backoff_cap=0.4
        )
        first = add(store, "scratch", 1)
        server.stop()
        with pytest.raises(StoreUnavailable, match="may or may not"):
            store.remove_exemplar(NS, first.exemplar_id)  # a change: never retried blindly
        restarter = threading.Timer(0.3, server.start)
        restarter.start()
        second = add(store, "scratch", 2)  # retried with backoff until the server is back
        restarter.join()
        assert second.created and store.fetch_prototypes(NS, FP_A).counts == [2]
        store.close()
    finally:
        server.stop()
