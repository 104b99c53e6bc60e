"""Per-namespace prototype matrices held in memory, refreshed by store events.

The hot path (every inspection) reads `PrototypeCache.get(ns)`: a dictionary lookup while the
snapshot is current. A snapshot becomes stale when a change event for its namespace arrives (every
replica subscribes to the store's pub/sub channel), when this replica itself wrote to the
namespace (so the next request sees the change even before the event comes back), or after a
`resync` (the subscription reconnected and may have missed events). A stale snapshot is
refetched on next use.

Outages: while `StoreHealth` says the store is down, `get` does not try Redis for a namespace it
holds: it serves the last snapshot (flagged `degraded`). A namespace it never fetched is tried
once anyway (the store may be back before the next health check notices) and refused (503) only
if that fails. When the store answers again everything is marked stale and refetched on next use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prompt_store.base import PromptStore
from prompt_store.errors import NotFound, StoreUnavailable
from prompt_store.records import PrototypeSnapshot, StoreEvent
from service.errors import Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedPrototypes:
    """What an inspection uses: the snapshot and whether it may be out of date (outage)."""

    snapshot: PrototypeSnapshot
    degraded: bool


class StoreHealth:
    """Whether the prompt store answers; flipped by a periodic PING and by failed calls."""

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self._up = True
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def up(self) -> bool:
        return self._up

    @property
    def since(self) -> float:
        """time.monotonic() of the last change."""
        return self._since

    def set(self, up: bool, reason: str = "") -> None:
        """Record the state; logs and notifies on a change only."""
        with self._lock:
            if up == self._up:
                return
            self._up = up
            self._since = time.monotonic()
        if up:
            log.warning("prompt store reachable again; prototypes will be refetched")
        else:
            log.error("prompt store unreachable (%s); inspecting with cached prototypes", reason)
        if self._on_change is not None:
            self._on_change(up)


class PrototypeCache:
    """Namespace -> latest PrototypeSnapshot, thread-safe."""

    def __init__(
        self,
        store: PromptStore,
        fingerprint: str,
        health: StoreHealth,
        on_snapshot: Callable[[PrototypeSnapshot], None] | None = None,
    ) -> None:
        self._store = store
        self._fingerprint = fingerprint
        self._health = health
        self._on_snapshot = on_snapshot
        self._lock = threading.Lock()
        self._snapshots: dict[str, PrototypeSnapshot] = {}
        self._stale: set[str] = set()
        self._min_version: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._snapshots)

    def get(self, ns: str) -> CachedPrototypes:
        """The namespace's prototypes; NotFound/ModelMismatch from the store pass through."""
        with self._lock:
            snap = self._snapshots.get(ns)
            fresh = snap is not None and ns not in self._stale
            fresh = fresh and snap.version >= self._min_version.get(ns, 0)  # type: ignore[union-attr]
        if fresh:  # while the store is down "fresh" only means "no event said otherwise"
            return CachedPrototypes(snap, degraded=not self._health.up)  # type: ignore[arg-type]
        if not self._health.up and snap is not None:
            return self._fallback(ns, snap)
        try:
            new = self._store.fetch_prototypes(ns, self._fingerprint)
        except StoreUnavailable as exc:
            self._health.set(False, str(exc))
            return self._fallback(ns, snap)
        except NotFound:
            self._health.set(True)
            self.forget(ns)
            raise
        self._health.set(True)
        with self._lock:
            current = self._snapshots.get(ns)
            if current is None or new.version >= current.version:
                self._snapshots[ns] = new
            if self._snapshots[ns].version >= self._min_version.get(ns, 0):
                self._stale.discard(ns)
        if self._on_snapshot is not None:
            self._on_snapshot(new)
        return CachedPrototypes(new, degraded=False)

    def _fallback(self, ns: str, snap: PrototypeSnapshot | None) -> CachedPrototypes:
        if snap is None:
            raise Problem(
                503,
                "store-unavailable",
                f"the prompt store is unreachable and namespace {ns!r} has not been loaded on "
                "this replica yet",
                retry_after=5,
            )
        return CachedPrototypes(snap, degraded=True)

    def invalidate(self, ns: str, min_version: int = 0) -> None:
        """Refetch `ns` on next use; with min_version, never serve an older snapshot again."""
        with self._lock:
            self._stale.add(ns)
            if min_version:
                self._min_version[ns] = max(self._min_version.get(ns, 0), min_version)

    def invalidate_all(self) -> None:
        """Refetch everything on next use (after a resync or the end of an outage)."""
        with self._lock:
            self._stale.update(self._snapshots)

    def forget(self, ns: str) -> None:
        """Drop a namespace (it was deleted)."""
        with self._lock:
            self._snapshots.pop(ns, None)
            self._stale.discard(ns)

    def on_event(self, event: StoreEvent) -> None:
        """Subscription callback (runs on the listener thread)."""
        if event.kind == "resync" or event.namespace is None:
            self.invalidate_all()
            return
        with self._lock:
            known = event.namespace in self._snapshots
        if known:
            self.invalidate(event.namespace, max(event.version, 0))

    def cached_namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._snapshots)
