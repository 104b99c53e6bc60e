"""The anomaly mode in the service: per-namespace memories of normal appearance, and scoring.

Beside the prompted detector, every inspection of a namespace that has defect-free reference
images also gets an anomaly map and score (models/anomaly). Regions above the threshold that no
prompted detection explains come back as detections of class `unknown`.

`AnomalyMemories` holds, per namespace, the memory bank built from the references' stored patch
features (never the images) and its calibrated threshold, like `PrototypeCache` holds prototypes:
a memory becomes stale on the namespace's store events (every replica subscribes), on this
replica's own writes, and after a resync or an outage. A refresh is incremental: only references
the memory does not hold yet are read (and only the prefix of their patches the memory budget
needs), removed ones are dropped, and the threshold is recalibrated (leave-one-out on a fixed draw
of references) only when the set of references changed. At most `anomaly_max_namespaces` memories
are held (least recently used dropped first), each bounded by `anomaly_max_patches` rows.

A recalibration takes seconds, so a stale memory is refreshed stale-while-revalidate: inspections
keep scoring with the memory held (their answer names its version) while one background worker
thread rebuilds it and swaps the new one in under the lock; refreshes of a namespace are coalesced
(an event during a rebuild schedules at most one more). Only a namespace with no memory held yet
is built synchronously on the model thread, so the first inspection after registering references
has the signal. A failed background refresh is logged and the old memory keeps serving (retried
on the next event, or on use after `RETRY_AFTER_S`). The worker uses torch beside the model
thread (read-only banks; the new bank is only published when complete).

While the store is unreachable the memory held is used (a namespace never loaded has no anomaly
signal: status `unavailable`); model or extractor mismatches switch the signal off for that
namespace (status `model_mismatch`, logged) instead of failing inspections.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from models.anomaly.features import PatchFeatureExtractor, PatchGrid
from models.anomaly.memory import (
    MemoryBank,
    Reference,
    budget,
    calibration_ids,
    leave_one_out_scores,
    threshold_from_scores,
)
from models.anomaly.scoring import AnomalyMap, anomaly_map, normalised, regions, unexplained
from prompt_store.errors import NotFound, StoreUnavailable
from prompt_store.records import StoreEvent
from prompt_store.reference_store import RedisReferenceStore
from prompt_store.references import AnomalySettings, ReferenceSnapshot
from service.prototypes import StoreHealth
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

UNKNOWN_CLASS = "unknown"
RETRY_AFTER_S = 5.0  # a failed background refresh is retried after this long (at once on an event)
CLOSE_WAIT_S = 10.0  # how long close() waits for a rebuild under way (it reads the store)


@dataclass(frozen=True)
class AnomalyParams:
    """The service-wide anomaly settings (namespace overrides apply on top)."""

    max_patches: int
    calibration_references: int
    quantile: float
    sigma: float
    min_region_fraction: float
    explained_overlap: float
    unknown_rejects: bool

    @classmethod
    def from_settings(cls, s: ServiceSettings) -> AnomalyParams:
        return cls(
            max_patches=s.anomaly_max_patches,
            calibration_references=s.anomaly_calibration_references,
            quantile=s.anomaly_threshold_quantile,
            sigma=s.anomaly_smoothing_sigma,
            min_region_fraction=s.anomaly_min_region_fraction,
            explained_overlap=s.anomaly_explained_overlap,
            unknown_rejects=s.anomaly_unknown_rejects,
        )


@dataclass
class NamespaceMemory:
    """A namespace's memory as of `version` (immutable once published to inspections)."""

    namespace: str
    version: int
    status: str  # ok, no_references, uncalibrated, model_mismatch
    bank: MemoryBank
    references: int
    calibrated_threshold: float | None
    calibration_scores: int
    overrides: AnomalySettings
    params: AnomalyParams
    # all stored rows of the calibration references (float16), kept for the next recalibration
    calibration: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def threshold(self) -> float | None:
        """The threshold in use: the namespace's override, else the calibrated one."""
        if self.overrides.threshold is not None:
            return self.overrides.threshold
        return self.calibrated_threshold

    @property
    def min_region_fraction(self) -> float:
        f = self.overrides.min_region_fraction
        return self.params.min_region_fraction if f is None else f

    @property
    def unknown_rejects(self) -> bool:
        u = self.overrides.unknown_rejects
        return self.params.unknown_rejects if u is None else u

    @property
    def active(self) -> bool:
        """Scores can be computed (references of this extractor exist)."""
        return self.status in ("ok", "uncalibrated") and len(self.bank) > 0

    @property
    def nbytes(self) -> int:
        """Bytes held for this namespace (memory rows, calibration rows)."""
        return self.bank.nbytes + sum(a.nbytes for a in self.calibration.values())


@dataclass(frozen=True)
class CachedMemory:
    memory: NamespaceMemory | None  # None: the store is down and this namespace was never loaded
    degraded: bool


class AnomalyMemories:
    """Namespace -> NamespaceMemory (bounded LRU), refreshed incrementally; thread-safe.

    Owns one background worker thread for the refreshes of held memories (close() stops it)."""

    def __init__(
        self,
        store: RedisReferenceStore,
        feature_fingerprint: str,
        feature_dim: int,
        health: StoreHealth,
        params: AnomalyParams,
        max_namespaces: int,
    ) -> None:
        self._store = store
        self._fingerprint = feature_fingerprint
        self._dim = feature_dim
        self._health = health
        self.params = params
        self._max = max_namespaces
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on swaps and ended refreshes
        self._held: OrderedDict[str, NamespaceMemory] = OrderedDict()
        self._stale: set[str] = set()
        self._min_version: dict[str, int] = {}
        # bumped by every invalidation: a refresh that started before one must not clear it
        self._epoch: dict[str, int] = {}
        self._pending: set[str] = set()  # background refresh queued or under way
        self._running: str | None = None
        self._again: set[str] = set()  # invalidated while its refresh ran: one more run
        self._failed: dict[str, float] = {}  # monotonic time of the last failed refresh
        self._closed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaly-refresh")

    def __len__(self) -> int:
        return len(self._held)

    def nbytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._held.values())

    def _current(self, ns: str, mem: NamespaceMemory) -> bool:
        """Caller holds the lock."""
        return ns not in self._stale and mem.version >= self._min_version.get(ns, 0)

    def peek(self, ns: str) -> CachedMemory | None:
        """The held memory when it is current (no store access); None when it needs a refresh."""
        with self._lock:
            mem = self._held.get(ns)
            if mem is not None:
                self._held.move_to_end(ns)
            fresh = mem is not None and self._current(ns, mem)
        if fresh:
            return CachedMemory(mem, degraded=not self._health.up)
        if not self._health.up and mem is not None:
            return CachedMemory(mem, degraded=True)
        return None

    def serve(self, ns: str) -> CachedMemory | None:
        """What an inspection scores with, without waiting or touching the store: the held
        memory, current or stale (a stale one is refreshed in the background meanwhile); None when
        none is held yet (then get() builds it)."""
        cached = self.peek(ns)
        if cached is not None:
            return cached
        with self._lock:
            old = self._held.get(ns)
        if old is None:
            return None
        if self._health.up:  # during an outage it is refreshed once the store is back
            self.refresh_soon(ns)
        return CachedMemory(old, degraded=not self._health.up)

    def get(self, ns: str) -> CachedMemory:
        """The memory to score with. A held one is returned at once (see serve()); a namespace
        with none held is built from the store here, blocking (run it on the model thread).
        NotFound passes through."""
        cached = self.serve(ns)
        if cached is not None:
            return cached
        if not self._health.up:  # never block the model thread on retries during an outage
            return CachedMemory(None, degraded=True)
        with self._lock:
            old, epoch = self._held.get(ns), self._epoch.get(ns, 0)
        try:
            mem = self._rebuild(self._store.snapshot(ns), old)
        except StoreUnavailable as exc:
            self._health.set(False, str(exc))
            return CachedMemory(old, degraded=True)
        except NotFound:
            self.forget(ns)
            raise
        self._publish(mem, epoch)
        return CachedMemory(mem, degraded=False)

    def wait_current(self, ns: str, timeout_s: float) -> CachedMemory | None:
        """The held memory once current, after a background refresh if needed; blocks up to
        timeout_s (never call it on the model thread: admin reads and settings changes use it so
        their answer shows the change). Returns the memory as held when the refresh failed or
        timed out, None when none is held (use get())."""
        deadline = time.monotonic() + timeout_s
        self.refresh_soon(ns)
        with self._changed:
            while True:
                mem = self._held.get(ns)
                if mem is None:
                    return None
                left = deadline - time.monotonic()
                if self._current(ns, mem) or ns not in self._pending or left <= 0:
                    return CachedMemory(mem, degraded=not self._health.up)
                self._changed.wait(left)

    def _publish(self, mem: NamespaceMemory, epoch: int) -> None:
        """Swaps a rebuilt memory in (unless a newer one is held); it is current unless the
        namespace was invalidated since its rebuild started (epoch)."""
        ns = mem.namespace
        with self._lock:
            current = self._held.get(ns)
            if current is None or mem.version >= current.version:
                self._held[ns] = mem
                self._held.move_to_end(ns)
            fresh = self._held[ns].version >= self._min_version.get(ns, 0)
            if fresh and self._epoch.get(ns, 0) == epoch:
                self._stale.discard(ns)
            self._failed.pop(ns, None)
            while len(self._held) > self._max:
                dropped, _ = self._held.popitem(last=False)
                self._stale.discard(dropped)
            self._changed.notify_all()

    # ---- background refresh --------------------------------------------------------------------

    def refresh_soon(self, ns: str) -> bool:
        """Schedules a background refresh of a held namespace (coalesced: a queued one covers
        any number of requests, one under way gets at most one more run). False when none was
        scheduled (not held, closed, or within RETRY_AFTER_S of a failure)."""
        with self._lock:
            if self._closed or ns not in self._held:
                return False
            if ns in self._pending:
                if self._running == ns:
                    self._again.add(ns)
                return True
            if time.monotonic() - self._failed.get(ns, -RETRY_AFTER_S) < RETRY_AFTER_S:
                return False
            self._pending.add(ns)
        try:
            self._worker.submit(self._background, ns)
        except RuntimeError:  # close() won the race: nothing runs after shutdown
            with self._lock:
                self._pending.discard(ns)
            return False
        return True

    def _background(self, ns: str) -> None:
        """The worker's job: refresh, then once more if invalidated meanwhile."""
        while True:
            with self._lock:
                self._running = ns
            try:
                self._refresh_held(ns)
            finally:
                with self._lock:
                    self._running = None
                    again = ns in self._again and not self._closed
                    self._again.discard(ns)
                    if not again:
                        self._pending.discard(ns)
                        self._changed.notify_all()
            if not again:
                return

    def _refresh_held(self, ns: str) -> None:
        """Rebuilds a held, stale memory from the store; any failure leaves the old one serving."""
        with self._lock:
            old, epoch = self._held.get(ns), self._epoch.get(ns, 0)
            if old is None or self._current(ns, old):  # dropped, or refreshed already
                return
        if not self._health.up:
            return
        try:
            mem = self._rebuild(self._store.snapshot(ns), old)
        except StoreUnavailable as exc:
            self._health.set(False, str(exc))
            return
        except NotFound:
            self.forget(ns)  # the next inspection builds it, and gets NotFound
            return
        except Exception as exc:  # keep serving the old memory; no traceback per retry
            with self._lock:
                self._failed[ns] = time.monotonic()
            log.error(
                "anomaly memory refresh failed; the held memory keeps serving",
                extra={
                    "fields": {
                        "namespace": ns,
                        "version": old.version,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                },
            )
            return
        self._publish(mem, epoch)

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Stops the worker: queued refreshes are dropped, one under way is waited for (bounded),
        so that it does not read a store being closed."""
        with self._lock:
            self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._running is not None and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))

    def _rebuild(self, snap: ReferenceSnapshot, old: NamespaceMemory | None) -> NamespaceMemory:
        p = self.params
        ns, rows = snap.namespace, snap.rows

        def empty(status: str) -> NamespaceMemory:
            bank = MemoryBank.build([], p.max_patches)
            return NamespaceMemory(
                ns, snap.version, status, bank, len(rows), None, 0, snap.settings, p
            )

        if not rows:
            return empty("no_references")
        if snap.feature_fingerprint != self._fingerprint or snap.feature_dim != self._dim:
            log.error(
                "namespace %r holds references of feature extractor %s..., this service uses "
                "%s...; its anomaly signal is off until the references are registered again",
                ns,
                (snap.feature_fingerprint or "?")[:12],
                self._fingerprint[:12],
            )
            return empty("model_mismatch")
        start = time.perf_counter()
        stored = max(rows.values())
        b = budget(len(rows), p.max_patches, stored)
        calib = calibration_ids(sorted(rows), p.calibration_references)
        calib = calib if len(rows) >= 2 else []
        usable = old is not None and old.status in ("ok", "uncalibrated")
        prev_held = old.bank.rows_by_reference() if usable and old is not None else {}
        prev_cal = old.calibration if usable and old is not None else {}
        need = {rid: min(n, b) for rid, n in rows.items()}
        for rid in calib:
            need[rid] = rows[rid]
        fetch = {}
        held: dict[str, np.ndarray] = {}
        calibration: dict[str, np.ndarray] = {}
        for rid, n in need.items():
            have = prev_cal.get(rid) if rid in prev_cal else prev_held.get(rid)
            if have is not None and len(have) >= n:
                (calibration if rid in calib else held)[rid] = have[:n]
            else:
                fetch[rid] = n
        if fetch:
            got = self._store.fetch_features(ns, fetch, self._dim)
            for rid, arr in got.items():
                (calibration if rid in calib else held)[rid] = arr
        present = [rid for rid in rows if rid in held or rid in calibration]
        refs = [
            Reference(rid, held[rid] if rid in held else calibration[rid][: min(rows[rid], b)])
            for rid in present
        ]
        for rid in calib:  # the memory holds the budget prefix; calibration keeps all rows
            if rid in calibration:
                held[rid] = calibration[rid][: min(rows[rid], b)]
        bank = MemoryBank.build(refs, p.max_patches)
        same_set = usable and old is not None and old.bank.ids == bank.ids
        same_set = same_set and old is not None and len(old.bank) == len(bank)
        if same_set and old is not None and old.calibrated_threshold is not None:
            threshold, n_scores = old.calibrated_threshold, old.calibration_scores
        else:
            full = [Reference(rid, calibration[rid]) for rid in calib if rid in calibration]
            scores = leave_one_out_scores(bank, full) if len(present) >= 2 else np.zeros(0)
            threshold = threshold_from_scores(scores, p.quantile)
            n_scores = int(scores.size)
        status = (
            "ok"
            if threshold is not None or snap.settings.threshold is not None
            else ("uncalibrated")
        )
        log.info(
            "anomaly memory of %r: %d references, %d rows, threshold %s (%d calibration "
            "scores), built in %.2f s (%d references read)",
            ns,
            len(present),
            len(bank),
            f"{threshold:.4g}" if threshold is not None else "none",
            n_scores,
            time.perf_counter() - start,
            len(fetch),
        )
        return NamespaceMemory(
            ns,
            snap.version,
            status,
            bank,
            len(present),
            threshold,
            n_scores,
            snap.settings,
            p,
            calibration=calibration,
        )

    # ---- invalidation (same rules as PrototypeCache) -------------------------------------------

    def invalidate(self, ns: str, min_version: int = 0) -> None:
        """Marks ns stale (refreshed on next use; refresh_soon() to start at once)."""
        with self._lock:
            self._stale.add(ns)
            self._epoch[ns] = self._epoch.get(ns, 0) + 1
            self._failed.pop(ns, None)  # something changed: worth trying again at once
            if min_version:
                self._min_version[ns] = max(self._min_version.get(ns, 0), min_version)

    def invalidate_all(self) -> None:
        with self._lock:
            self._stale.update(self._held)
            for ns in self._held:
                self._epoch[ns] = self._epoch.get(ns, 0) + 1

    def forget(self, ns: str) -> None:
        with self._lock:
            self._held.pop(ns, None)
            self._stale.discard(ns)
            self._failed.pop(ns, None)
            self._changed.notify_all()

    def on_event(self, event: StoreEvent) -> None:
        """Store events: a namespace's change refreshes its held memory in the background; a
        resync marks all stale (refreshed on use)."""
        if event.kind == "resync" or event.namespace is None:
            self.invalidate_all()
            return
        with self._lock:
            known = event.namespace in self._held
        if known:
            self.invalidate(event.namespace, max(event.version, 0))
            self.refresh_soon(event.namespace)


@dataclass(frozen=True)
class UnknownRegion:
    """An anomalous region no prompted detection explains (original pixels)."""

    box: np.ndarray  # (4,) float32
    mask: np.ndarray  # (H, W) bool
    score: float  # normalised peak in [0.5, 1)


@dataclass(frozen=True)
class AnomalyOutcome:
    """What one inspection's anomaly signal says (for the response)."""

    status: str
    raw_score: float | None
    score: float | None  # normalised (0.5 at the threshold)
    threshold: float | None
    anomalous: bool
    unknown: list[UnknownRegion]
    unknown_rejects: bool
    map: np.ndarray | None  # (H, W) normalised map in [0, 1), when asked for
    references: int


def no_signal(status: str, references: int = 0) -> AnomalyOutcome:
    return AnomalyOutcome(status, None, None, None, False, [], False, None, references)


class AnomalyScorer:
    """Runs on the model thread: features of a batch, maps, regions, unknown detections."""

    def __init__(self, extractor: PatchFeatureExtractor) -> None:
        self.extractor = extractor

    def features(self, images: list[np.ndarray]) -> list[PatchGrid]:
        return self.extractor.extract(images)

    def outcome(
        self,
        memory: NamespaceMemory,
        grid: PatchGrid,
        explained_boxes: np.ndarray,
        with_map: bool,
    ) -> AnomalyOutcome:
        """Score one image; regions inside prompted boxes (n, 4) are explained, not unknown."""
        amap: AnomalyMap = anomaly_map(memory.bank, grid, memory.params.sigma)
        thr = memory.threshold
        if thr is None:
            return AnomalyOutcome(
                memory.status,
                amap.image_score,
                None,
                None,
                False,
                [],
                False,
                None,
                memory.references,
            )
        h, w = amap.pixel_map.shape
        explained = None
        if len(explained_boxes):
            explained = np.zeros((h, w), dtype=bool)
            for x0, y0, x1, y1 in np.asarray(explained_boxes, dtype=np.float64):
                explained[
                    max(0, int(np.floor(y0))) : max(0, int(np.ceil(y1))),
                    max(0, int(np.floor(x0))) : max(0, int(np.ceil(x1))),
                ] = True
        unknown = [
            UnknownRegion(r.box, r.mask, float(normalised(r.peak, thr)))
            for r in regions(amap.pixel_map, thr, memory.min_region_fraction)
            if unexplained(r.mask, explained, memory.params.explained_overlap)
        ]
        return AnomalyOutcome(
            status="ok",
            raw_score=amap.image_score,
            score=float(normalised(amap.image_score, thr)),
            threshold=thr,
            anomalous=amap.image_score > thr,
            unknown=unknown,
            unknown_rejects=memory.unknown_rejects,
            map=normalised(amap.pixel_map, thr).astype(np.float32) if with_map else None,
            references=memory.references,
        )


def build_scorer(settings: ServiceSettings) -> AnomalyScorer | None:
    """The feature extractor named by the settings (None when the anomaly mode is off). Call it
    on the model thread: torch's thread pools belong to the thread that first uses them."""
    if not settings.anomaly_enabled:
        log.warning("anomaly mode off (INSPECT_ANOMALY_ENABLED=false): no `unknown` detections")
        return None
    from models.anomaly.features import FeatureConfig

    config = FeatureConfig(source=settings.anomaly_backbone, image_size=settings.anomaly_image_size)
    extractor = PatchFeatureExtractor.build(config, settings.model_path)
    log.info(
        "anomaly features: %s EfficientNet-Lite0, %d px, %d-d (extractor %s...)",
        config.source,
        config.image_size,
        extractor.dim,
        extractor.fingerprint[:12],
    )
    return AnomalyScorer(extractor)
