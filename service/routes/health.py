"""/healthz (alive), /readyz (ready to serve, or degraded), /metrics (Prometheus)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.schemas import Alive, Ready
from service.state import AppState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Alive, summary="Liveness: the process answers")
async def healthz() -> Alive:
    return Alive()


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: model loaded and warmed up, prompt store reachable",
    responses={503: {"model": Ready, "description": "not ready, or draining for shutdown"}},
)
async def readyz(request: Request) -> JSONResponse:
    """200 `ready`; 200 `degraded` while the store is down but cached prototypes still serve
    inspections (the inspect_prompt_store_up metric is 0 meanwhile); 503 `not_ready` or
    `draining` (do not route traffic here)."""
    state: AppState | None = request.app.state.inspect
    if state is None:
        body = Ready(
            status="not_ready",
            model={"loaded": False},
            store={"reachable": None},
            queue={"depth": 0, "capacity": 0},
            auth="open",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    store_up = state.health.up
    cached = len(state.cache)
    if state.draining or state.batcher.closing:
        status = "draining"
    elif not state.ready:
        status = "not_ready"
    elif store_up:
        status = "ready"
    else:
        status = "degraded" if cached else "not_ready"
    body = Ready(
        status=status,  # type: ignore[arg-type]
        model={
            "loaded": True,
            "warmed_up": state.ready,
            "fingerprint": state.fingerprint,
            "backend": state.backend.backend,
            "device": state.backend.device,
            "warmup_s": round(state.warmup_s, 3),
        },
        store={
            "reachable": store_up,
            "where": state.store.description,
            "embedded": state.store.embedded is not None,
            "down_for_s": None if store_up else round(time.monotonic() - state.health.since, 1),
            "cached_namespaces": cached,
        },
        queue={
            "depth": state.batcher.depth,
            "capacity": state.batcher.queue_size,
            "max_batch": state.batcher.max_batch,
        },
        auth="open" if state.keys.open_mode else "api-keys",
    )
    code = 200 if status in ("ready", "degraded") else 503
    return JSONResponse(body.model_dump(), status_code=code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
