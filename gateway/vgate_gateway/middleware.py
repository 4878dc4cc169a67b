"""ASGI middleware: request ids, the access log and the request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through unbuffered.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgate_gateway.logs import key_id_var, request_id_var
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import REQUEST_ID_HEADER

log = logging.getLogger("vgate.access")

_KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
        "/stats",
    }
)
# A client-supplied id is kept only if it is short and plain (it lands in logs and headers).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
_REQUEST_ID = REQUEST_ID_HEADER.encode()  # as ASGI spells header names


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Ids are a random per-process prefix and a counter: unique, and no system call each.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        self._series: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def _request_id(self, scope: Scope) -> str:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
            if name == _REQUEST_ID:
                incoming = value.decode("latin-1")
                if _VALID_ID.match(incoming):
                    return incoming
                break
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFFFFFF:016x}"

    def _observe(self, path: str, method: str, status: int, elapsed: float) -> None:
        key = (path, method, str(status))
        counter = self._series.get(key)
        if counter is None:
            counter = self._series[key] = self.metrics.requests.labels(*key)
        counter.inc()
        latency = self._latency.get(path)
        if latency is None:
            latency = self._latency[path] = self.metrics.latency.labels(path)
        latency.observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        token = request_id_var.set(request_id)
        key_token = key_id_var.set("-")
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
        method = scope["method"]
        status = 500
        started = time.monotonic()
        counted = path not in _QUIET_PATHS
        if counted:
            self.metrics.inflight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (_REQUEST_ID, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            if counted:
                self.metrics.inflight.dec()
            self._observe(path, method, status, elapsed)
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "%s %s %d %.1fms key=%s",
                    method,
                    scope["path"],
                    status,
                    elapsed * 1000,
                    key_id_var.get(),
                )
            key_id_var.reset(key_token)
            request_id_var.reset(token)
