"""Errors as RFC 9457 problem details (`application/problem+json`).

Every refusal the service makes is a `Problem` with a stable `type` slug, a status and a one-line
detail saying what to change. Store errors, validation errors, Starlette's own HTTP errors (404
for unknown paths, 405) and anything unexpected are mapped here, so a client never sees an HTML
page or a bare traceback. Handlers count errors by type in the metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from prompt_store.errors import (
    Conflict,
    InvalidInput,
    ModelMismatch,
    NotFound,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://defect-inspector.dev/problems/"
CLIENT_CLOSED_REQUEST = 499  # not sent anywhere: the client is gone (nginx's convention)

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An HTTP error answered as problem details. `kind` is the slug of the type URI."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        self.extra = extra or {}


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    """The JSON body and headers of a problem; counts it in the metrics when they exist."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.kind,
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extra,
    }
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(type=problem.kind).inc()
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def from_store_error(exc: StoreError) -> Problem:
    """Map a prompt-store error to its HTTP meaning (see prompt_store/errors.py)."""
    if isinstance(exc, StoreUnavailable):
        return Problem(
            503,
            "store-unavailable",
            "the prompt store is unreachable; registrations and changes are refused until it "
            "returns (inspections keep using the last prototypes)",
            retry_after=5,
        )
    if isinstance(exc, ModelMismatch):
        return Problem(409, "model-mismatch", str(exc))
    if isinstance(exc, NotFound):
        return Problem(404, "not-found", str(exc))
    if isinstance(exc, Conflict):
        return Problem(409, "conflict", str(exc))
    if isinstance(exc, InvalidInput):
        return Problem(422, "invalid-input", str(exc))
    return Problem(500, "store-error", "the prompt store failed unexpectedly")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        out.append(
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem-details handlers on an app."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        problem = from_store_error(exc)
        if problem.status >= 500:
            log.warning("prompt store error on %s: %s", request.url.path, exc)
        return problem_response(request, problem)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        return problem_response(
            request, Problem(422, "validation-error", detail, extra={"errors": errors})
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        problem = Problem(exc.status_code, kind, str(exc.detail), headers=exc.headers)
        return problem_response(request, problem)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The caller hung up mid-upload: nobody to answer and nothing wrong with the service
        # (no traceback); 499 (nginx's "client closed request") only shows in metrics and logs.
        log.info("client disconnected before its request was read: %s", request.url.path)
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(type="client-disconnected").inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = Problem(500, "internal-error", "an unexpected error occurred; it was logged")
        return problem_response(request, problem)
