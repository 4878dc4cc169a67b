"""Exact result cache: a bounded LRU of completed answers, keyed by the whole request.

Only requests whose answer is reproducible are cached by default: embeddings, and
completions with ``temperature`` 0 or an explicit ``seed``. A client overrides this per
request with the ``x-vgate-cache`` header (``bypass`` or ``force``).

The stored form is the assembled, non-streaming response body. A non-streaming hit
returns those bytes as they are; a streaming hit replays them as valid SSE chunks
(:func:`synthesize_stream`), and a completed stream fills the cache through
:class:`StreamAssembler`, so either kind of request fills the entry the other reads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from vgate_gateway.protocol import Kind
from vgate_gateway.sse import DONE, EventSplitter, event_data

#: Request header a client sets to bypass or force the cache; the response carries hit/miss.
CACHE_HEADER = "x-vgate-cache"

#: Body fields that change how an answer is delivered, never what it says.
TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user"})

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

    Every generation parameter is part of the key (the whole body is); only transport
    fields are dropped, so a streaming and a non-streaming request share one entry.
    """
    normalized = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    canonical = json.dumps(
        [kind, model, tenant, normalized], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


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


@dataclass
class _Entry:
    value: bytes
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

    def get(self, key: str, endpoint: str = "") -> bytes | None:
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

    def put(self, key: str, value: bytes) -> bool:
        """Store an answer; returns False when it can never fit (or the cache is disabled)."""
        size = len(value) + len(key) + _ENTRY_OVERHEAD
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


# -- stream <-> stored form -------------------------------------------------------------


@dataclass
class _Choice:
    role: str | None = None
    text: str = ""
    reasoning: str = ""
    tool_calls: dict[int, dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


def _merge_logprobs(into: dict[str, Any] | None, part: Any) -> dict[str, Any] | None:
    """Concatenate the per-token lists of a chunk's logprobs (chat ``content``, completions' four lists)."""
    if not isinstance(part, dict):
        return into
    merged = dict(into or {})
    for name, value in part.items():
        if isinstance(value, list):
            merged[name] = [*merged.get(name, []), *value]
        elif name not in merged or value is not None:
            merged[name] = value
    return merged


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        call = calls.setdefault(int(delta.get("index", len(calls))), {"function": {"arguments": ""}})
        for name in ("id", "type"):
            if delta.get(name):
                call[name] = delta[name]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""


class StreamAssembler:
    """Rebuilds the non-streaming response from a stream's SSE bytes as they pass by.

    Gives up (``result()`` is None) on an error event, a missing ``[DONE]`` or usage
    chunk, or more than ``max_bytes`` of stream: such a stream is forwarded, not cached.
    """

    def __init__(self, kind: Kind, max_bytes: int) -> None:
        self.kind = kind
        self._max_bytes = max_bytes
        self._seen = 0
        self._events = EventSplitter()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self._done = False
        self._failed = False

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the stream, in any framing."""
        if self._failed:
            return
        self._seen += len(data)
        if self._seen > self._max_bytes:
            self._failed = True
            return
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
        for name in ("id", "created", "model"):
            self._head.setdefault(name, chunk.get(name))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._on_choice(choice)

    def _on_choice(self, choice: dict[str, Any]) -> None:
        state = self._choices.setdefault(int(choice.get("index", 0)), _Choice())
        if self.kind is Kind.CHAT:
            delta = choice.get("delta") or {}
            state.role = delta.get("role") or state.role
            state.text += delta.get("content") or ""
            state.reasoning += delta.get("reasoning_content") or ""
            if delta.get("tool_calls"):
                state.tool_calls = state.tool_calls or {}
                _merge_tool_calls(state.tool_calls, delta["tool_calls"])
        else:
            state.text += choice.get("text") or ""
        state.logprobs = _merge_logprobs(state.logprobs, choice.get("logprobs"))
        state.finish_reason = choice.get("finish_reason") or state.finish_reason

    def result(self) -> dict[str, Any] | None:
        """The equivalent non-streaming response, or None when the stream cannot be replayed."""
        if self._failed or not self._done or self._usage is None or not self._choices:
            return None
        choices = [self._choice_out(i, c) for i, c in sorted(self._choices.items())]
        obj = "chat.completion" if self.kind is Kind.CHAT else "text_completion"
        return {**self._head, "object": obj, "choices": choices, "usage": self._usage}

    def _choice_out(self, index: int, c: _Choice) -> dict[str, Any]:
        if self.kind is not Kind.CHAT:
            return {"index": index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
        message: dict[str, Any] = {"role": c.role or "assistant", "content": c.text}
        if c.reasoning:
            message["reasoning_content"] = c.reasoning
        if c.tool_calls:
            message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
        return {"index": index, "message": message, "logprobs": c.logprobs, "finish_reason": c.finish_reason}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _chat_deltas(choice: dict[str, Any]) -> list[tuple[dict[str, Any], Any, str | None]]:
    """(delta, logprobs, finish_reason) for each chunk of one chat choice, as vLLM sends them."""
    message = choice.get("message") or {}
    delta: dict[str, Any] = {"content": message.get("content") or ""}
    if message.get("reasoning_content"):
        delta["reasoning_content"] = message["reasoning_content"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    return [
        ({"role": message.get("role") or "assistant", "content": ""}, None, None),
        (delta, choice.get("logprobs"), None),
        ({}, None, choice.get("finish_reason")),
    ]


def synthesize_stream(kind: Kind, response: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    """The SSE events (``[DONE]`` included) a stream of this stored response would have sent."""
    head = {k: response.get(k) for k in ("id", "created", "model")}
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    events: list[bytes] = []
    for choice in response.get("choices") or []:
        index = choice.get("index", 0)
        if kind is Kind.CHAT:
            for delta, logprobs, finish in _chat_deltas(choice):
                out = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                events.append(_sse({**head, "object": "chat.completion.chunk", "choices": [out], **tail}))
        else:
            # One chunk per choice: text and finish_reason together, as in vLLM's last chunk.
            out = {"index": index, **{k: choice.get(k) for k in ("text", "logprobs", "finish_reason")}}
            events.append(_sse({**head, "object": "text_completion", "choices": [out], **tail}))
    if include_usage:
        obj = "chat.completion.chunk" if kind is Kind.CHAT else "text_completion"
        events.append(_sse({**head, "object": obj, "choices": [], "usage": response.get("usage")}))
    events.append(DONE)
    return events
