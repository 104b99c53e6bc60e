"""The FastAPI application: `create_app()` wires settings, lifespan, middleware and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import state as live
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import BodyLimit, RequestAccounting
from service.routes import health, inspect, prompts, references, self_check
from service.schemas import Problem
from service.settings import ServiceSettings, get_settings

DESCRIPTION = """
Open-set industrial defect inspection (UniSpector visual prompts).

* **Cameras** (`inspect` key) post images to `POST /v1/inspect` and act on `verdict`.
* **QA engineers** (`admin` key) teach defect types with a few annotated images:
  `POST /v1/namespaces/{namespace}/prompts`, review them, remove them, export and import.
  For defects nobody has named yet, they register defect-free reference images
  (`POST /v1/namespaces/{namespace}/references`): every inspection then also gets an anomaly
  score and map, and unexplained anomalous regions come back as class `unknown`.
* **Operators** watch `/metrics` (Prometheus), `/readyz` and `/healthz`.

Every error is `application/problem+json` (RFC 9457).
"""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The app; settings default to the environment (`get_settings()`)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.inspect = await live.start(settings, metrics)
        try:
            yield
        finally:
            await live.stop(app.state.inspect)
            app.state.inspect = None

    app = FastAPI(
        title="Defect inspection service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.metrics = metrics
    app.state.inspect = None
    install_error_handlers(app)
    app.include_router(inspect.router)
    app.include_router(prompts.router)
    app.include_router(self_check.router)
    app.include_router(references.router)
    app.include_router(health.router)

    def body_limit(path: str) -> int:
        if path.endswith("/import"):
            return settings.max_import_bytes
        if path.endswith("/references"):  # several images in one registration
            per_request = settings.anomaly_max_references_per_request
            return per_request * settings.max_image_bytes + 1024 * 1024
        return 2 * settings.max_image_bytes + 1024 * 1024  # image + mask + form fields

    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(RequestAccounting, metrics=metrics)  # outermost: sees every status
    return app
