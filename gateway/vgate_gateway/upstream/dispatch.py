"""Dispatch: each request to a worker that can take it now, or to its model's queue until one can.

A worker can take a request while it is routable (healthy, ready, not terminating) and this
gateway process has fewer than the model's ``capacity`` requests in flight to it (vLLM's
``max_num_seqs``: beyond it vLLM only queues them itself). When no worker of the model can
— none is ready (scaled to zero, starting, rolling) or every one is saturated — the request
waits in its model's :class:`~vgate_gateway.upstream.queue.ModelQueue`, bounded in requests,
bytes and time, and is dispatched in its policy's order (priority class, then fair share
between keys: :mod:`~vgate_gateway.upstream.queue`) the moment a worker can take it: when a
request to that model ends, or when a worker becomes routable. The routing decision is made
then, with the state of that moment. Nothing waits while capacity is free — a free worker
takes a request without the policy being asked — and a request whose client leaves while
queued is removed at once, having cost nothing upstream. A request whose deadline the queue
ahead of it cannot meet is refused at once; a full queue sheds its newest least urgent
request for a more urgent arrival.

The dispatcher also counts what each model has in flight and queued: the load the
autoscaler reads (``GET /load`` on the internal port).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vgate_gateway.errors import OpenAIError, model_not_found, unavailable
from vgate_gateway.protocol import Request, Usage
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.adapters import AdapterManager
from vgate_gateway.upstream.pool import Upstream, UpstreamPool
from vgate_gateway.upstream.queue import (
    ACTIVE_S,
    CLASSES,
    FIFO_ENGINE_PRIORITY,
    POLICIES,
    Bounds,
    ModelQueue,
    Policy,
    QueueFull,
    RateMeter,
    Shares,
    Waiting,
    count_down,
    engine_priority,
    wait_estimate,
)
from vgate_gateway.upstream.routing import Router

log = logging.getLogger(__name__)

#: Why a model's queue refuses a request (``vgate_queue_refused_requests_total{reason}``).
REFUSALS = ("full", "timeout", "deadline", "shed")
#: Seconds a request may wait, as the histogram's buckets see them (a GPU cold start is tens of seconds).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
#: How often a held retry looks again for a worker (another one routable, or the failed one cleared).
RETRY_POLL_S = 0.1


class QueueMetrics:
    """The queues' Prometheus series, registered on the given registry.

    Labels are bounded: served models, the three priority classes, and key ids from the
    keys file (``anonymous`` without keys), never a secret. The depths are read from the
    queues when Prometheus scrapes (:class:`QueueDepth`), so the request path pays nothing
    for them and every known model reports one, 0 while nothing waits.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait = Histogram(
            "vgate_queue_wait_seconds",
            "Time requests that had to wait spent in their model's queue before a worker took them",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "vgate_queue_refused_requests_total",
            "Requests the model's queue refused: full (requests or bytes), waited out, deadline "
            "out of reach, or shed for a more urgent one",
            ["model", "reason"],
            registry=registry,
        )
        self.class_wait = Histogram(
            "vgate_queue_class_wait_seconds",
            "Time requests that had to wait spent in the queue, per priority class",
            ["model", "priority"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "vgate_queue_fair_tokens_total",
            "Weighted tokens (prompt + 2 x output, over the key's weight) served to each key, "
            "as the fair-share counters count them",
            ["model", "key_id"],
            registry=registry,
        )


@dataclass
class _Model:
    """One model's queue, the order it is served in, and how fast it is being served."""

    queue: ModelQueue
    policy: Policy
    meter: RateMeter = field(default_factory=RateMeter)
    #: Its series, resolved once (``labels()`` takes a lock): each key's tokens, the wait
    #: histograms (per class, then all).
    tokens: dict[str, Any] = field(default_factory=dict)
    waits: list[Any] = field(default_factory=list)


class Dispatcher:
    """Hands each request a worker, holding it in its model's queue while none can take it."""

    def __init__(
        self,
        settings: GatewaySettings,
        pool: UpstreamPool,
        router: Router,
        metrics: QueueMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._capacity: dict[str, int] = {}
        #: Per model, whether its workers get each request's engine priority (read once).
        self._engine_priority: dict[str, bool] = {}
        #: Per model with a reserve or a prefill limit, who holds its slots (None: neither; read once).
        self._shares: dict[str, Shares | None] = {}
        #: Per worker URL, streamed requests of keys over their share awaiting their first token.
        self._prefills: dict[str, int] = {}
        #: Per model keeping prefill-free workers, when a flooding key was last dispatched.
        self._flooded: dict[str, float] = {}
        #: Per worker URL open to a flood, streamed requests of keys within their share awaiting
        #: their first token there (sent there because the free workers were full).
        self._firsts: dict[str, int] = {}
        for model in settings.declared_models():
            self.capacity(model)
        #: Requests in flight per (model, worker URL): those on a worker that left are draining.
        self._on: dict[tuple[str, str], int] = {}
        #: LoRA adapters: a request for one waits in its own queue while it is loaded somewhere.
        self._adapters: AdapterManager | None = None
        pool.listen(self._wake_all)

    def use_adapters(self, adapters: AdapterManager) -> None:
        """Declared LoRA adapters are loaded by ``adapters`` when their requests must wait."""
        self._adapters = adapters
        adapters.bind(lambda name: len(self._models[name].queue) if name in self._models else 0, self.fail)

    def capacity(self, model: str) -> int:
        """Requests one worker of ``model`` takes from this process before it counts as saturated."""
        known = self._capacity.get(model)
        if known is not None:
            return known
        capacity = self._settings.for_model(model).capacity or 1
        # Only a model served here gets series of its own: clients choose model names.
        if self._served(model):
            self._capacity[model] = capacity
            self._metrics.wait.labels(model)  # its series exist from now on, 0 until something waits
            for priority in CLASSES:
                self._metrics.class_wait.labels(model, priority.label)
            for reason in REFUSALS:
                self._metrics.refused.labels(model, reason)
        return capacity

    def take_free(self, req: Request, exclude: Sequence[str] = ()) -> Upstream | None:
        """A worker that can take ``req`` now, begun, if no request of its model is waiting; else None."""
        model = req.model
        adapters = self._adapters
        if adapters is not None and adapters.undeclared(model):
            raise model_not_found(model)
        known = self._models.get(model)
        capacity = self.capacity(model)
        shares = self._shares_of(model)
        up = None
        if known is None or not len(known.queue) or exclude:
            if shares is None or exclude:
                up = self._router.pick_free(req, capacity, exclude)
            else:
                up = self._pick_shared(shares, req, capacity)
        elif (
            shares is not None
            and not known.queue.backlogged(req.key_id)
            and not self._over(shares, req, capacity)
        ):
            # The queue's requests are all held back (else a worker would have taken them):
            # a key within its share takes a kept slot at once.
            up = self._pick_within(shares, req, capacity)
        if up is None:
            return None
        self._begin(req, up)
        if req.engine_priority is None and self._sends_priority(model):
            # Its key has nothing waiting: not over its share, the class alone counts.
            fair = self._settings.queue_policy == "fair"
            req.engine_priority = (
                engine_priority(req.schedule.priority, False) if fair else FIFO_ENGINE_PRIORITY
            )
        return up

    def _shares_of(self, model: str) -> Shares | None:
        """Who holds ``model``'s slots, when it keeps a reserve or limits prefills over share."""
        try:
            return self._shares[model]
        except KeyError:
            own = self._settings.for_model(model)
            reserve, prefills = own.reserve(), own.queue_prefills_over_share or 0
            free = own.queue_prefill_free_workers or 0
            shares = Shares(reserve, prefills, free) if reserve or prefills or free else None
            if self._served(model):  # kept only for a model served here: clients choose model names
                self._shares[model] = shares
            return shares

    def _served(self, model: str) -> bool:
        """Whether ``model`` is served here (declared, or a worker serves it), not just a name asked for."""
        return model in self._settings.declared_models() or self._pool.known_model(model)

    def _over(self, shares: Shares, req: Request, capacity: int) -> bool:
        """Whether ``req``'s key holds more than its share of its model's slots."""
        if shares.alone(req.key_id):
            return False
        model = req.model
        return shares.over_share(
            req.key_id, req.schedule.weight, lambda: capacity * len(self._pool.routable(model)), self._clock()
        )

    def _pick_shared(self, shares: Shares, req: Request, capacity: int, behind: int = 0) -> Upstream | None:
        """A worker for ``req`` within what its key may take: the reserve, its prefills, the free workers.

        ``behind``: the key's requests still waiting in the queue after ``req``. A key that
        holds more than its share of slots is held to the reserve. One that does, or that has
        requests waiting behind this one while another key is active, **floods**: it sends
        more than it is served, so it is held to its prefills and kept from the prefill-free
        workers, even while it holds no more than its share of slots.
        """
        over = self._over(shares, req, capacity)
        if not over and not (behind and not shares.alone(req.key_id)):
            if not shares.free_workers:  # the common case, without a call more
                return self._router.pick_free(req, capacity)
            return self._pick_within(shares, req, capacity)
        closed: list[str] = []
        if shares.free_workers:
            self._flooded[req.model] = self._clock()
            closed = shares.kept_free([u.url for u in self._pool.routable(req.model)])
            closed += self._firsts  # a light request's first token comes before the flood's next prefill
        track = shares.prefills and req.stream
        if track:
            closed += [url for url, n in self._prefills.items() if n >= shares.prefills]
        up = self._router.pick_free(req, shares.limit(capacity) if over else capacity, closed)
        if up is not None and track:
            req.prefilling_on = up.url
            self._prefills[up.url] = self._prefills.get(up.url, 0) + 1
        return up

    def _pick_within(self, shares: Shares, req: Request, capacity: int) -> Upstream | None:
        """A worker for ``req`` of a key within its share: while a key floods, a prefill-free one first."""
        flooded = self._flooded.get(req.model) if shares.free_workers else None
        if flooded is not None and self._clock() - flooded < ACTIVE_S:
            workers = [u.url for u in self._pool.routable(req.model)]
            free = shares.kept_free(workers)
            if free:
                up = self._router.pick_free(req, capacity, [url for url in workers if url not in free])
                if up is not None:
                    return up
                up = self._router.pick_free(req, capacity)
                if up is not None and req.stream:  # a worker the flood prefills on
                    req.awaiting_first_on = up.url
                    self._firsts[up.url] = self._firsts.get(up.url, 0) + 1
                return up
        return self._router.pick_free(req, capacity)

    def first_token(self, req: Request) -> None:
        """``req``'s first token arrived: the prefill it held a place for, or held the flood from, is done."""
        if self._prefilled(req):
            known = self._models.get(req.model)
            if known is not None and len(known.queue):
                self._drain(known)

    def _prefilled(self, req: Request) -> bool:
        """Free ``req``'s place among its worker's prefills, or the worker it held from the flood; False if neither."""
        url = req.prefilling_on
        if url is not None:
            req.prefilling_on = None
            count_down(self._prefills, url)
            return True
        url = req.awaiting_first_on
        if url is not None:
            req.awaiting_first_on = None
            count_down(self._firsts, url)
            return True
        return False

    def _sends_priority(self, model: str) -> bool:
        """Whether ``model``'s workers run vLLM's priority scheduling (the model's ``engine_priority``)."""
        known = self._engine_priority.get(model)
        if known is None:
            known = self._engine_priority[model] = self._settings.for_model(model).engine_priority
        return known

    async def acquire(self, req: Request, exclude: Sequence[str] = ()) -> Upstream:
        """The worker ``req`` goes to, begun; waits in the model's queue while none can take it.

        ``exclude``: workers that already failed this request; a retry is never queued.
        """
        up = self.take_free(req, exclude)
        if up is not None:
            return up
        model = req.model
        if exclude:
            return await self._retry(req, exclude)
        if not self._router.may_serve(model):
            raise model_not_found(model)
        return await self._wait(self._model(model), req)

    async def _retry(self, req: Request, exclude: Sequence[str]) -> Upstream:
        """Another worker for ``req`` after those in ``exclude`` failed it; a busy one will do.

        With none routable (a one-worker model whose worker is being replaced: the old one stops
        listening before the gateway sees it leave), the request is held as the queue would hold
        it, up to the model's queue timeout, until another worker is routable or a health check
        clears a failed one; then the router says why not.
        """
        model = req.model
        limit = self._model(model).queue.bounds.timeout_s
        deadline = self._clock() + limit
        tried = set(exclude)
        while True:
            others = self._pool.routable(model, exclude=exclude)
            cleared = [
                u for u in self._pool.routable(model) if u.url in tried and u.consecutive_failures == 0
            ]
            if others or cleared or self._clock() >= deadline:
                up = self._router.pick(req, () if cleared and not others else exclude)
                self._begin(req, up)
                return up
            await asyncio.sleep(min(RETRY_POLL_S, max(0.0, deadline - self._clock())))

    def release(self, req: Request, up: Upstream) -> None:
        """``req``'s call to ``up`` is over; the next waiting request may take its place."""
        model = req.model
        self._pool.end(up)
        self._prefilled(req)
        shares = self._shares.get(model)
        if shares is not None:
            shares.end(req.key_id)
        count_down(self._on, (model, up.url))
        if self._adapters is not None and self._adapters.declared(model):
            self._adapters.end(model, up)
        known = self._models.get(model)
        if known is not None and len(known.queue):
            self._drain(known)

    def served(self, req: Request, usage: Usage) -> None:
        """``req``'s answer ended: its key's fair-share counter is corrected from the real usage.

        Only models that have ever queued keep counters: until then nothing is charged.
        """
        known = self._models.get(req.model)
        if known is not None:
            cost = known.policy.settle(req, usage)
            series = known.tokens.get(req.key_id)
            if series is None:
                series = known.tokens[req.key_id] = self._metrics.tokens.labels(req.model, req.key_id)
            series.inc(cost)

    def _begin(self, req: Request, up: Upstream) -> None:
        model = req.model
        self._pool.begin(up)
        shares = self._shares.get(model)
        if shares is not None:
            shares.begin(req.key_id, req.schedule.weight, self._clock())
        on = (model, up.url)
        self._on[on] = self._on.get(on, 0) + 1
        if self._adapters is not None and self._adapters.declared(model):
            self._adapters.begin(model, up)

    def fail(self, model: str, error: OpenAIError) -> None:
        """Refuse every request waiting for ``model`` with ``error`` (no worker can serve it)."""
        known = self._models.get(model)
        for waiting in list(known.queue) if known is not None else []:
            known.queue.remove(waiting)  # type: ignore[union-attr]
            if not waiting.granted.done():
                waiting.granted.set_exception(error)

    def _model(self, model: str) -> _Model:
        known = self._models.get(model)
        if known is None:
            own = self._settings.for_model(model)
            bounds = Bounds(
                max_requests=own.queue_max_requests or 0,
                max_bytes=own.queue_max_bytes or 0,
                timeout_s=own.queue_timeout_s or 0.0,
            )
            policy = POLICIES[self._settings.queue_policy]()
            known = self._models[model] = _Model(ModelQueue(model, bounds), policy)
        return known

    async def _wait(self, known: _Model, req: Request) -> Upstream:
        queue, now = known.queue, self._clock()
        waiting = Waiting(req, now, asyncio.get_running_loop().create_future())
        patience = self._patience(known, waiting, now)
        try:
            victims = queue.victims(waiting, shed=known.policy.sheds)
        except QueueFull as exc:
            raise self._refused(
                queue, "full", f"The queue for model '{queue.model}' is full: {exc}."
            ) from None
        for victim in victims:
            self._shed(queue, victim)
        known.policy.arrived(queue, waiting)
        queue.add(waiting)
        if len(queue) == 1:
            log.info("model %s: no worker can take a request now; queueing", queue.model)
        if self._adapters is not None and self._adapters.declared(queue.model):
            self._adapters.want(queue.model)  # loaded somewhere while the request waits
        try:
            async with asyncio.timeout(patience):
                return await waiting.granted
        except BaseException as exc:
            granted = waiting.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self.release(req, granted.result())  # granted as it gave up: pass it on
            else:
                queue.remove(waiting)
            if isinstance(exc, TimeoutError):
                raise self._late(queue, req, patience) from None
            raise

    def _patience(self, known: _Model, waiting: Waiting, now: float) -> float:
        """How long ``waiting`` may wait: the queue's timeout, or less to its deadline.

        A deadline the queue ahead cannot let it meet, at the pace the model's queue has been
        served recently, is refused now rather than waited out.
        """
        queue, limit = known.queue, known.queue.bounds.timeout_s
        deadline = waiting.req.schedule.deadline
        if deadline is None:
            return limit
        left = deadline - now
        expected = wait_estimate(known.policy, queue, waiting, known.meter.rate(now))
        if left <= 0 or (expected is not None and expected > left):
            self._metrics.refused.labels(queue.model, "deadline").inc()
            queue.rejected += 1
            wait = f"about {expected:.1f}s" if expected is not None else "past it"
            raise unavailable(
                f"The request's deadline cannot be met: it is {max(left, 0) * 1000:.0f}ms away and the "
                f"queue for model '{queue.model}' would hold it {wait}. Retry later or with a later deadline.",
                code="deadline_unmeetable",
                retry_after_s=max(1, math.ceil(expected or 0)),
            )
        return min(limit, left)

    def _refused(self, queue: ModelQueue, reason: str, message: str) -> OpenAIError:
        self._metrics.refused.labels(queue.model, reason).inc()
        return unavailable(
            f"{message} Retry shortly.", code=f"queue_{reason}", retry_after_s=self._settings.retry_after_s
        )

    def _late(self, queue: ModelQueue, req: Request, patience: float) -> OpenAIError:
        """The error of a request that waited as long as it could."""
        queue.timed_out += 1
        if patience < queue.bounds.timeout_s:
            self._metrics.refused.labels(queue.model, "deadline").inc()
            return unavailable(
                f"No worker for model '{queue.model}' could take the request before its deadline.",
                code="deadline_exceeded",
                retry_after_s=self._settings.retry_after_s,
            )
        return self._refused(
            queue,
            "timeout",
            f"No worker for model '{queue.model}' could take the request within {queue.bounds.timeout_s:g}s.",
        )

    def _shed(self, queue: ModelQueue, victim: Waiting) -> None:
        """Make room for a more urgent request, or a key's fair place: ``victim`` leaves with a 503."""
        queue.remove(victim)
        queue.shed += 1
        if not victim.granted.done():
            victim.granted.set_exception(
                self._refused(
                    queue,
                    "shed",
                    f"The queue for model '{queue.model}' is full and this request made room for a more urgent "
                    "one, or for a key holding fewer places in it.",
                )
            )

    def _waits(self, known: _Model) -> list[Any]:
        """The wait histograms of ``known``'s model (per class, then all), resolved once."""
        if not known.waits:
            m, model = self._metrics, known.queue.model
            known.waits = [m.class_wait.labels(model, p.label) for p in CLASSES]
            known.waits.append(m.wait.labels(model))
        return known.waits

    def _wake_all(self) -> None:
        for known in self._models.values():
            if len(known.queue):
                self._drain(known)

    def _drain(self, known: _Model) -> None:
        """Dispatch waiting requests, in the policy's order, while a worker can take one."""
        queue, policy = known.queue, known.policy
        capacity = self.capacity(queue.model)
        shares = self._shares_of(queue.model)
        now = self._clock()
        while True:
            head = policy.pick(queue)
            if head is None:
                break
            if head.granted.done():  # gave up, not yet removed
                queue.remove(head)
                continue
            if shares is None:
                up = self._router.pick_free(head.req, capacity)
            else:
                behind = queue.waiting_of(head.req.key_id) - 1
                up = self._pick_shared(shares, head.req, capacity, behind)
            if up is None:
                break
            queue.remove(head)
            if self._sends_priority(queue.model):
                head.req.engine_priority = policy.engine_priority(queue, head)
            policy.dispatched(head)
            known.meter.tick(now)
            self._begin(head.req, up)
            head.granted.set_result(up)
            queue.dispatched += 1
            waits = self._waits(known)
            waits[-1].observe(now - head.since)
            waits[head.priority].observe(now - head.since)

    def depths(self) -> dict[str, list[int]]:
        """Per model seen or declared, the requests waiting in each class (:data:`CLASSES` order)."""
        empty = [0 for _ in CLASSES]
        return {
            m: list(self._models[m].queue.depth) if m in self._models else empty
            for m in sorted(self._capacity)
        }

    def inflight(self) -> dict[str, int]:
        """Requests in flight to each model's workers (read at scrape time, not kept per request)."""
        out: dict[str, int] = {}
        for (model, _), n in self._on.items():
            out[model] = out.get(model, 0) + n
        return out

    def waiting(self) -> bool:
        """Whether any request waits in a model's queue now."""
        return any(len(known.queue) for known in self._models.values())

    def load(self) -> dict[str, dict[str, int]]:
        """Per model: requests in flight, queued, draining, and routable workers (``GET /load``).

        ``inflight`` counts the requests on workers that still serve; ``draining`` those still
        running on a worker that has left (scaled down, terminating): they end where they
        are and need no capacity, so an autoscaler that reads ``inflight`` never scales back
        up for them. An adapter's requests count towards its base model: they run on its workers.
        """
        base = self._settings.base_of
        models = {base(m) for m in (*self._capacity, *self._models)} | self._settings.declared_models()
        out = {m: {"inflight": 0, "queued": 0, "draining": 0, "ready_workers": 0} for m in sorted(models)}
        serving = {u.url for u in self._pool.all() if not u.terminating}
        for (m, url), n in self._on.items():
            out[base(m)]["inflight" if url in serving else "draining"] += n
        for m, known in self._models.items():
            out[base(m)]["queued"] += len(known.queue)
        for m, row in out.items():
            row["ready_workers"] = len([u for u in self._pool.routable(m) if u.routable])
        return out

    def stats(self) -> dict[str, Any]:
        """The ``queues`` section of ``/stats``: per model, its bounds, classes and keys."""
        now = self._clock()
        return {m: self._stats_of(known, now) for m, known in sorted(self._models.items())}

    def _stats_of(self, known: _Model, now: float) -> dict[str, Any]:
        q, m = known.queue, known.queue.model
        rate = known.meter.rate(now)
        counters = known.policy.counters()
        keys: dict[str, dict[str, Any]] = {
            k: {"queued": 0, "served_tokens": round(v, 1)} for k, v in counters.items()
        }
        for waiting in q:
            keys.setdefault(waiting.key, {"queued": 0})["queued"] += 1
        shares = self._shares.get(m)
        if shares is not None:
            for k, n in shares.inflight.items():
                keys.setdefault(k, {"queued": 0})["in_flight"] = n
        return {
            "policy": known.policy.name,
            "depth": len(q),
            "bytes": q.bytes,
            "oldest_wait_s": round(q.oldest_wait_s(now), 3),
            "dispatch_rate_per_s": round(rate, 3) if rate is not None else None,
            "capacity_per_worker": self.capacity(m),
            "reserve_per_worker": shares.reserve if shares is not None else 0,
            "prefills_over_share_per_worker": shares.prefills if shares is not None else 0,
            "prefill_free_workers": shares.free_workers if shares is not None else 0,
            "max_requests": q.bounds.max_requests,
            "max_bytes": q.bounds.max_bytes,
            "timeout_s": q.bounds.timeout_s,
            "dispatched": q.dispatched,
            "refused": q.rejected,
            "timed_out": q.timed_out,
            "shed": q.shed,
            "classes": {p.label: {"depth": q.depth[p], "keys": sorted(q.lanes[p])} for p in CLASSES},
            "keys": dict(sorted(keys.items())),
        }


class QueueDepth(Collector):
    """``vgate_queue_depth{model}``, ``vgate_queue_class_depth{model,priority}`` and
    ``vgate_model_inflight{model}``, read from the dispatcher when Prometheus scrapes: every
    model served or declared reports them, 0 when idle. The depth and in-flight sums over the
    gateways are the load the autoscaler (and KEDA's query) reads."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "vgate_queue_depth", "Requests waiting for a worker of the model", labels=["model"]
        )
        by_class = GaugeMetricFamily(
            "vgate_queue_class_depth",
            "Requests waiting for a worker of the model, per priority class",
            labels=["model", "priority"],
        )
        inflight = GaugeMetricFamily(
            "vgate_model_inflight", "Requests in flight to the model's workers", labels=["model"]
        )
        sending = self._dispatcher.inflight()
        for model, waiting in self._dispatcher.depths().items():
            depth.add_metric([model], sum(waiting))
            inflight.add_metric([model], sending.get(model, 0))
            for priority in CLASSES:
                by_class.add_metric([model, priority.label], waiting[priority])
        yield depth
        yield by_class
        yield inflight
