"""The efficiency layer in front of the proxy: result cache -> in-flight dedup -> micro-batching.

A request the cache may answer (see :func:`vgate_gateway.cache.is_cacheable`) is looked up
first; a hit is answered without a worker, as JSON or as a replayed stream. A miss joins
the in-flight call for the same request, or starts it; that call goes through the
micro-batcher (non-streaming completions and embeddings) or straight to the proxy, and
its complete answer fills the cache. Other requests skip the cache and dedup but may
still be batched. Every answer carries ``x-vgate-cache: hit`` or ``miss``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.responses import Response, StreamingResponse

from vgate_gateway.batching import PROMPT_FIELD, BatchMetrics, MicroBatcher, Reply
from vgate_gateway.cache import (
    CACHE_HEADER,
    CacheMetrics,
    ResponseCache,
    StreamAssembler,
    is_cacheable,
    parse_cache_mode,
    request_key,
    response_cacheable,
    synthesize_stream,
)
from vgate_gateway.dedup import Deduplicator, DedupMetrics, FlightWriter, Head, Subscription
from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.protocol import Handler, Kind, ParsedRequest
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.sse import HEADERS as SSE_HEADERS
from vgate_gateway.sse import MEDIA_TYPE as SSE
from vgate_gateway.sse import EventSplitter, event_data, event_stream

log = logging.getLogger(__name__)

_JSON = "application/json"
#: Open flights tracked at once; beyond it identical requests each go upstream.
MAX_FLIGHTS = 1024


@dataclass(frozen=True)
class PipelineMetrics:
    """The efficiency series, created once per app on its registry."""

    cache: CacheMetrics
    dedup: DedupMetrics
    batch: BatchMetrics

    @classmethod
    def register(cls, registry: CollectorRegistry) -> PipelineMetrics:
        """Create and register every series on ``registry``."""
        return cls(CacheMetrics(registry), DedupMetrics(registry), BatchMetrics(registry))


@dataclass(frozen=True)
class _Call:
    """One upstream call a flight makes on behalf of its subscribers."""

    kind: Kind
    key: str
    req: ParsedRequest
    headers: Mapping[str, str]
    #: The client did not ask for the usage chunk; it was requested only to fill the cache.
    strip_usage: bool


class Pipeline:
    """Wraps the proxy's handler with the cache, dedup and micro-batching."""

    def __init__(self, settings: GatewaySettings, forward: Handler, metrics: PipelineMetrics) -> None:
        self._forward = forward
        self.cache = ResponseCache(
            settings.cache_maxsize, settings.cache_max_bytes, settings.cache_ttl_s, metrics=metrics.cache
        )
        self.dedup = Deduplicator(max_flights=MAX_FLIGHTS if settings.dedup else 0, metrics=metrics.dedup)
        self.batcher = MicroBatcher(
            self._send,
            max_batch=settings.batch_size,
            wait_s=settings.batch_wait_ms / 1000,
            metrics=metrics.batch,
        )

    def stats_sections(self) -> dict[str, Any]:
        """``/stats`` sections: name -> callable returning JSON-able data."""
        return {
            "cache": lambda: {**self.cache.stats().as_dict(), "enabled": self.cache.enabled},
            "dedup": lambda: {"in_flight": len(self.dedup), "deduplicated": self.dedup.deduplicated},
            "batching": lambda: {
                "batch_size": self.batcher.max_batch,
                "wait_ms": self.batcher.wait_s * 1000,
                "merged_batches": self.batcher.merged_batches,
                "merged_requests": self.batcher.merged_requests,
            },
        }

    async def handle(self, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Answer one OpenAI request (a :data:`~vgate_gateway.protocol.Handler`)."""
        try:
            mode = parse_cache_mode(headers.get(CACHE_HEADER))
        except ValueError as exc:
            raise invalid_request(str(exc), code="invalid_cache_header") from None
        if CACHE_HEADER in headers:
            headers = {k: v for k, v in headers.items() if k != CACHE_HEADER}
        kind = req.kind
        if not is_cacheable(kind, req.payload, mode):
            return _tagged(await self._uncached(kind, req, headers), "miss")
        key = request_key(kind, req.model, req.payload, tenant=_tenant(headers))
        stored = self.cache.get(key, kind) if self.cache.enabled else None
        if stored is not None:
            return _replay(kind, req, stored)
        return await self._shared(kind, key, req, headers)

    async def _uncached(self, kind: Kind, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        if req.stream or kind not in PROMPT_FIELD:
            return await self._forward(req, headers)
        reply = await self._reply(kind, req, headers)
        return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))

    async def _reply(self, kind: Kind, req: ParsedRequest, headers: Mapping[str, str]) -> Reply:
        """A whole non-streaming answer, through the micro-batcher where it applies."""
        if kind in PROMPT_FIELD:
            # Requests with different credentials never share an upstream call.
            partition = _tenant(headers) or ""
            return await self.batcher.submit(kind, req.payload, meta=(req, headers), partition=partition)
        return await self._send(kind, req.payload, (req, headers))

    async def _send(self, kind: Kind, body: dict[str, Any], meta: Any) -> Reply:
        req, headers = meta
        if body is not req.payload:  # a merged batch: a new body for the same endpoint
            encoded = json.dumps(body, separators=(",", ":")).encode()
            req = dataclasses.replace(req, body=encoded, payload=body)
        resp = await self._forward(req, headers)
        content_type = resp.headers.get("content-type", _JSON)
        return Reply(resp.status_code, bytes(resp.body), {"content-type": content_type})

    async def _shared(self, kind: Kind, key: str, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Join (or start) the one upstream call for this request; the answer fills the cache."""
        strip_usage = req.stream and not req.include_usage
        upstream = _with_usage(req) if strip_usage else req
        call = _Call(kind, key, upstream, headers, strip_usage)
        # Streams and JSON answers of one request are different bytes: separate flights.
        flight_key = f"{key}:{'sse' if req.stream else 'json'}:{int(req.include_usage)}"
        sub = self.dedup.join(flight_key, partial(self._produce, call), kind)
        try:
            head = await sub.head()
            if not req.stream or head.status != 200:
                body = b"".join([chunk async for chunk in sub.chunks()])
                sub.close()
                return Response(body, status_code=head.status, headers={**head.headers, CACHE_HEADER: "miss"})
        except BaseException:
            sub.close()
            raise
        return event_stream(_follow(sub), {CACHE_HEADER: "miss"})

    async def _produce(self, call: _Call, writer: FlightWriter) -> None:
        """The upstream call of one flight: publish its answer, then store it if complete."""
        if not call.req.stream:
            reply = await self._reply(call.kind, call.req, call.headers)
            writer.start(Head(reply.status, reply.headers))
            writer.push(reply.body)
            if reply.status == 200:
                self._store(call.kind, call.key, reply.body)
            return
        resp = await self._forward(call.req, call.headers)
        if not isinstance(resp, StreamingResponse):  # the worker refused: relay its error
            writer.start(Head(resp.status_code, {"content-type": resp.headers.get("content-type", _JSON)}))
            writer.push(bytes(resp.body))
            return
        writer.start(Head(200, {"content-type": SSE, **SSE_HEADERS}))
        assembler = StreamAssembler(call.kind, self.cache.max_bytes)
        events: AsyncIterator[bytes] = resp.body_iterator  # type: ignore[assignment]
        try:
            async for events_run in events:  # whole events, one or several at a time
                assembler.feed(events_run)
                if call.strip_usage and b'"usage"' in events_run:
                    events_run = b"".join(e for e in EventSplitter().feed(events_run) if not _usage_only(e))
                if events_run:
                    writer.push(events_run)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        result = assembler.result()
        if result is not None and self.cache.enabled and response_cacheable(call.kind, result):
            self.cache.put(call.key, json.dumps(result, separators=(",", ":")).encode())

    def _store(self, kind: Kind, key: str, body: bytes) -> None:
        if not self.cache.enabled:
            return
        try:
            answer = json.loads(body)
        except ValueError:
            return
        if isinstance(answer, dict) and response_cacheable(kind, answer):
            self.cache.put(key, body)


def _tenant(headers: Mapping[str, str]) -> str | None:
    """Who is asking, as far as the workers can tell: a digest of the credentials, never the key.

    Answers are shared (cache, dedup, batches) only among requests with the same credentials,
    so a client can never read an answer that a worker would have refused it.
    """
    credentials = headers.get("authorization")
    return hashlib.sha256(credentials.encode()).hexdigest() if credentials else None


def _with_usage(req: ParsedRequest) -> ParsedRequest:
    """The same stream request asking for the usage chunk (a cached answer needs its usage)."""
    options = {**(req.payload.get("stream_options") or {}), "include_usage": True}
    payload = {**req.payload, "stream_options": options}
    body = json.dumps(payload, separators=(",", ":")).encode()
    return dataclasses.replace(req, body=body, payload=payload, include_usage=True)


def _usage_only(event: bytes) -> bool:
    """Whether an SSE event is the final usage chunk (``choices`` empty, ``usage`` set)."""
    if b'"usage"' not in event:
        return False
    try:
        chunk = json.loads(event_data(event))
    except ValueError:
        return False
    return isinstance(chunk, dict) and not chunk.get("choices") and bool(chunk.get("usage"))


async def _follow(sub: Subscription) -> AsyncIterator[bytes]:
    """A client's stream of a shared call; leaving it (even mid-stream) unsubscribes."""
    try:
        async for chunk in sub.chunks():
            yield chunk
    except OpenAIError as exc:
        yield exc.sse_event()
    except Exception as exc:  # the shared call broke after the stream started
        log.warning("shared upstream stream failed: %s", type(exc).__name__)
        yield OpenAIError(502, "The model worker broke off its answer.", code="upstream_error").sse_event()
    finally:
        sub.close()


async def _events(events: Iterable[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def _replay(kind: Kind, req: ParsedRequest, stored: bytes) -> Response:
    """A cache hit, as JSON or as a stream, whichever the client asked for."""
    if not req.stream:
        return Response(stored, media_type=_JSON, headers={CACHE_HEADER: "hit"})
    events = synthesize_stream(kind, json.loads(stored), req.include_usage)
    return event_stream(_events(events), {CACHE_HEADER: "hit"})


def _tagged(resp: Response, value: str) -> Response:
    resp.headers[CACHE_HEADER] = value
    return resp
