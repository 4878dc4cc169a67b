"""The efficiency layer in front of the proxy: result cache -> in-flight dedup -> micro-batching.

A request the cache may answer (see :func:`vgate_gateway.efficiency.cache.policy.is_cacheable`) is looked up
first; a hit replays the worker's answer (JSON or stream) under the replaying request's
id. A miss joins the in-flight call for the same request, or starts it; that call goes
through the micro-batcher (non-streaming completions and embeddings) or straight to the
proxy, and its complete answer fills the cache. Other requests skip the cache and dedup
but may still be batched. Every answer carries ``x-vgate-cache: hit`` or ``miss``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from vgate_gateway.efficiency.batching import BATCHABLE, BatchMetrics, Client, MicroBatcher
from vgate_gateway.efficiency.cache.entry import Entry, Restamp, Stamp
from vgate_gateway.efficiency.cache.policy import is_cacheable, parse_cache_mode, request_key
from vgate_gateway.efficiency.cache.recorder import StreamRecorder, response_complete
from vgate_gateway.efficiency.cache.store import CacheMetrics, ResponseCache
from vgate_gateway.efficiency.dedup import (
    MAX_FLIGHTS,
    Deduplicator,
    DedupMetrics,
    FlightWriter,
    SubscriberLagged,
    Subscription,
)
from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.offload import off_loop_if_large
from vgate_gateway.protocol import CACHE_HEADER, Answer, Handler, Kind, Request, Usage
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.sse import MEDIA_TYPE as SSE

log = logging.getLogger(__name__)

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

    async def handle(self, req: Request) -> Answer:
        """Answer one OpenAI request (a :data:`~vgate_gateway.protocol.Handler`)."""
        try:
            mode = parse_cache_mode(req.cache_mode)
        except ValueError as exc:
            raise invalid_request(str(exc), code="invalid_cache_header") from None
        if not is_cacheable(req.kind, req.payload, mode):
            if req.stream or req.kind not in BATCHABLE:
                answer = await self._forward(req)
            else:
                answer = await self._whole(req)
            answer.headers[CACHE_HEADER] = "miss"
            return answer
        key = await off_loop_if_large(
            len(req.body), request_key, req.kind, req.model, _keyed(req), req.tenant
        )
        stored = self.cache.get(key, req.kind) if self.cache.enabled else None
        if stored is not None:
            return _replay(stored, req.request_id)
        return await self._shared(key, req)

    async def _whole(self, req: Request) -> Answer:
        """A whole non-streaming answer, through the micro-batcher where it applies."""
        client = Client(req.request_id, req)
        if req.kind in BATCHABLE:
            # Requests with different credentials never share an upstream call.
            return await self.batcher.submit(req.kind, req.payload, client, partition=req.tenant or "")
        return await self._send(req.kind, req.payload, [client])

    async def _send(self, kind: Kind, body: dict[str, Any], clients: Sequence[Client]) -> Answer:
        req: Request = clients[0].meta
        if body is not req.payload:  # a merged batch: a new body for the same endpoint
            encoded = json.dumps(body, separators=(",", ":")).encode()
            req = dataclasses.replace(req, body=encoded, payload=body)
        if len(clients) > 1:
            req = dataclasses.replace(
                req, headers={**req.headers, BATCH_IDS_HEADER: ",".join(c.request_id for c in clients)}
            )
        return await self._forward(req)

    async def _shared(self, key: str, req: Request) -> Answer:
        """Join (or start) the one upstream call for this request; the answer fills the cache."""
        sub = self.dedup.join(key, partial(self._produce, key, req), req.kind)
        try:
            head = await sub.head()
            if not req.stream or head.status != 200:
                body = b"".join([chunk async for chunk in sub.chunks()])
                sub.close()
                if not sub.leader and head.status == 200:
                    # A follower's answer is re-stamped with its own id and time, as a replay is.
                    body = Stamp.of(body).for_request(req.request_id).apply(body)
                return Answer(head.status, body, headers={**head.headers, CACHE_HEADER: "miss"})
        except BaseException:
            sub.close()
            raise
        restamp = None if sub.leader else Restamp()  # a follower's is filled from the first chunk
        events = _follow(sub, restamp, req.request_id)
        return Answer.stream(events, head.usage, {CACHE_HEADER: "miss"})

    async def _produce(self, key: str, req: Request, writer: FlightWriter) -> None:
        """The upstream call of one flight: publish its answer, then store it if complete."""
        if not req.stream:
            answer = await self._whole(req)
            writer.start(Answer(answer.status, headers=answer.headers))
            writer.push(answer.body)
            if answer.status == 200:
                self._store(req.kind, key, answer.body)
            return
        answer = await self._forward(req)
        if answer.events is None:  # the worker refused: relay its error
            writer.start(Answer(answer.status, headers=answer.headers))
            writer.push(answer.body)
            return
        writer.start(Answer(200, headers=answer.headers, usage=answer.usage))
        recorder = StreamRecorder(min(self.cache.max_bytes, self._max_entry) if self.cache.enabled else 0)
        events = answer.events
        try:
            async for run in events:  # whole events, one or several at a time
                recorder.feed(run)
                writer.push(run)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        entry = recorder.result(dataclasses.replace(answer.usage))
        if entry is not None:
            self.cache.put(key, entry)

    def _store(self, kind: Kind, key: str, body: bytes) -> None:
        if not self.cache.enabled or len(body) > self._max_entry:
            return
        stamp = response_complete(kind, body)
        if stamp is not None:
            self.cache.put(key, Entry(body, stamp))


def _keyed(req: Request) -> dict[str, Any]:
    """The body the cache key is made of: what the worker was asked, usage chunk included."""
    if not req.strip_usage:
        return req.payload
    options = req.payload.get("stream_options") or {}
    return {**req.payload, "stream_options": {**options, "include_usage": True}}


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


def _replay(stored: Entry, request_id: str) -> Answer:
    """A cache hit: the worker's own answer, under this request's id and the current time."""
    body = stored.stamp.for_request(request_id).apply(stored.body)
    if stored.media_type != SSE:
        return Answer(200, body, headers={"content-type": stored.media_type, CACHE_HEADER: "hit"})
    usage = dataclasses.replace(stored.usage) if stored.usage is not None else Usage()
    return Answer.stream(_once(body), usage, {CACHE_HEADER: "hit"})


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
