"""Two small ASGI middlewares: request accounting (metrics, request id, log line) and a body cap.

Pure ASGI rather than BaseHTTPMiddleware: no extra task per request, and the body cap counts
bytes as they arrive instead of after the whole body sits in memory.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from service.errors import PROBLEM_BASE, PROBLEM_JSON, Problem
from service.metrics import Metrics

log = logging.getLogger("service.access")
Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class RequestAccounting:
    """Counts and times every HTTP request by route template and status; logs one JSON line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        if len(request_id) > 128 or not request_id.isprintable():
            request_id = uuid.uuid4().hex

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            labels = {"route": template, "method": scope["method"], "status": str(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.request_duration.labels(**labels).observe(seconds)
            if template not in ("/metrics", "/healthz", "/readyz"):
                log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "route": template,
                            "path": scope.get("path"),
                            "status": status,
                            "duration_ms": round(seconds * 1000, 2),
                        }
                    },
                )


class BodyLimit:
    """Refuses request bodies over a per-path limit with 413, before they fill memory."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_problem(
                send, scope, 413, "body-too-large", f"the request body exceeds {limit} bytes"
            )
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # and hang up after answering: no reading the rest
                    raise Problem(
                        413,
                        "body-too-large",
                        f"the request body exceeds {limit} bytes",
                        headers={"Connection": "close"},
                    )
            return message

        await self.app(scope, limited_receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_problem(send: Any, scope: Scope, status: int, kind: str, detail: str) -> None:
    body = json.dumps(
        {
            "type": PROBLEM_BASE + kind,
            "title": "Content Too Large",
            "status": status,
            "detail": detail,
            "instance": scope.get("path", ""),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
