"""The gateway's front door, as pure ASGI middleware in front of every route.

For every request: header hygiene (:mod:`vgate_gateway.hygiene`). For ``/v1/*`` also, in
this order, each answered in OpenAI's error shape:

1. the API key (401 ``invalid_api_key``),
2. the key's rate limits (429 ``rate_limit_exceeded`` with ``Retry-After``), taken before the
   body is read so a limited client costs no parsing,
3. the body limit (413) and a strict parse (400: :mod:`vgate_gateway.jsonbody`),
4. the key's model allow-list (404, exactly as for a model that is not served).

Every ``/v1`` answer then carries OpenAI's ``x-ratelimit-*`` headers, the real usage of the
answer is charged to the key's tokens bucket when it ends, and ``GET /v1/models`` lists only
the models the key may use. An exception no handler turned into an answer becomes a 500 in
OpenAI's shape here, inside the request-id middleware, so it too carries ``x-request-id``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgate_gateway.auth import ApiKey, KeyStore
from vgate_gateway.errors import OpenAIError
from vgate_gateway.hygiene import TrustedProxies, clean_headers
from vgate_gateway.jsonbody import ClientGone, declared_length, loads, read_body
from vgate_gateway.logs import key_id_var
from vgate_gateway.offload import off_loop_if_large
from vgate_gateway.ratelimit import Decision, Limiter, Limits, limits_for
from vgate_gateway.sse import MEDIA_TYPE as SSE_MEDIA_TYPE

log = logging.getLogger(__name__)

#: Where the parsed body waits for the route (``request.state.json_payload``).
PAYLOAD_STATE = "json_payload"


@dataclass(frozen=True)
class GuardConfig:
    max_body_bytes: int
    max_json_depth: int
    max_json_containers: int
    default_limits: Limits
    trusted_proxies: TrustedProxies


class Guard:
    def __init__(self, app: ASGIApp, *, keys: KeyStore, limiter: Limiter | None, config: GuardConfig) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        scope["headers"] = clean_headers(
            scope["headers"], client[0] if client else None, self.config.trusted_proxies
        )
        started: list[bool] = [False]

        async def tracked(message: Message) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["path"].startswith("/v1/"):
                await self._api(scope, receive, tracked)
            else:
                await self.app(scope, receive, tracked)
        except ClientGone:
            return
        except Exception as exc:
            if started[0]:
                raise
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            await _send_error(tracked, OpenAIError(500, "Internal server error", code="internal_error"))

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        decision: Decision | None = None
        try:
            key = self.keys.authenticate(headers.get(b"authorization"))
            key_id_var.set(key.key_id)
            limits = limits_for(key, self.config.default_limits)
            if self.limiter is not None and limits.active:
                decision = await self.limiter.admit(key.key_id, limits)
                if not decision.allowed:
                    raise decision.error()
            strip_usage = False
            if scope["method"] == "POST":
                body, strip_usage = await self._body(scope, receive, headers, key, limits)
                receive = _replay(body, receive)
        except OpenAIError as exc:
            await _send_error(send, exc, decision.headers() if decision else [])
            return
        meter = UsageMeter(strip_usage) if decision is not None and limits.tpm else None
        filter_models = key.models is not None and scope["method"] == "GET" and scope["path"] == "/v1/models"
        out = _ModelsFilter(send, key) if filter_models else send
        extra = decision.headers() if decision else []

        async def respond(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
                if meter is not None:
                    meter.start(message)
            elif meter is not None and message["type"] == "http.response.body":
                message["body"] = meter.feed(message.get("body", b""))
            await out(message)

        try:
            await self.app(scope, receive, respond)
        finally:
            if meter is not None and self.limiter is not None:
                self.limiter.charge(key.key_id, limits, meter.tokens())

    async def _body(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], key: ApiKey, limits: Limits
    ) -> tuple[bytes, bool]:
        """Read, parse and check the body; returns the bytes to forward and whether usage is stripped."""
        cfg = self.config
        body = await read_body(receive, cfg.max_body_bytes, declared_length(headers.get(b"content-length")))
        payload = await off_loop_if_large(len(body), loads, body, cfg.max_json_depth, cfg.max_json_containers)
        scope.setdefault("state", {})[PAYLOAD_STATE] = payload
        if not isinstance(payload, dict):
            return body, False
        model = payload.get("model")
        if isinstance(model, str) and not key.allows(model):
            raise model_not_found(model)
        if self.limiter is None or not limits.tpm or payload.get("stream") is not True:
            return body, False
        options = payload.get("stream_options") or {}
        if not isinstance(options, dict) or options.get("include_usage"):
            return body, False
        # Streams are charged from their usage chunk: ask for it, and keep it from the client.
        payload = {**payload, "stream_options": {**options, "include_usage": True}}
        scope["state"][PAYLOAD_STATE] = payload
        return orjson.dumps(payload), True


def model_not_found(model: str) -> OpenAIError:
    """The same 404 the router gives for a model that is not served."""
    return OpenAIError(
        404,
        f"The model '{model}' does not exist or is not served here. See GET /v1/models.",
        code="model_not_found",
        param="model",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the client's own messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, exc: OpenAIError, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = json.dumps(exc.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_SSE = SSE_MEDIA_TYPE.encode()


class UsageMeter:
    """The tokens one answer used, read from its ``usage`` as it passes."""

    def __init__(self, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._sse = False
        self._ok = False
        self._tail = b""
        self._total: int | None = None
        self._events = 0

    def start(self, message: Message) -> None:
        self._ok = message["status"] == 200
        content_type = dict(message.get("headers", [])).get(b"content-type", b"")
        self._sse = content_type.startswith(_SSE)

    def feed(self, chunk: bytes) -> bytes:
        if not self._ok or not chunk:
            return chunk
        if not self._sse:
            self._tail = (self._tail + chunk)[-16384:]
            return chunk
        self._events += chunk.count(b"data: ")
        if b'"usage"' not in chunk:
            return chunk
        kept = [e for e in chunk.split(b"\n\n") if not self._take_usage(e)]
        return b"\n\n".join(kept) if self._strip else chunk

    def _take_usage(self, event: bytes) -> bool:
        """Record the usage of one SSE event; True if it is the usage-only chunk to strip."""
        if b'"usage"' not in event or not event.startswith(b"data: "):
            return False
        try:
            obj = json.loads(event[6:])
        except ValueError:
            return False
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            self._total = usage["total_tokens"]
            return self._strip and not obj.get("choices")
        return False

    def tokens(self) -> int:
        """The answer's total tokens; for a stream cut short, one per event received."""
        if self._sse:
            return self._total if self._total is not None else self._events
        at = self._tail.rfind(b'"usage"')
        if at < 0:
            return 0
        text = self._tail[at + 7 :].lstrip().removeprefix(b":").decode("utf-8", "replace")
        try:
            usage, _ = json.JSONDecoder().raw_decode(text.lstrip())
        except ValueError:
            return 0
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        return total if isinstance(total, int) and total > 0 else 0


class _ModelsFilter:
    """``GET /v1/models`` narrowed to the models the key may use."""

    def __init__(self, send: Send, key: ApiKey) -> None:
        self._send = send
        self._key = key
        self._start: Message | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] != "http.response.body" or self._start is None:
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._chunks)
        if self._start["status"] == 200:
            body = self._narrow(body)
        headers = [(k, v) for k, v in self._start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _narrow(self, body: bytes) -> bytes:
        listing: Any = json.loads(body)
        listing["data"] = [m for m in listing.get("data", []) if self._key.allows(str(m.get("id")))]
        return json.dumps(listing).encode()
