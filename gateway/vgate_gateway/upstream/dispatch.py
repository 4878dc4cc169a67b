"""Dispatch: each request to a worker that can take it now, or to its model's queue until one can.

A worker can take a request while it is routable (healthy, ready, not terminating) and this
gateway process has fewer than the model's ``capacity`` requests in flight to it (vLLM's
``max_num_seqs``: beyond it vLLM only queues them itself). When no worker of the model can
— none is ready (scaled to zero, starting, rolling) or every one is saturated — the request
waits in its model's :class:`~vgate_gateway.upstream.queue.ModelQueue`, bounded in requests,
bytes and time, and is dispatched in the queue's order the moment a worker can take it: when
a request to that model ends, or when a worker becomes routable. The routing decision is made
then, with the state of that moment. Nothing waits while capacity is free, and a request
whose client leaves while queued is removed at once, having cost nothing upstream.

The dispatcher also counts what each model has in flight and queued: the load the
autoscaler reads (``GET /load`` on the internal port).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vgate_gateway.errors import OpenAIError, model_not_found, unavailable
from vgate_gateway.protocol import Request
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.adapters import AdapterManager
from vgate_gateway.upstream.pool import Upstream, UpstreamPool
from vgate_gateway.upstream.queue import Bounds, ModelQueue, QueueFull, Waiting, next_index
from vgate_gateway.upstream.routing import Router

log = logging.getLogger(__name__)

#: Seconds a request may wait, as the histogram's buckets see them (a GPU cold start is tens of seconds).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class QueueMetrics:
    """The queues' Prometheus series, registered on the given registry.

    The depth is read from the queues when Prometheus scrapes (:class:`QueueDepth`), so the
    request path pays nothing for it and every known model reports one, 0 while nothing waits.
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
            "Requests the model's queue refused: full (requests or bytes) or waited out",
            ["model", "reason"],
            registry=registry,
        )


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
        self._queues: dict[str, ModelQueue] = {}
        self._capacity: dict[str, int] = {}
        for model in settings.declared_models():
            self.capacity(model)
        #: Requests in flight to each model's workers.
        self.inflight: dict[str, int] = {}
        #: LoRA adapters: a request for one waits in its own queue while it is loaded somewhere.
        self._adapters: AdapterManager | None = None
        pool.listen(self._wake_all)

    def use_adapters(self, adapters: AdapterManager) -> None:
        """Declared LoRA adapters are loaded by ``adapters`` when their requests must wait."""
        self._adapters = adapters
        adapters.bind(lambda name: len(self._queues.get(name) or ()), self.fail)

    def capacity(self, model: str) -> int:
        """Requests one worker of ``model`` takes from this process before it counts as saturated."""
        known = self._capacity.get(model)
        if known is not None:
            return known
        capacity = self._settings.for_model(model).capacity or 1
        # Only a model served here gets series of its own: clients choose model names.
        if model in self._settings.declared_models() or self._pool.known_model(model):
            self._capacity[model] = capacity
            self._metrics.wait.labels(model)  # its series exist from now on, 0 until something waits
            for reason in ("full", "timeout"):
                self._metrics.refused.labels(model, reason)
        return capacity

    def take_free(self, req: Request, exclude: Sequence[str] = ()) -> Upstream | None:
        """A worker that can take ``req`` now, begun, if no request of its model is waiting; else None."""
        model = req.model
        adapters = self._adapters
        if adapters is not None and adapters.undeclared(model):
            raise model_not_found(model)
        queue = self._queues.get(model)
        if queue is None or not queue.waiting or exclude:
            up = self._router.pick_free(req, self.capacity(model), exclude)
            if up is not None:
                self._begin(model, up)
                return up
        return None

    async def acquire(self, req: Request, exclude: Sequence[str] = ()) -> Upstream:
        """The worker ``req`` goes to, begun; waits in the model's queue while none can take it.

        ``exclude``: workers that already failed this request; a retry is never queued.
        """
        up = self.take_free(req, exclude)
        if up is not None:
            return up
        model = req.model
        if exclude:
            # A retry after a worker failed: never queued; a busy worker will do, else the router says why not.
            up = self._router.pick(req, exclude)
            self._begin(model, up)
            return up
        if not self._router.may_serve(model):
            raise model_not_found(model)
        return await self._wait(self._queue(model), req)

    def release(self, model: str, up: Upstream) -> None:
        """A request to ``up`` for ``model`` is over; the next waiting request may take its place."""
        self._pool.end(up)
        self.inflight[model] -= 1
        if self._adapters is not None and self._adapters.declared(model):
            self._adapters.end(model, up)
        queue = self._queues.get(model)
        if queue is not None and queue.waiting:
            self._drain(queue)

    def _begin(self, model: str, up: Upstream) -> None:
        self._pool.begin(up)
        self.inflight[model] = self.inflight.get(model, 0) + 1
        if self._adapters is not None and self._adapters.declared(model):
            self._adapters.begin(model, up)

    def fail(self, model: str, error: OpenAIError) -> None:
        """Refuse every request waiting for ``model`` with ``error`` (no worker can serve it)."""
        queue = self._queues.get(model)
        while queue is not None and queue.waiting:
            waiting = queue.take(0)
            if not waiting.granted.done():
                waiting.granted.set_exception(error)

    def _queue(self, model: str) -> ModelQueue:
        queue = self._queues.get(model)
        if queue is None:
            own = self._settings.for_model(model)
            bounds = Bounds(
                max_requests=own.queue_max_requests or 0,
                max_bytes=own.queue_max_bytes or 0,
                timeout_s=own.queue_timeout_s or 0.0,
            )
            queue = self._queues[model] = ModelQueue(model, bounds)
        return queue

    async def _wait(self, queue: ModelQueue, req: Request) -> Upstream:
        waiting = Waiting(req, self._clock(), asyncio.get_running_loop().create_future())
        try:
            queue.add(waiting)
        except QueueFull as exc:
            self._metrics.refused.labels(queue.model, "full").inc()
            raise self._refusal(
                f"The queue for model '{queue.model}' is full: {exc}.", "queue_full"
            ) from None
        if len(queue) == 1:
            log.info("model %s: no worker can take a request now; queueing", queue.model)
        if self._adapters is not None and self._adapters.declared(queue.model):
            self._adapters.want(queue.model)  # loaded somewhere while the request waits
        try:
            async with asyncio.timeout(queue.bounds.timeout_s):
                return await waiting.granted
        except BaseException as exc:
            granted = waiting.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self.release(queue.model, waiting.granted.result())  # granted as it gave up: pass it on
            else:
                queue.drop(waiting)
            if isinstance(exc, TimeoutError):
                queue.timed_out += 1
                self._metrics.refused.labels(queue.model, "timeout").inc()
                raise self._refusal(
                    f"No worker for model '{queue.model}' could take the request within "
                    f"{queue.bounds.timeout_s:g}s.",
                    "queue_timeout",
                ) from None
            raise

    def _refusal(self, message: str, code: str) -> OpenAIError:
        return unavailable(f"{message} Retry shortly.", code=code, retry_after_s=self._settings.retry_after_s)

    def _wake_all(self) -> None:
        for queue in self._queues.values():
            if queue.waiting:
                self._drain(queue)

    def _drain(self, queue: ModelQueue) -> None:
        """Dispatch waiting requests, in the queue's order, while a worker can take one."""
        capacity = self.capacity(queue.model)
        now = self._clock()
        while queue.waiting:
            index = next_index(queue.waiting)
            head = queue.waiting[index]
            if head.granted.done():  # gave up, not yet removed
                queue.take(index)
                continue
            up = self._router.pick_free(head.req, capacity)
            if up is None:
                break
            queue.take(index)
            self._begin(queue.model, up)
            head.granted.set_result(up)
            queue.dispatched += 1
            self._metrics.wait.labels(queue.model).observe(now - head.since)

    def depths(self) -> dict[str, int]:
        """Requests waiting, for every model seen or declared."""
        return {m: len(self._queues[m]) if m in self._queues else 0 for m in sorted(self._capacity)}

    def load(self) -> dict[str, dict[str, int]]:
        """Per model: requests in flight, requests queued, and routable workers (``GET /load``).

        An adapter's requests count towards its base model: they run on its workers.
        """
        base = self._settings.base_of
        models = {base(m) for m in (*self.inflight, *self._queues)} | self._settings.declared_models()
        out = {m: {"inflight": 0, "queued": 0, "ready_workers": 0} for m in sorted(models)}
        for m, n in self.inflight.items():
            out[base(m)]["inflight"] += n
        for m, q in self._queues.items():
            out[base(m)]["queued"] += len(q)
        for m, row in out.items():
            row["ready_workers"] = len([u for u in self._pool.routable(m) if u.routable])
        return out

    def stats(self) -> dict[str, Any]:
        """The ``queues`` section of ``/stats``."""
        now = self._clock()
        return {
            m: {
                "depth": len(q),
                "bytes": q.bytes,
                "oldest_wait_s": round(q.oldest_wait_s(now), 3),
                "capacity_per_worker": self.capacity(m),
                "max_requests": q.bounds.max_requests,
                "max_bytes": q.bounds.max_bytes,
                "timeout_s": q.bounds.timeout_s,
                "dispatched": q.dispatched,
                "refused": q.rejected,
                "timed_out": q.timed_out,
            }
            for m, q in sorted(self._queues.items())
        }


class QueueDepth(Collector):
    """``vgate_queue_depth{model}`` and ``vgate_model_inflight{model}``, read from the dispatcher
    when Prometheus scrapes: every model served or declared reports both, 0 when idle. Their sum
    over the gateways is the load the autoscaler (and KEDA's query) reads."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "vgate_queue_depth", "Requests waiting for a worker of the model", labels=["model"]
        )
        inflight = GaugeMetricFamily(
            "vgate_model_inflight", "Requests in flight to the model's workers", labels=["model"]
        )
        for model, waiting in self._dispatcher.depths().items():
            depth.add_metric([model], waiting)
            inflight.add_metric([model], self._dispatcher.inflight.get(model, 0))
        yield depth
        yield inflight
