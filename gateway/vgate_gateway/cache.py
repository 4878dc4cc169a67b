"""Exact result cache: a bounded LRU of completed answers, keyed by the whole request.

Only requests whose answer is reproducible are cached by default: embeddings, and
completions with ``temperature`` 0 or an explicit ``seed``. A client overrides this per
request with the ``x-vgate-cache`` header (``bypass`` or ``force``).

An entry is the worker's own answer, byte for byte: the JSON body of a non-streaming
answer, or every SSE event of a stream (usage chunks, ``continuous_usage_stats`` and all).
A replay carries every field the worker sent, with two changes: the response ``id`` is
the one the worker gives the replaying request (vLLM names a response after its request
id) and ``created`` is the current time (:class:`Stamp`).

The key covers the whole request body (``stream`` and ``stream_options`` included, so a
stream and a JSON answer are different entries, and a request that the worker would
reject can never hit an entry that an accepted one filled); only a string ``user`` is
left out, since it does not change what the worker answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from vgate_gateway.protocol import Kind
from vgate_gateway.sse import EventSplitter, event_data

#: Request header a client sets to bypass or force the cache; the response carries hit/miss.
CACHE_HEADER = "x-vgate-cache"


#: Finish reasons of answers worth replaying; ``tool_calls``, ``abort`` etc. are not cached.
CACHEABLE_FINISH = frozenset({"stop", "length"})

#: Rough per-entry bookkeeping cost, so a flood of tiny answers still respects ``max_bytes``.
_ENTRY_OVERHEAD = 256


class CacheMode(Enum):
    """What a request asked of the cache."""

    DEFAULT = "default"
    BYPASS = "bypass"
    FORCE = "force"


def parse_cache_mode(header: str | None) -> CacheMode:
    """Read the ``x-vgate-cache`` request header; raises ValueError on an unknown value."""
    if header is None or not header.strip():
        return CacheMode.DEFAULT
    value = header.strip().lower()
    if value in ("bypass", "force"):
        return CacheMode(value)
    raise ValueError(f"invalid {CACHE_HEADER} header {header!r}: use 'bypass' or 'force'")


def is_deterministic(kind: Kind, body: Mapping[str, Any]) -> bool:
    """Whether the same request is expected to produce the same answer."""
    if kind is Kind.EMBEDDINGS:
        return True
    temperature = body.get("temperature")
    if body.get("seed") is not None:
        return True
    # An absent temperature means the model's default (1.0, or the model's generation config).
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


def is_cacheable(kind: Kind, body: Mapping[str, Any], mode: CacheMode) -> bool:
    """Whether the cache (and in-flight dedup) may answer this request."""
    if mode is CacheMode.BYPASS:
        return False
    return mode is CacheMode.FORCE or is_deterministic(kind, body)


def request_key(kind: Kind, model: str, body: Mapping[str, Any], tenant: str | None = None) -> str:
    """SHA-256 over the endpoint kind, model, tenant and the canonical JSON of the request.

    Every field is part of the key, delivery fields too (``stream``, ``stream_options``):
    an entry is replayed exactly as the worker sent it. Only a string ``user`` is dropped
    (the end user's name changes nothing in the answer; any other value is one the worker
    validates, so it stays).
    """
    normalized = {k: v for k, v in body.items() if not (k == "user" and isinstance(v, str))}
    canonical = orjson.dumps([kind, model, tenant, normalized], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def response_cacheable(kind: Kind, response: Mapping[str, Any]) -> bool:
    """Whether an upstream answer is complete and successful enough to replay."""
    if "error" in response or response.get("object") == "error":
        return False
    if kind is Kind.EMBEDDINGS:
        return isinstance(response.get("data"), list) and bool(response["data"])
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH for c in choices)


class CacheMetrics:
    """The cache's Prometheus series, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "vgate_cache_hits_total",
            "Requests answered from the result cache",
            ["endpoint"],
            registry=registry,
        )
        self.misses = Counter(
            "vgate_cache_misses_total",
            "Cacheable requests the result cache could not answer",
            ["endpoint"],
            registry=registry,
        )
        self.entries = Gauge("vgate_cache_entries", "Answers held in the result cache", registry=registry)
        self.bytes = Gauge("vgate_cache_bytes", "Bytes held in the result cache", registry=registry)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot for ``/stats``."""

    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return {
            "entries": self.entries,
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": round(self.hit_rate, 4),
        }


@dataclass(frozen=True)
class Answer:
    """A stored answer: the worker's bytes, how to re-stamp them, and their media type."""

    body: bytes
    stamp: Stamp
    media_type: str = "application/json"


@dataclass
class _Entry:
    value: Answer
    size: int
    expires_at: float


class ResponseCache:
    """An LRU bounded by entry count *and* bytes, with a time-to-live per entry.

    ``clock`` is injectable (monotonic seconds) so expiry is tested without sleeping.
    A cache with ``maxsize`` or ``max_bytes`` 0 is disabled: it stores nothing.
    """

    def __init__(
        self,
        maxsize: int,
        max_bytes: int,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._metrics = metrics
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, endpoint: str = "") -> Answer | None:
        """The stored answer for ``key``, refreshed as most recently used; counts a hit or miss."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            self._remove(key)
            entry = None
        if entry is None:
            self._misses += 1
            if self._metrics is not None:
                self._metrics.misses.labels(endpoint).inc()
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        if self._metrics is not None:
            self._metrics.hits.labels(endpoint).inc()
        return entry.value

    def put(self, key: str, value: Answer) -> bool:
        """Store an answer; returns False when it can never fit (or the cache is disabled)."""
        size = len(value.body) + len(key) + _ENTRY_OVERHEAD
        if not self.enabled or size > self.max_bytes:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(value, size, self._clock() + self.ttl_s)
        self._bytes += size
        while len(self._entries) > self.maxsize or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._evictions += 1
        self._publish()
        return True

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        self._entries.clear()
        self._bytes = 0
        self._publish()

    def stats(self) -> CacheStats:
        """Current size and counters."""
        return CacheStats(len(self._entries), self._bytes, self._hits, self._misses, self._evictions)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.entries.set(len(self._entries))
            self._metrics.bytes.set(self._bytes)


# -- re-stamping and recording ---------------------------------------------------------------

_ID = re.compile(rb'"id":\s*"([^"\\]*)"')
_CREATED = re.compile(rb'"created":\s*(\d+)')


@dataclass(frozen=True)
class Stamp:
    """Rewrites an answer's ``id`` and ``created`` for another request, in its bytes.

    The tokens are found once, in the answer's first object; every occurrence is replaced
    (each chunk of a stream repeats them), at the cost of a byte search per chunk.
    """

    id_token: bytes = b""
    prefix: str = ""
    created_token: bytes = b""

    @classmethod
    def of(cls, first: bytes) -> Stamp:
        """The stamp of an answer whose first JSON object (or SSE event) is ``first``."""
        found_id, found_created = _ID.search(first), _CREATED.search(first)
        id_token = found_id.group(0) if found_id else b""
        name = found_id.group(1).decode(errors="replace") if found_id else ""
        prefix = name.split("-", 1)[0] if "-" in name else ""
        return cls(id_token, prefix, found_created.group(0) if found_created else b"")

    def for_request(self, request_id: str, created: int | None = None) -> Restamp:
        """What to replace for a request with ``request_id``, created now (or at ``created``)."""
        pairs = []
        if self.id_token:
            name = f"{self.prefix}-{request_id}" if self.prefix and request_id else _fresh(self.prefix)
            pairs.append((self.id_token, b'"id":' + json.dumps(name).encode()))
        if self.created_token:
            when = int(time.time()) if created is None else created
            pairs.append((self.created_token, b'"created":' + str(when).encode()))
        return Restamp(tuple(pairs))


def _fresh(prefix: str) -> str:
    return f"{prefix or 'resp'}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Restamp:
    """The replacements for one response; :meth:`apply` to each chunk of it."""

    pairs: tuple[tuple[bytes, bytes], ...] = ()

    def apply(self, chunk: bytes) -> bytes:
        for old, new in self.pairs:
            chunk = chunk.replace(old, new)
        return chunk


def response_complete(kind: Kind, body: bytes) -> Stamp | None:
    """The stamp of a complete, successful JSON answer worth storing, or None."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not response_cacheable(kind, answer):
        return None
    return Stamp.of(body)


class StreamRecorder:
    """Keeps a stream's SSE bytes as they pass by, for storing once it ended well.

    Gives up (``result()`` is None) on an error event, a missing ``[DONE]``, a choice that
    did not finish with ``stop``/``length``, or more than ``max_bytes`` of stream: such a
    stream is forwarded, not cached.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._seen = 0
        self._events = EventSplitter()
        self._first = b""
        self._finished: dict[int, str | None] = {}
        self._done = False
        self._failed = max_bytes <= 0

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the stream, in any framing."""
        if self._failed:
            return
        self._seen += len(data)
        if self._seen > self._max_bytes:
            self._failed, self._parts = True, []
            return
        self._parts.append(data)
        for event in self._events.feed(data):
            if payload := event_data(event):
                self._on_data(payload)

    def _on_data(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self._failed = True
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self._failed = True
            return
        self._first = self._first or payload
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            reason = choice.get("finish_reason")
            if reason is not None or index not in self._finished:
                self._finished[index] = reason

    def result(self) -> Answer | None:
        """The stream as an entry, or None when it should not be replayed."""
        if self._failed or not self._done or not self._finished:
            return None
        if any(reason not in CACHEABLE_FINISH for reason in self._finished.values()):
            return None
        return Answer(b"".join(self._parts), Stamp.of(self._first), "text/event-stream")
