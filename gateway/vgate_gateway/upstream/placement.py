"""Where a LoRA adapter is loaded, and which adapter makes room: decisions without I/O.

A worker of a base model has ``slots`` adapter places (vLLM's ``--max-loras``). An adapter
is loaded where it costs least: a worker with a free slot before one that must unload
something, then the least busy. Making room unloads the least recently used adapter that
has no request in flight on that worker and stays loaded on at least its ``min_workers``
elsewhere (llm-d's lora-affinity order: loaded, then room to load, then waiting). A worker
that failed to load an adapter is not asked again for ``retry_s``. The
:class:`~vgate_gateway.upstream.adapters.AdapterManager` does the loading and unloading;
this class only remembers use and answers where.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vgate_gateway.settings import AdapterSettings
from vgate_gateway.upstream.pool import Upstream


@dataclass(frozen=True)
class Target:
    """Load the adapter on ``worker``, after unloading ``evict`` there (None: a slot is free)."""

    worker: Upstream
    evict: str | None = None


class Placement:
    """Adapter use per worker (in flight, last used), loads in progress and recent failures."""

    def __init__(
        self,
        adapters: Mapping[str, AdapterSettings],
        slots: Callable[[str], int],
        *,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapters = adapters
        self._slots = slots
        self.retry_s = retry_s
        self._clock = clock
        self.inflight: Counter[tuple[str, str]] = Counter()
        self.last_used: dict[tuple[str, str], float] = {}
        #: Adapter -> workers loading it now.
        self.loading: dict[str, set[str]] = {}
        self._failed: dict[tuple[str, str], float] = {}

    def begin(self, url: str, name: str) -> None:
        self.inflight[(url, name)] += 1
        self.last_used[(url, name)] = self._clock()

    def end(self, url: str, name: str) -> None:
        key = (url, name)
        self.inflight[key] -= 1
        if self.inflight[key] <= 0:
            del self.inflight[key]
        self.last_used[key] = self._clock()

    def failed(self, url: str, name: str) -> None:
        self._failed[(url, name)] = self._clock() + self.retry_s

    def may_try(self, url: str, name: str) -> bool:
        until = self._failed.get((url, name))
        return until is None or self._clock() >= until

    def held(self, up: Upstream) -> set[str]:
        """The adapters ``up`` holds or is loading: what its slots are taken by."""
        return set(up.adapters) | {n for n, urls in self.loading.items() if up.url in urls}

    def target(self, name: str, workers: Sequence[Upstream]) -> Target | None:
        """Where to load ``name`` among its base model's routable ``workers``; None: nowhere now."""
        slots = self._slots(self.adapters[name].base)
        options = [u for u in workers if name not in self.held(u) and self.may_try(u.url, name)]
        free = [u for u in options if len(self.held(u)) < slots]
        if free:
            return Target(min(free, key=lambda u: (u.inflight, len(self.held(u)), u.url)))
        best: tuple[float, int, str, Upstream, str] | None = None
        for u in options:
            evict = self.evictable(u, workers)
            if evict is not None:
                rank = (self.last_used.get((u.url, evict), 0.0), u.inflight, u.url, u, evict)
                if best is None or rank[:3] < best[:3]:
                    best = rank
        return Target(best[3], best[4]) if best is not None else None

    def evictable(self, up: Upstream, workers: Sequence[Upstream]) -> str | None:
        """The least recently used adapter ``up`` may unload: idle there, above its minimum elsewhere."""
        idle = []
        for name in up.adapters:
            if self.inflight.get((up.url, name)):
                continue
            spec = self.adapters.get(name)
            if spec is not None and spec.min_workers:
                holders = sum(1 for w in workers if name in w.adapters)
                if holders <= spec.min_workers:
                    continue
            idle.append((self.last_used.get((up.url, name), 0.0), name))
        return min(idle)[1] if idle else None

    def crowded(self, holders: Sequence[Upstream], workers: Sequence[Upstream], imbalance: int) -> bool:
        """Every holder is ``imbalance`` requests busier than the least busy worker: load one more copy."""
        if not holders or len(holders) >= len(workers):
            return False
        least = min(u.inflight for u in workers)
        return min(u.inflight for u in holders) >= least + imbalance

    def forget(self, url: str, name: str) -> None:
        """``url`` no longer holds ``name``: its use history there goes."""
        self.last_used.pop((url, name), None)
