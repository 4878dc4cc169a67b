"""Where a LoRA adapter is loaded, and which adapter makes room: decisions without I/O.

A worker of a base model has ``slots`` adapter places (vLLM's ``--max-loras``). Each
adapter's demand is its request count decayed with a half-life of ``half_life_s``; a
worker's expected share is the demand of the adapters it holds, each split among its
holders. An adapter is loaded where it costs least: a worker with a free slot before one
that must unload something, then the worker with the least expected share (so popular and
rare adapters mix, and the split of requests stays even), then the least busy. Making room
unloads the least demanded adapter (least recently used among equals) that has no request
in flight on that worker and stays loaded on at least its ``min_workers`` elsewhere (llm-d's
lora-affinity order: loaded, then room to load, then waiting). A worker that failed to load
an adapter is not asked again for ``retry_s``. The
:class:`~vgate_gateway.upstream.adapters.AdapterManager` does the loading and unloading;
this class only remembers use and answers where.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vgate_gateway.settings import AdapterSettings
from vgate_gateway.upstream.pool import Upstream

#: Rebalancing waits for this much demand (decayed requests) of a base model's adapters.
REBALANCE_MIN_DEMAND = 200.0
#: Workers whose expected shares are this fraction of the demand apart are rebalanced ...
REBALANCE_GAP = 0.10
#: ... by a move that narrows the gap by at least this fraction of it.
REBALANCE_GAIN = 0.05


@dataclass(frozen=True)
class Swap:
    """Move ``move`` from ``heavy`` to ``light``, and ``back`` from ``light`` to ``heavy`` (None: a slot is free)."""

    heavy: Upstream
    move: str
    light: Upstream
    back: str | None = None


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
        half_life_s: float = 60.0,
        waiting: Callable[[str], int] = lambda name: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapters = adapters
        self._slots = slots
        self.retry_s = retry_s
        self.half_life_s = half_life_s
        #: How many requests wait for an adapter now (the dispatcher's queue).
        self.waiting = waiting
        self._clock = clock
        #: Adapter -> (decayed request count, when it was last brought up to date).
        self._demand: dict[str, tuple[float, float]] = {}
        self.inflight: Counter[tuple[str, str]] = Counter()
        self.last_used: dict[tuple[str, str], float] = {}
        #: Adapter -> workers loading it now.
        self.loading: dict[str, set[str]] = {}
        self._failed: dict[tuple[str, str], float] = {}

    def begin(self, url: str, name: str) -> None:
        now = self._clock()
        self.inflight[(url, name)] += 1
        self.last_used[(url, name)] = now
        self._demand[name] = (self.demand(name) + 1.0, now)

    def demand(self, name: str) -> float:
        """Requests for ``name`` waiting now, and begun lately: each counts 1, halved every ``half_life_s``."""
        count, at = self._demand.get(name, (0.0, 0.0))
        waiting = self.waiting(name)
        if not count:
            return float(waiting)
        return waiting + count * float(0.5 ** ((self._clock() - at) / self.half_life_s))

    def copies(self, name: str, workers: Sequence[Upstream]) -> int:
        """How many workers should hold ``name``: enough that none serves more than a fair share of it.

        A fair share is the demand of all the adapters of the base model over its workers. An
        adapter that alone exceeds it needs more than one holder; others need one (or their
        ``min_workers``). Copies beyond this are spare: the first to be unloaded.
        """
        spec = self.adapters[name]
        total = sum(self.demand(n) for n, a in self.adapters.items() if a.base == spec.base)
        wanted = 1
        if total > 0 and workers:
            wanted = math.ceil(self.demand(name) * len(workers) / total - 1e-9)
        return max(1, spec.min_workers, wanted)

    def share(self, up: Upstream, workers: Sequence[Upstream]) -> float:
        """The demand ``up`` is expected to serve: its adapters' demand, each split among their holders."""
        holders = Counter(n for w in workers for n in self.held(w))
        return sum(self.demand(n) / holders[n] for n in self.held(up) if holders[n])

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
            return Target(
                min(free, key=lambda u: (self.share(u, workers), u.inflight, len(self.held(u)), u.url))
            )
        best: tuple[tuple[float, float, float, int, str], Upstream, str] | None = None
        for u in options:
            evict = self.evictable(u, workers)
            if evict is not None:
                rank = (
                    self.demand(evict)
                    if self.copies(evict, workers) >= self._holding(evict, workers)
                    else 0.0,
                    self.last_used.get((u.url, evict), 0.0),
                    self.share(u, workers),
                    u.inflight,
                    u.url,
                )
                if best is None or rank < best[0]:
                    best = (rank, u, evict)
        return Target(best[1], best[2]) if best is not None else None

    def evictable(self, up: Upstream, workers: Sequence[Upstream]) -> str | None:
        """The adapter ``up`` may unload: idle there, above its minimum elsewhere.

        A spare copy (more holders than :meth:`copies`) goes first, then the least demanded
        adapter, then the least recently used.
        """
        holders = Counter(n for w in workers for n in w.adapters)
        idle = []
        for name in up.adapters:
            if self.inflight.get((up.url, name)):
                continue
            spec = self.adapters.get(name)
            if spec is not None and spec.min_workers and holders[name] <= spec.min_workers:
                continue
            spare = name in self.adapters and holders[name] > self.copies(name, workers)
            idle.append((not spare, self.demand(name), self.last_used.get((up.url, name), 0.0), name))
        return min(idle)[3] if idle else None

    def _holding(self, name: str, workers: Sequence[Upstream]) -> int:
        return sum(1 for w in workers if name in w.adapters)

    def crowded(
        self, name: str, holders: Sequence[Upstream], workers: Sequence[Upstream], imbalance: int
    ) -> bool:
        """Load one more copy of ``name``: it is wanted on more workers than hold it (:meth:`copies`),
        and every holder is ``imbalance`` requests busier than the least busy worker."""
        if not holders or len(holders) >= min(len(workers), self.copies(name, workers)):
            return False
        least = min(u.inflight for u in workers)
        return min(u.inflight for u in holders) >= least + imbalance

    def rebalance(self, workers: Sequence[Upstream]) -> Swap | None:
        """A swap of adapters between the workers expected to serve most and least, if one evens them.

        Adapters are placed as their first requests arrive, before their popularity is known;
        this corrects the placement once it is. Only adapters held by one worker move (their
        requests in flight finish before they are unloaded there), and only when the gap is ``REBALANCE_GAP`` of the demand or more and
        the swap narrows it by ``REBALANCE_GAIN`` of the demand.
        """
        if len(workers) < 2 or any(self.loading.values()):
            return None
        bases = {self.adapters[n].base for u in workers for n in u.adapters if n in self.adapters}
        total = sum(self.demand(n) for n, a in self.adapters.items() if a.base in bases)
        if total < REBALANCE_MIN_DEMAND:
            return None
        shares = {u.url: self.share(u, workers) for u in workers}
        heavy = max(workers, key=lambda u: (shares[u.url], u.url))
        light = min(workers, key=lambda u: (shares[u.url], u.url))
        gap = shares[heavy.url] - shares[light.url]
        if gap < REBALANCE_GAP * total:
            return None
        holders = Counter(n for w in workers for n in w.adapters)

        def movable(up: Upstream) -> list[str]:
            return sorted(n for n in up.adapters if n in self.adapters and holders[n] == 1)

        backs: list[str | None] = [None] if len(self.held(light)) < self._slots(next(iter(bases))) else []
        backs += movable(light)
        best: tuple[float, str, str | None] | None = None
        for move in movable(heavy):
            for back in backs:
                after = abs(gap - 2 * (self.demand(move) - (self.demand(back) if back else 0.0)))
                if best is None or after < best[0]:
                    best = (after, move, back)
        if best is None or best[0] > gap - REBALANCE_GAIN * total:
            return None
        return Swap(heavy, best[1], light, best[2])

    def forget(self, url: str, name: str) -> None:
        """``url`` no longer holds ``name``: its use history there goes."""
        self.last_used.pop((url, name), None)
