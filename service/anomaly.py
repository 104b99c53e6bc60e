"""The anomaly mode in the service: per-namespace memories of normal appearance, and scoring.

Beside the prompted detector, every inspection of a namespace that has defect-free reference
images also gets an anomaly map and score (models/anomaly). Regions above the threshold that no
prompted detection explains come back as detections of class `unknown`.

`AnomalyMemories` holds, per namespace, the memory bank built from the references' stored patch
features (never the images) and its calibrated threshold, like `PrototypeCache` holds prototypes:
a memory becomes stale on the namespace's store events (every replica subscribes), on this
replica's own writes, and after a resync or an outage; a stale memory is refreshed on next use,
incrementally: only references it does not hold yet are read (and only the prefix of their
patches the memory budget needs), removed ones are dropped, and the threshold is recalibrated
(leave-one-out on a fixed draw of references) only when the set of references changed. At most
`anomaly_max_namespaces` memories are held (least recently used dropped first), each bounded by
`anomaly_max_patches` rows. Refreshes run on the model thread (they use torch, as scoring does).

While the store is unreachable the memory held is used (a namespace never loaded has no anomaly
signal: status `unavailable`); model or extractor mismatches switch the signal off for that
namespace (status `model_mismatch`, logged) instead of failing inspections.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
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
    """Namespace -> NamespaceMemory (bounded LRU), refreshed incrementally; thread-safe."""

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
        self._held: OrderedDict[str, NamespaceMemory] = OrderedDict()
        self._stale: set[str] = set()
        self._min_version: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def nbytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._held.values())

    def peek(self, ns: str) -> CachedMemory | None:
        """The held memory when it is current (no store access); None when it needs a refresh."""
        with self._lock:
            mem = self._held.get(ns)
            if mem is not None:
                self._held.move_to_end(ns)
            fresh = mem is not None and ns not in self._stale
            fresh = fresh and mem.version >= self._min_version.get(ns, 0)  # type: ignore[union-attr]
        if fresh:
            return CachedMemory(mem, degraded=not self._health.up)
        if not self._health.up and mem is not None:
            return CachedMemory(mem, degraded=True)
        return None

    def get(self, ns: str) -> CachedMemory:
        """The current memory, refreshed from the store if needed (blocking: run it on the model
        thread). NotFound passes through."""
        cached = self.peek(ns)
        if cached is not None:
            return cached
        with self._lock:
            old = self._held.get(ns)
        if not self._health.up:  # never block the model thread on retries during an outage
            return CachedMemory(old, degraded=True)
        try:
            snap = self._store.snapshot(ns)
            mem = self._rebuild(snap, old)
        except StoreUnavailable as exc:
            self._health.set(False, str(exc))
            return CachedMemory(old, degraded=True)
        except NotFound:
            self.forget(ns)
            raise
        with self._lock:
            current = self._held.get(ns)
            if current is None or mem.version >= current.version:
                self._held[ns] = mem
                self._held.move_to_end(ns)
            if self._held[ns].version >= self._min_version.get(ns, 0):
                self._stale.discard(ns)
            while len(self._held) > self._max:
                dropped, _ = self._held.popitem(last=False)
                self._stale.discard(dropped)
        return CachedMemory(mem, degraded=False)

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
        with self._lock:
            self._stale.add(ns)
            if min_version:
                self._min_version[ns] = max(self._min_version.get(ns, 0), min_version)

    def invalidate_all(self) -> None:
        with self._lock:
            self._stale.update(self._held)

    def forget(self, ns: str) -> None:
        with self._lock:
            self._held.pop(ns, None)
            self._stale.discard(ns)

    def on_event(self, event: StoreEvent) -> None:
        if event.kind == "resync" or event.namespace is None:
            self.invalidate_all()
            return
        with self._lock:
            known = event.namespace in self._held
        if known:
            self.invalidate(event.namespace, max(event.version, 0))


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
