"""Active health checks of every known worker.

Each round asks each worker for ``/health`` and ``/v1/models`` (which also tells the
gateway what it serves), then reads its vLLM ``/metrics`` into :attr:`Upstream.load`
for the load-aware strategies. A worker that fails is taken out of rotation at once
and comes back the first time it passes again; a worker whose metrics can't be read
stays healthy and keeps its last figures. New workers are checked as soon as
discovery reports them, not at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from vgate_gateway.loadstats import parse_load
from vgate_gateway.metrics import Metrics
from vgate_gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self,
        pool: UpstreamPool,
        client: httpx.AsyncClient,
        metrics: Metrics,
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._client = client
        self._metrics = metrics
        self._interval = interval_s
        self._timeout = timeout_s
        self._clock = clock
        self._wake = asyncio.Event()
        #: Model cards by id, as the workers describe them in /v1/models.
        self.model_cards: dict[str, dict[str, Any]] = {}
        self._known: set[str] = set()

    def poke(self) -> None:
        """Check now (discovery changed the pool)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.check_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)

    async def check_all(self) -> None:
        upstreams = self._pool.all()
        await asyncio.gather(*(self._check(u) for u in upstreams))
        current = {u.url for u in upstreams}
        for gone in self._known - current:
            self._metrics.forget_upstream(gone)
        self._known = current

    async def _check(self, up: Upstream) -> None:
        was_healthy = up.healthy
        try:
            r = await self._client.get(f"{up.url}/health", timeout=self._timeout)
            r.raise_for_status()
            r = await self._client.get(f"{up.url}/v1/models", timeout=self._timeout)
            r.raise_for_status()
            cards = [c for c in r.json().get("data", []) if isinstance(c, dict) and "id" in c]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            up.healthy = False
            up.consecutive_failures += 1
            if was_healthy or up.consecutive_failures == 1:
                log.warning("worker %s failed its health check: %s", up.url, _describe(exc))
        else:
            up.served_models = frozenset(str(c["id"]) for c in cards)
            for card in cards:
                self.model_cards[str(card["id"])] = card
            up.healthy = True
            up.consecutive_failures = 0
            if not was_healthy:
                log.info("worker %s is healthy, serving %s", up.url, sorted(up.served_models))
            await self._read_load(up)
        up.last_checked = self._clock()
        self._metrics.upstream_healthy.labels(up.url).set(1 if up.healthy else 0)

    async def _read_load(self, up: Upstream) -> None:
        try:
            r = await self._client.get(f"{up.url}/metrics", timeout=self._timeout)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            log.debug("cannot read the load of %s: %s", up.url, _describe(exc))
            return
        load = parse_load(r.text, self._clock())
        if load is not None:
            up.load = load


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
