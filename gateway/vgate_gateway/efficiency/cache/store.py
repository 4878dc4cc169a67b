"""The result cache's store: an LRU bounded by entries and bytes, with a time-to-live."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from vgate_gateway.efficiency.cache.entry import Entry

#: Rough per-entry bookkeeping cost, so a flood of tiny answers still respects ``max_bytes``.
_ENTRY_OVERHEAD = 256


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
    value: Entry
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

    def get(self, key: str, endpoint: str = "") -> Entry | None:
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

    def put(self, key: str, value: Entry) -> bool:
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
