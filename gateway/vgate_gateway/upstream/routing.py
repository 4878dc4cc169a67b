"""Choosing the upstream for a request: the :class:`Router` and its strategies.

The router turns a parsed request into a :class:`RouteRequest`, asks the pool for the
model's candidates and lets the model's strategy choose, or refuses with an OpenAI
error (404 unknown model, 503 no healthy worker).

A strategy sees the candidate upstreams for one request (non-empty, stable order,
all routable and serving the model) and a :class:`RouteRequest`, and returns one of
them. Strategies do no I/O; any state they keep (a counter, a bounded table) lives
on the instance, so they are unit-tested as plain objects.

``prefix-aware`` (the default) sends requests that share a prompt prefix to the worker
that already holds that prefix in vLLM's prefix cache, so the worker skips most of the
prefill; ``session`` pins a client to a worker by consistent hashing; ``least-load``
and ``least-request`` balance load; ``round-robin`` is the plain baseline.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple, Protocol

from vgate_gateway.errors import model_not_found, unavailable
from vgate_gateway.protocol import Request
from vgate_gateway.upstream.pool import Upstream, UpstreamPool


class RouteRequest(NamedTuple):
    """What a strategy may know about a request (a tuple: built once per request, cheaply)."""

    model: str
    #: Client affinity key (a session header, or the OpenAI ``user`` field).
    session_key: str | None = None
    #: Prompt text in order (chat messages flattened), for prefix-aware routing.
    prompt: str | None = None


class Strategy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream: ...


class RoundRobin:
    """Each model cycles through its candidates in turn."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        i = self._next.get(request.model, 0)
        self._next[request.model] = (i + 1) % len(candidates)
        return candidates[i % len(candidates)]


class PowerOfTwoChoices:
    """Least outstanding requests, sampled: pick two at random, take the less loaded.

    Sampling two (rather than scanning all) avoids herding on the one endpoint that
    looked idle a moment ago when many gateway replicas decide at once.
    """

    name = "least-request"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def score(self, upstream: Upstream) -> float:
        return upstream.inflight

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if self.score(a) <= self.score(b) else b


class LeastLoad(PowerOfTwoChoices):
    """Power of two choices on a load score that also counts what the worker itself reports.

    The score is this gateway's outstanding requests, plus the requests queued inside
    vLLM (``vllm:num_requests_waiting``: other gateway replicas' work shows up here),
    plus ``kv_weight`` times the KV-cache usage (a nearly full cache means preemption
    soon). Scraped figures older than ``stale_after_s`` are ignored.
    """

    name = "least-load"

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        kv_weight: float = 4.0,
        stale_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rng)
        self.kv_weight = kv_weight
        self.stale_after_s = stale_after_s
        self._clock = clock

    def score(self, upstream: Upstream) -> float:
        load = upstream.load
        if not load.scraped_at or self._clock() - load.scraped_at > self.stale_after_s:
            return upstream.inflight
        return upstream.inflight + load.num_waiting + self.kv_weight * load.kv_cache_usage


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring of URLs with ``vnodes`` virtual nodes each."""

    def __init__(self, urls: Sequence[str], vnodes: int) -> None:
        points = sorted((_hash64(f"{url}#{i}".encode()), url) for url in urls for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._urls = [u for _, u in points]

    def lookup(self, key: str) -> str:
        """The URL owning ``key``: the first virtual node clockwise from its hash."""
        i = bisect.bisect(self._hashes, _hash64(key.encode())) % len(self._hashes)
        return self._urls[i]


class ConsistentHash:
    """Session affinity: the same ``session_key`` goes to the same worker.

    A hash ring with virtual nodes keeps the mapping stable as workers come and go:
    adding or removing one of N workers moves only about 1/N of the sessions.
    Requests without a key are balanced by least outstanding requests.
    """

    name = "session"

    def __init__(self, vnodes: int = 160, max_rings: int = 8, rng: random.Random | None = None) -> None:
        self.vnodes = vnodes
        self._max_rings = max_rings
        self._rings: OrderedDict[tuple[str, ...], HashRing] = OrderedDict()
        self._fallback = PowerOfTwoChoices(rng)

    def _ring(self, urls: tuple[str, ...]) -> HashRing:
        ring = self._rings.get(urls)
        if ring is None:
            ring = self._rings[urls] = HashRing(urls, self.vnodes)
            if len(self._rings) > self._max_rings:
                self._rings.popitem(last=False)
        self._rings.move_to_end(urls)
        return ring

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        if not request.session_key or len(candidates) == 1:
            return self._fallback.choose(candidates, request)
        by_url = {u.url: u for u in candidates}
        url = self._ring(tuple(sorted(by_url))).lookup(f"{request.model}\0{request.session_key}")
        return by_url[url]


class PrefixAware:
    """Send a prompt to a worker that already holds its longest known prefix.

    The prompt is cut into ``block_chars``-character blocks hashed as a chain (each
    block's hash covers everything before it, like vLLM's KV blocks), and a bounded
    LRU table remembers, for each block hash, the few workers that were sent it most
    recently. The deepest block with a holder among the candidates wins; among its
    holders the least loaded is taken. A prefix seen for the first time goes to the
    worker holding the fewest prefix blocks, among those not much busier than the rest. A load guard spills the request to the least
    loaded worker when the holder's load exceeds ``imbalance_ratio`` times that worker's
    plus ``max_imbalance``, so a hot prefix spreads over more workers instead of queueing
    on one; the new worker then becomes a holder too. The guard is loose on purpose: a
    prefix miss costs a whole prefill, while one more sequence in a busy batch only
    slows each decode step slightly. Prompts shorter than one block are balanced by load.
    """

    name = "prefix-aware"

    def __init__(
        self,
        *,
        block_chars: int = 64,
        max_blocks: int = 256,
        table_size: int = 65536,
        holders: int = 4,
        max_imbalance: float = 8.0,
        imbalance_ratio: float = 2.0,
        load: PowerOfTwoChoices | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.table_size = table_size
        self.holders = holders
        self.max_imbalance = max_imbalance
        self.imbalance_ratio = imbalance_ratio
        self._rng = rng or random.Random()
        self._load = load or LeastLoad(self._rng)
        self._table: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        #: Table entries naming each worker: how much prefix text it is believed to hold.
        self._footprint: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._table)

    def block_hashes(self, model: str, prompt: str) -> list[int]:
        """The chained hash of each complete block of ``prompt`` (at most ``max_blocks``).

        Each block is hashed once, chained on its parent's hash (so a block's hash covers
        everything before it). The hash is Python's own (per process, like this table),
        on the block text as it is: no encoding, no cryptographic digest.
        """
        b = self.block_chars
        whole = min(len(prompt) // b, self.max_blocks)
        parent = hash(model)
        hashes = [0] * whole
        for i in range(whole):
            parent = hash((parent, prompt[i * b : (i + 1) * b]))
            hashes[i] = parent
        return hashes

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        hashes = self.block_hashes(request.model, request.prompt or "")
        if not hashes or len(candidates) == 1:
            chosen = self._least_loaded(candidates)
        elif holders := self._holders(candidates, hashes):
            score = self._load.score
            best = holders[0] if len(holders) == 1 else min(holders, key=score)
            load = score(best)
            # The guard's limit is never below max_imbalance: a load within it needs no scan.
            fits = load <= self.max_imbalance or load <= self._limit(candidates)
            chosen = best if fits else self._least_loaded(candidates)
        else:
            chosen = self._place(candidates)
        self._remember(hashes, chosen.url)
        return chosen

    def _holders(self, candidates: Sequence[Upstream], hashes: list[int]) -> list[Upstream]:
        """The candidates holding the deepest known block of the prompt (most recent holder first)."""
        by_url = {u.url: u for u in candidates}
        for h in reversed(hashes):
            holders = [by_url[url] for url in self._table.get(h, ()) if url in by_url]
            if holders:
                return holders
        return []

    def _limit(self, candidates: Sequence[Upstream]) -> float:
        """The most load a worker may carry before the guard looks elsewhere."""
        score = self._load.score
        return min([score(u) for u in candidates]) * self.imbalance_ratio + self.max_imbalance

    def _least_loaded(self, candidates: Sequence[Upstream]) -> Upstream:
        # A full scan, not two samples: a spilled or short request should queue least.
        if len(candidates) == 1:
            return candidates[0]
        scores = [self._load.score(u) for u in candidates]
        low = min(scores)
        return self._rng.choice([u for u, s in zip(candidates, scores, strict=True) if s == low])

    def _place(self, candidates: Sequence[Upstream]) -> Upstream:
        """A new prefix goes where the fewest prefix blocks live, among workers within the guard.

        Balancing by request load alone can give one worker the many rarely used prefixes
        and the other the few popular ones: the first then holds more prefixes than its
        KV cache, and they evict each other.
        """
        limit = self._limit(candidates)
        fit = [u for u in candidates if self._load.score(u) <= limit]
        low = min(self._footprint.get(u.url, 0) for u in fit)
        return self._rng.choice([u for u in fit if self._footprint.get(u.url, 0) == low])

    def _remember(self, hashes: list[int], url: str) -> None:
        table = self._table
        for h in hashes:
            held = table.get(h)
            if held is not None and held[0] == url:
                table.move_to_end(h)  # already first holder: only its recency changes
                continue
            held = held or ()
            kept = (url, *[u for u in held if u != url])[: self.holders]
            table[h] = kept
            table.move_to_end(h)
            self._count(kept, +1)
            self._count(held, -1)
        while len(table) > self.table_size:
            _, evicted = table.popitem(last=False)
            self._count(evicted, -1)

    def _count(self, urls: tuple[str, ...], delta: int) -> None:
        for url in urls:
            left = self._footprint.get(url, 0) + delta
            if left:
                self._footprint[url] = left
            else:
                self._footprint.pop(url, None)


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    RoundRobin.name: RoundRobin,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
    LeastLoad.name: LeastLoad,
    ConsistentHash.name: ConsistentHash,
    PrefixAware.name: PrefixAware,
}


def build_strategy(name: str) -> Strategy:
    """A fresh strategy instance by its configured name; ValueError for an unknown name."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


class Router:
    """Picks the upstream for one request: the model's candidates, then its strategy."""

    def __init__(
        self,
        pool: UpstreamPool,
        default: str,
        per_model: Mapping[str, str] | None = None,
        *,
        declared_models: Collection[str] = (),
        session_header: str,
        retry_after_s: int,
    ) -> None:
        self._pool = pool
        #: Models configured to exist (Kubernetes discovery's Services), even with no endpoint yet.
        self._declared = frozenset(declared_models)
        self._default_name = default
        self._per_model_names = dict(per_model or {})
        # Validate every configured name now: a typo fails at start-up, not on traffic.
        self._default = build_strategy(default)
        self._per_model: dict[str, Strategy] = {
            m: build_strategy(n) for m, n in self._per_model_names.items()
        }
        self._session_header = session_header.lower()
        self._retry_after = retry_after_s

    def strategy_name(self, model: str) -> str:
        return self._per_model_names.get(model, self._default_name)

    def strategy_for(self, model: str) -> Strategy:
        return self._per_model.get(model, self._default)

    def route_request(self, req: Request) -> RouteRequest:
        """What the strategies may know about ``req``."""
        return RouteRequest(
            model=req.model,
            session_key=req.headers.get(self._session_header) or req.user,
            prompt=req.prompt_text(),
        )

    def pick(self, req: Request, exclude: Sequence[str] = ()) -> Upstream:
        """The upstream for ``req``, or an OpenAI error: 404 unknown model, 503 none healthy."""
        candidates = self._pool.routable(req.model, exclude=exclude)
        if candidates:
            return self.strategy_for(req.model).choose(candidates, self.route_request(req))
        known = req.model in self._declared or self._pool.known_model(req.model)
        if known or self._models_unknown():
            raise unavailable(
                f"No healthy worker is serving model '{req.model}' right now. Retry shortly.",
                code="no_healthy_upstream",
                retry_after_s=self._retry_after,
            )
        raise model_not_found(req.model)

    def pick_free(self, req: Request, capacity: int, exclude: Sequence[str] = ()) -> Upstream | None:
        """The upstream for ``req`` among those with fewer than ``capacity`` requests in flight, if any."""
        candidates = self._pool.routable(req.model, exclude=exclude)
        for u in candidates:
            if u.inflight >= capacity:
                candidates = [u for u in candidates if u.inflight < capacity]
                break
        if not candidates:
            return None
        return self.strategy_for(req.model).choose(candidates, self.route_request(req))

    def may_serve(self, model: str) -> bool:
        """Whether ``model`` is served here, or may be once a worker is up (else a 404)."""
        return model in self._declared or self._pool.known_model(model) or self._models_unknown()

    def _models_unknown(self) -> bool:
        """Some worker has never answered, so the model may well be one it serves."""
        return any(not u.models for u in self._pool.all())
