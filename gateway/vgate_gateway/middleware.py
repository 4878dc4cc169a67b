"""ASGI middleware: request ids, the access log and the request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through unbuffered.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgate_gateway.logs import key_id_var, request_id_var
from vgate_gateway.metrics import Metrics

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


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
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
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            if counted:
                self.metrics.inflight.dec()
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
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
