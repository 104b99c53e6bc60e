"""What the service holds while it runs, built in the lifespan and torn down in reverse.

Start-up order: model and anomaly feature extractor (and warm-up, so /readyz means the first
request is not slow), store (external or embedded), prototype cache and anomaly memories, event
subscription, store health monitor, batcher.
Shutdown: stop intake, drain the queue, stop the subscription and monitor, close the store (and
stop the embedded redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from prompt_store.errors import StoreUnavailable
from prompt_store.records import PrototypeSnapshot, StoreEvent
from prompt_store.redis_store import EventSubscription
from service.anomaly import AnomalyMemories, AnomalyParams, build_scorer
from service.batching import BatchStats, MicroBatcher, model_thread
from service.exemplar_crops import ExemplarCropCache
from service.inference import BackendInfo, InspectJob, Inspector, InspectOutcome, build_predictor
from service.metrics import Metrics
from service.outline_gate import OutlineGate
from service.prototypes import PrototypeCache, StoreHealth
from service.security import KeyRing
from service.settings import ServiceSettings
from service.store import StoreHandle, open_store

log = logging.getLogger(__name__)


class ModelFileError(RuntimeError):
    """The model file cannot be served: the service refuses to start, saying which file and why."""

    def __init__(self, path: object, cause: Exception) -> None:
        where = f"INSPECT_MODEL_PATH={path}" if path is not None else "the embedded default model"
        why = str(cause).rstrip(".")
        super().__init__(
            f"cannot start: the model file ({where}) cannot be used: {why}. Point "
            "INSPECT_MODEL_PATH at a model file written by scripts/train.py (format "
            "unispector-model/1), or unset it to serve the embedded default model."
        )


@dataclass
class AppState:
    """The live parts of the service (one per process)."""

    settings: ServiceSettings
    metrics: Metrics
    keys: KeyRing
    inspector: Inspector
    backend: BackendInfo
    store: StoreHandle
    health: StoreHealth
    cache: PrototypeCache
    batcher: MicroBatcher[InspectJob, InspectOutcome]
    subscription: EventSubscription | None = None
    monitor: asyncio.Task[None] | None = None
    anomaly: AnomalyMemories | None = None  # None: the anomaly mode is off
    crops: ExemplarCropCache | None = None  # exemplar crops of the template check
    outlines: OutlineGate | None = None  # None: the model makes no gated proposals
    ready: bool = False
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)
    warmup_s: float = 0.0
    batch_rates: dict[int, float] = field(default_factory=dict)  # images/s by batch size

    @property
    def fingerprint(self) -> str:
        return self.inspector.predictor.fingerprint

    @property
    def default_threshold(self) -> float:
        configured = self.settings.score_threshold
        return configured if configured is not None else self.inspector.predictor.score_threshold


def _record_snapshot(metrics: Metrics, snap: PrototypeSnapshot) -> None:
    metrics.store_version.labels(namespace=snap.namespace).set(snap.version)
    metrics.store_classes.labels(namespace=snap.namespace).set(len(snap.class_names))


async def start(settings: ServiceSettings, metrics: Metrics) -> AppState:
    """Build everything; raises (and the server does not start) if model or store fail."""
    keys = KeyRing(settings.inspect_api_keys, settings.admin_api_keys)
    if keys.open_mode:
        log.warning(
            "OPEN MODE: no API key is configured (INSPECT_INSPECT_API_KEYS, "
            "INSPECT_ADMIN_API_KEYS); every caller may inspect AND change prompts. Use this only "
            "on a single trusted machine."
        )
    else:
        log.info(
            "API keys: %d inspect, %d admin",
            len(settings.inspect_api_keys),
            len(settings.admin_api_keys),
        )
    executor = model_thread()  # loads the model and runs every model call (see batching.py)
    loop = asyncio.get_running_loop()
    try:
        predictor, backend = await loop.run_in_executor(executor, build_predictor, settings)
    except (ValueError, OSError) as exc:  # corrupt, truncated or foreign model file
        executor.shutdown(wait=False)
        error = ModelFileError(settings.model_path, exc)
        log.error("%s", error)  # one clear line ahead of uvicorn's "startup failed" traceback
        raise error from None
    scorer = await loop.run_in_executor(executor, build_scorer, settings)
    inspector = Inspector(predictor, scorer)
    log.info(
        "model loaded",
        extra={
            "fields": {
                "fingerprint": predictor.fingerprint,
                "backend": backend.backend,
                "model_path": str(settings.model_path or "embedded default"),
            }
        },
    )
    metrics.backend.info({"backend": backend.backend, "device": backend.device})
    metrics.model.info(
        {
            "fingerprint": predictor.fingerprint,
            "image_size": str(backend.image_size),
            "embed_dim": str(predictor.embed_dim),
            "score_threshold": str(settings.score_threshold or predictor.score_threshold),
        }
    )
    # On the main thread, blocking: nothing is served yet, and an embedded redis-server started
    # from the main thread is tied to this process (it gets SIGTERM if the service dies).
    handle = open_store(settings)
    metrics.store_up.set(1)

    def on_health(up: bool) -> None:
        metrics.store_up.set(1 if up else 0)
        if up:
            cache.invalidate_all()  # refetch what may have changed during the outage
            if anomaly is not None:
                anomaly.invalidate_all()

    health = StoreHealth(on_health)
    cache = PrototypeCache(
        handle.store, predictor.fingerprint, health, lambda s: _record_snapshot(metrics, s)
    )
    anomaly = None
    if scorer is not None:
        anomaly = AnomalyMemories(
            handle.store.references,
            scorer.extractor.fingerprint,
            scorer.extractor.dim,
            health,
            AnomalyParams.from_settings(settings),
            settings.anomaly_max_namespaces,
        )

    def on_batch(stats: BatchStats) -> None:
        metrics.batch_size.observe(stats.size)
        for wait in stats.queue_waits:
            metrics.stage_duration.labels(stage="queue").observe(wait)

    batcher: MicroBatcher[InspectJob, InspectOutcome] = MicroBatcher(
        inspector.run_batch,
        max_batch=settings.max_batch_size,
        max_wait_s=settings.max_batch_wait_ms / 1000.0,
        queue_size=settings.queue_size,
        on_batch=on_batch,
        on_depth=metrics.queue_depth.set,
        executor=executor,
    )
    metrics.queue_capacity.set(settings.queue_size)
    await batcher.start()
    state = AppState(settings, metrics, keys, inspector, backend, handle, health, cache, batcher)
    state.anomaly = anomaly
    crops = ExemplarCropCache(handle.store, settings.max_image_bytes, settings.max_image_pixels)
    state.crops = crops
    info = getattr(inspector.predictor, "info", None)  # a model file's settings (not on fakes)
    top = getattr(inspector.predictor, "proposal_score", 0.0)
    if info is not None and top > 0 and info.proposal_gate_iou < 1:
        state.outlines = OutlineGate(
            handle.store,
            top,
            info.proposal_gate_iou,
            settings.max_image_bytes,
            settings.max_image_pixels,
        )
    outlines = state.outlines
    if anomaly is not None:
        metrics.anomaly_memory_bytes.set_function(anomaly.nbytes)
        metrics.anomaly_namespaces.set_function(lambda: len(anomaly))

    def on_event(event: StoreEvent) -> None:
        cache.on_event(event)
        if event.kind == "namespace_deleted" and event.namespace is not None:
            crops.forget(event.namespace)
            if outlines is not None:
                outlines.forget(event.namespace)
        if anomaly is not None:
            anomaly.on_event(event)

    try:
        state.subscription = handle.store.subscribe(on_event, None, wait_s=0)
    except StoreUnavailable as exc:  # cannot happen with wait_s=0, kept for clarity
        log.warning("event subscription not active yet: %s", exc)
    state.monitor = asyncio.create_task(_monitor(state), name="store-health")
    if settings.warmup:
        state.warmup_s = await batcher.run_exclusive(inspector.warmup)
        log.info("warm-up done in %.2f s", state.warmup_s)
    if settings.batch_autotune and settings.max_batch_size > 1:
        best, rates = await batcher.run_exclusive(
            inspector.best_batch_size, settings.max_batch_size
        )
        batcher.max_batch = best
        state.batch_rates = rates
        log.info(
            "batch size %d chosen (images/s by batch size: %s)",
            best,
            ", ".join(f"{k}: {v:.1f}" for k, v in rates.items()),
        )
    metrics.max_batch.set(batcher.max_batch)
    state.ready = True
    return state


async def _monitor(state: AppState) -> None:
    """PING the store every store_check_interval_s; flips StoreHealth both ways."""
    interval = state.settings.store_check_interval_s
    while True:
        try:
            await run_in_threadpool(state.store.store.ping)
            state.health.set(True)
        except StoreUnavailable as exc:
            state.health.set(False, str(exc).split(";")[0])
        except Exception:  # never let the monitor die
            log.exception("store health check failed unexpectedly")
        await asyncio.sleep(interval)


async def stop(state: AppState) -> None:
    """Drain and release, in reverse order of start."""
    state.draining = True
    state.ready = False
    if state.outlines is not None:  # no new model work for a gate decision under way
        await state.outlines.close()
    await state.batcher.close(timeout=state.settings.shutdown_timeout_s)
    if state.anomaly is not None:  # before the store closes: a refresh under way reads it
        await run_in_threadpool(state.anomaly.close)
    if state.monitor is not None:
        state.monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.monitor
    if state.subscription is not None:
        await run_in_threadpool(state.subscription.stop)
    await run_in_threadpool(state.store.close)
    log.info("service stopped")
