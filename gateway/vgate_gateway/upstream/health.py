"""Active health checks of every known worker.

Each round asks each worker for ``/health`` and ``/v1/models`` (which also tells the
gateway what it serves), then reads its vLLM ``/metrics`` into :attr:`Upstream.load`
for the load-aware strategies. A worker leaves rotation after ``eject_after_failures``
failures in a row (checks here, connect errors and 5xx answers in the proxy) and comes
back the first time a check passes; a worker whose metrics can't be read stays healthy
and keeps its last figures. New workers are checked as soon as discovery reports them,
not at the next tick. While requests wait in a model's queue, workers that have not yet
passed a check (starting: scaled up from zero, or added under load) are probed every
``starting_interval_s`` between rounds, as Knative's activator probes a revision's new pods:
the first held request goes out a fraction of a second after its worker is up, not up to a
whole interval later. The checks have their own small client: they never wait behind
traffic for a connection, so a busy gateway never mistakes its own queue for a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from vgate_gateway.metrics import Metrics
from vgate_gateway.upstream.client import UpstreamClient, UpstreamError
from vgate_gateway.upstream.loadstats import parse_load
from vgate_gateway.upstream.pool import Upstream, UpstreamPool

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: Metrics,
        *,
        interval_s: float,
        timeout_s: float,
        starting_interval_s: float | None = None,
        waiting: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._client = client
        self._metrics = metrics
        self._interval = interval_s
        self._starting_interval = min(interval_s, starting_interval_s or interval_s)
        #: Whether any request waits for a worker now (the dispatcher's queues).
        self._waiting = waiting
        self._timeout = timeout_s
        self._clock = clock
        self._wake = asyncio.Event()
        #: Model cards by id, as the workers describe them in /v1/models.
        self.model_cards: dict[str, dict[str, Any]] = {}
        self._known: set[str] = set()
        #: The first round after start-up has finished: the gateway knows its workers.
        self.settled = asyncio.Event()

    def poke(self) -> None:
        """Check now (discovery changed the pool)."""
        self._wake.set()

    async def run(self, after_round: Callable[[], Awaitable[None]] | None = None) -> None:
        """Check every worker each interval; ``after_round`` acts on what the round found (adapters)."""
        while True:
            self._wake.clear()
            await self.check_all()
            self.settled.set()
            if after_round is not None:
                try:
                    await after_round()
                except Exception:  # a bug there must not stop the health checks
                    log.exception("after the health round")
            await self._until_next_round()

    async def _until_next_round(self) -> None:
        """Wait an interval (or a poke), probing starting workers meanwhile while requests wait."""
        deadline = self._clock() + self._interval
        while (left := deadline - self._clock()) > 0:
            starting = self._starting() if self._waiting() else []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=min(left, self._starting_interval) if starting else left
                )
                return  # poked: a full round now
            if starting:
                await asyncio.gather(*(self._check(u) for u in self._starting()))

    def _starting(self) -> list[Upstream]:
        """Workers that have never passed a check and are not leaving."""
        return [u for u in self._pool.all() if not u.seen_healthy and not u.terminating]

    async def check_all(self) -> None:
        upstreams = self._pool.all()
        await asyncio.gather(*(self._check(u) for u in upstreams))
        current = {u.url for u in upstreams}
        for gone in self._known - current:
            self._metrics.forget_upstream(gone)
        self._known = current

    async def _check(self, up: Upstream) -> None:
        epoch = up.adapter_epoch  # loads and unloads after this make the answer stale
        try:
            await self._expect_ok(f"{up.url}/health")
            body = await self._expect_ok(f"{up.url}/v1/models")
            cards = [c for c in orjson.loads(body).get("data", []) if isinstance(c, dict) and "id" in c]
        except (UpstreamError, ValueError, AttributeError) as exc:
            first = up.consecutive_failures == 0
            if self._pool.failed(up):
                self._metrics.ejections.inc()
                log.warning("worker %s is out of rotation: %s", up.url, _describe(exc))
            elif first:
                log.info("worker %s failed a health check: %s", up.url, _describe(exc))
        else:
            for card in cards:
                self.model_cards[str(card["id"])] = card
            # vLLM lists its LoRA adapters with the base model as ``parent``.
            served = frozenset(str(c["id"]) for c in cards if not c.get("parent"))
            adapters = frozenset(str(c["id"]) for c in cards if c.get("parent"))
            if self._pool.passed(up, served, adapters, epoch):
                log.info("worker %s is healthy, serving %s", up.url, sorted(served))
            await self._read_load(up)
        self._metrics.upstream_healthy.labels(up.url).set(1 if up.healthy else 0)

    async def _expect_ok(self, url: str) -> bytes:
        status, body = await self._client.get(url, self._timeout)
        if status != 200:
            raise _StatusError(status)
        return body

    async def _read_load(self, up: Upstream) -> None:
        try:
            text = (await self._expect_ok(f"{up.url}/metrics")).decode(errors="replace")
        except UpstreamError as exc:
            log.debug("cannot read the load of %s: %s", up.url, _describe(exc))
            return
        load = parse_load(text, self._clock())
        if load is not None:
            self._pool.set_load(up, load)


class _StatusError(UpstreamError):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
