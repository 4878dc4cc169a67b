"""The efficiency layer in front of the proxy: result cache -> in-flight dedup -> micro-batching.

A request the cache may answer (see :func:`vgate_gateway.cache.policy.is_cacheable`) is looked up
first; a hit replays the worker's answer (JSON or stream) under the replaying request's
id. A miss joins the in-flight call for the same request, or starts it; that call goes
through the micro-batcher (non-streaming completions and embeddings) or straight to the
proxy, and its complete answer fills the cache. Other requests skip the cache and dedup
but may still be batched. Every answer carries ``x-vgate-cache: hit`` or ``miss``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.responses import Response, StreamingResponse

from vgate_gateway.batching import BATCHABLE, BatchMetrics, Client, MicroBatcher, Reply
from vgate_gateway.cache.answer import Answer, Restamp, Stamp
from vgate_gateway.cache.policy import CACHE_HEADER, is_cacheable, parse_cache_mode, request_key
from vgate_gateway.cache.recorder import StreamRecorder, response_complete
from vgate_gateway.cache.store import CacheMetrics, ResponseCache
from vgate_gateway.dedup import (
    MAX_FLIGHTS,
    Deduplicator,
    DedupMetrics,
    FlightWriter,
    Head,
    SubscriberLagged,
    Subscription,
)
from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.handler import Handler
from vgate_gateway.offload import off_loop_if_large
from vgate_gateway.protocol import REQUEST_ID_HEADER, Kind, ParsedRequest
from vgate_gateway.relay import event_stream
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.sse import HEADERS as SSE_HEADERS
from vgate_gateway.sse import MEDIA_TYPE as SSE

log = logging.getLogger(__name__)

_JSON = "application/json"
#: Sent upstream with a merged call: the request id of every client it answers.
BATCH_IDS_HEADER = "x-vgate-batch-request-ids"


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


class Pipeline:
    """Wraps the proxy's handler with the cache, dedup and micro-batching."""

    def __init__(self, settings: GatewaySettings, forward: Handler, metrics: PipelineMetrics) -> None:
        self._forward = forward
        self._max_entry = settings.cache_max_entry_bytes
        self.cache = ResponseCache(
            settings.cache_maxsize, settings.cache_max_bytes, settings.cache_ttl_s, metrics=metrics.cache
        )
        self.dedup = Deduplicator(
            max_flights=MAX_FLIGHTS if settings.dedup else 0,
            max_lag_bytes=settings.dedup_max_lag_bytes,
            metrics=metrics.dedup,
        )
        endpoints = {Kind.COMPLETIONS: settings.batch_completions, Kind.EMBEDDINGS: settings.batch_embeddings}
        self.batcher = MicroBatcher(
            self._send,
            max_batch=settings.batch_size,
            wait_s=settings.batch_wait_ms / 1000,
            endpoints=frozenset(kind for kind, on in endpoints.items() if on),
            metrics=metrics.batch,
        )

    def stats_sections(self) -> dict[str, Any]:
        """``/stats`` sections: name -> callable returning JSON-able data."""
        return {
            "cache": lambda: {**self.cache.stats().as_dict(), "enabled": self.cache.enabled},
            "dedup": lambda: {"in_flight": len(self.dedup), "deduplicated": self.dedup.deduplicated},
            "batching": lambda: {
                "endpoints": sorted(self.batcher.endpoints),
                "batch_size": self.batcher.max_batch,
                "wait_ms": self.batcher.wait_s * 1000,
                "merged_batches": self.batcher.merged_batches,
                "merged_requests": self.batcher.merged_requests,
            },
        }

    async def handle(self, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Answer one OpenAI request (a :data:`~vgate_gateway.handler.Handler`)."""
        try:
            mode = parse_cache_mode(headers.get(CACHE_HEADER))
        except ValueError as exc:
            raise invalid_request(str(exc), code="invalid_cache_header") from None
        if CACHE_HEADER in headers:
            headers = {k: v for k, v in headers.items() if k != CACHE_HEADER}
        kind = req.kind
        if not is_cacheable(kind, req.payload, mode):
            return _tagged(await self._uncached(kind, req, headers), "miss")
        key = await off_loop_if_large(
            len(req.body), request_key, kind, req.model, req.payload, _tenant(headers)
        )
        stored = self.cache.get(key, kind) if self.cache.enabled else None
        if stored is not None:
            return _replay(stored, headers)
        return await self._shared(kind, key, req, headers)

    async def _uncached(self, kind: Kind, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        if req.stream or kind not in BATCHABLE:
            return await self._forward(req, headers)
        reply = await self._reply(kind, req, headers)
        return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))

    async def _reply(self, kind: Kind, req: ParsedRequest, headers: Mapping[str, str]) -> Reply:
        """A whole non-streaming answer, through the micro-batcher where it applies."""
        client = Client(headers.get(REQUEST_ID_HEADER, ""), (req, headers))
        if kind in BATCHABLE:
            # Requests with different credentials never share an upstream call.
            partition = _tenant(headers) or ""
            return await self.batcher.submit(kind, req.payload, client, partition=partition)
        return await self._send(kind, req.payload, [client])

    async def _send(self, kind: Kind, body: dict[str, Any], clients: Sequence[Client]) -> Reply:
        req, headers = clients[0].meta
        if body is not req.payload:  # a merged batch: a new body for the same endpoint
            encoded = json.dumps(body, separators=(",", ":")).encode()
            req = dataclasses.replace(req, body=encoded, payload=body)
        if len(clients) > 1:
            headers = {**headers, BATCH_IDS_HEADER: ",".join(c.request_id for c in clients)}
        resp = await self._forward(req, headers)
        content_type = resp.headers.get("content-type", _JSON)
        return Reply(resp.status_code, bytes(resp.body), {"content-type": content_type})

    async def _shared(self, kind: Kind, key: str, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Join (or start) the one upstream call for this request; the answer fills the cache."""
        call = _Call(kind, key, req, headers)
        sub = self.dedup.join(key, partial(self._produce, call), kind)
        # A follower's answer is re-stamped with its own id and time, as a replay is.
        restamp: Restamp | None = None
        try:
            head = await sub.head()
            if not req.stream or head.status != 200:
                body = b"".join([chunk async for chunk in sub.chunks()])
                sub.close()
                if not sub.leader and head.status == 200:
                    body = Stamp.of(body).for_request(headers.get(REQUEST_ID_HEADER, "")).apply(body)
                return Response(body, status_code=head.status, headers={**head.headers, CACHE_HEADER: "miss"})
        except BaseException:
            sub.close()
            raise
        if not sub.leader:
            restamp = Restamp()  # filled from the first chunk
        return event_stream(_follow(sub, restamp, headers.get(REQUEST_ID_HEADER, "")), {CACHE_HEADER: "miss"})

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
        recorder = StreamRecorder(min(self.cache.max_bytes, self._max_entry) if self.cache.enabled else 0)
        events: AsyncIterator[bytes] = resp.body_iterator  # type: ignore[assignment]
        try:
            async for events_run in events:  # whole events, one or several at a time
                recorder.feed(events_run)
                writer.push(events_run)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        answer = recorder.result()
        if answer is not None:
            self.cache.put(call.key, answer)

    def _store(self, kind: Kind, key: str, body: bytes) -> None:
        if not self.cache.enabled or len(body) > self._max_entry:
            return
        stamp = response_complete(kind, body)
        if stamp is not None:
            self.cache.put(key, Answer(body, stamp))


def _tenant(headers: Mapping[str, str]) -> str | None:
    """Who is asking, as far as the workers can tell: a digest of the credentials, never the key.

    Answers are shared (cache, dedup, batches) only among requests with the same credentials,
    so a client can never read an answer that a worker would have refused it.
    """
    credentials = headers.get("authorization")
    return hashlib.sha256(credentials.encode()).hexdigest() if credentials else None


async def _follow(sub: Subscription, restamp: Restamp | None, request_id: str) -> AsyncIterator[bytes]:
    """A client's stream of a shared call; leaving it (even mid-stream) unsubscribes.

    A follower's chunks are re-stamped (``restamp`` is set) with its own id and time.
    """
    try:
        async for chunk in sub.chunks():
            if restamp is not None:
                if not restamp.pairs:
                    restamp = Stamp.of(chunk).for_request(request_id)
                chunk = restamp.apply(chunk)
            yield chunk
    except OpenAIError as exc:
        yield exc.sse_event()
    except SubscriberLagged as exc:
        yield OpenAIError(
            503, f"This stream was dropped: it {exc}. Read faster or retry.", code="stream_lagged"
        ).sse_event()
    except Exception as exc:  # the shared call broke after the stream started
        log.warning("shared upstream stream failed: %s", type(exc).__name__)
        yield OpenAIError(502, "The model worker broke off its answer.", code="upstream_error").sse_event()
    finally:
        sub.close()


def _replay(stored: Answer, headers: Mapping[str, str]) -> Response:
    """A cache hit: the worker's own answer, under this request's id and the current time."""
    body = stored.stamp.for_request(headers.get(REQUEST_ID_HEADER, "")).apply(stored.body)
    if stored.media_type != SSE:
        return Response(body, media_type=stored.media_type, headers={CACHE_HEADER: "hit"})
    return event_stream(_once(body), {CACHE_HEADER: "hit"})


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _tagged(resp: Response, value: str) -> Response:
    resp.headers[CACHE_HEADER] = value
    return resp
