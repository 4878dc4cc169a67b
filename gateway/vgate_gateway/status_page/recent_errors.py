"""A bounded ring of the gateway's latest error answers, for ``/stats`` and the status page.

Each entry is what an operator needs to see a pattern — when, which status and error code,
which model and endpoint — and nothing a client sent beyond the model name (cut short): never
a prompt, a header or a key. The ring holds at most :data:`CAPACITY` entries per serving
process, so a flood of errors costs constant memory.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgate_gateway.guard import PAYLOAD_STATE

#: Most errors kept; older ones fall off.
CAPACITY = 50
#: Longest model name kept (it is client text when the model does not exist).
MAX_MODEL_CHARS = 80
#: Error bodies longer than this are not parsed for their code (the gateway's own are short).
MAX_PARSED_BODY = 4096
#: The paths named as they are; any other becomes "other" (a client chooses paths).
KNOWN_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
#: Probes answer 503 by design while the gateway starts: that is not an error a client saw.
PROBES = frozenset({"/health", "/ready"})
#: nginx's "client closed request": the client left, no answer was sent to anyone.
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class ErrorEntry:
    time: float
    status: int
    code: str | None
    model: str | None
    endpoint: str


class RecentErrors:
    """The last :data:`CAPACITY` error answers, and a count of all of them by status."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._ring: deque[ErrorEntry] = deque(maxlen=capacity)
        self._by_status: Counter[int] = Counter()

    def record(self, status: int, body: bytes | None, payload: object, path: str) -> None:
        """Note one error answer: its status, the code from its OpenAI error body, the model asked for."""
        self._by_status[status] += 1
        self._ring.append(
            ErrorEntry(
                time=round(time.time(), 3),
                status=status,
                code=error_code(body),
                model=_model(payload),
                endpoint=path if path in KNOWN_PATHS else "other",
            )
        )

    def snapshot(self) -> dict[str, Any]:
        """Newest first, for ``/stats``."""
        return {
            "capacity": self._ring.maxlen,
            "total_by_status": {str(s): n for s, n in sorted(self._by_status.items())},
            "recent": [asdict(e) for e in reversed(self._ring)],
        }


def error_code(body: bytes | None) -> str | None:
    """``error.code`` (else ``error.type``) of an OpenAI error body; None for anything else."""
    if not body or len(body) > MAX_PARSED_BODY:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return str(code)[:MAX_MODEL_CHARS] if code is not None else None


def _model(payload: object) -> str | None:
    model = payload.get("model") if isinstance(payload, dict) else None
    return model[:MAX_MODEL_CHARS] if isinstance(model, str) else None


class RecentErrorsMiddleware:
    """Records every answer with a status of 400 or more in ``errors``; passes everything through.

    It sits outside the guard, so refusals of keys, limits and bodies are seen too, and reads
    the model from the body the guard parsed. Only an error answer costs more than a comparison.
    """

    def __init__(self, app: ASGIApp, errors: RecentErrors) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        body: bytes | None = None

        async def sniff(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and body is None:
                body = message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, sniff)
        finally:
            if status >= 400 and status != CLIENT_CLOSED and scope["path"] not in PROBES:
                payload = scope.get("state", {}).get(PAYLOAD_STATE)
                self.errors.record(status, body, payload, scope["path"])
