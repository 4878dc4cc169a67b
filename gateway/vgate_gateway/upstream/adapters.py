"""LoRA adapters: loaded on the workers where they are wanted, through vLLM's runtime API.

The gateway knows each declared adapter (``adapters`` in its settings: name, base model,
source, ``min_workers``) and learns where each is loaded from the workers' ``/v1/models``
(cards with a ``parent``) and from its own load calls. A request for an adapter goes to a
worker that has it loaded (the pool's candidates for the adapter's name); when none has,
the request waits in the adapter's queue (:mod:`vgate_gateway.upstream.dispatch`) while this
manager loads it (``POST /v1/load_lora_adapter``) on the best worker
(:class:`~vgate_gateway.upstream.placement.Placement`: the least expected demand), unloading
the least demanded idle adapter there first when its slots are full. A load that succeeds makes the worker a
candidate at once, which wakes the queue. A load that fails is logged with vLLM's message,
the worker is not asked again for a while, and the adapter is tried on another worker; when
no worker is left to try, the waiting requests get a 503 (never a hang). An adapter whose
holders are all much busier than the least busy worker is loaded on one more worker.

Every health round, :meth:`AdapterManager.reconcile` keeps each adapter on at least its
``min_workers`` workers, unloads adapters that are no longer declared, and, once the
adapters' popularity is known, swaps adapters between workers whose expected shares of the
requests are far apart (:meth:`~vgate_gateway.upstream.placement.Placement.rebalance`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from vgate_gateway.errors import OpenAIError, unavailable
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.client import UpstreamClient, UpstreamError
from vgate_gateway.upstream.placement import Placement, Swap, Target
from vgate_gateway.upstream.pool import Upstream, UpstreamPool

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}


class AdapterManager:
    """Loads and unloads declared adapters on the workers of their base models."""

    def __init__(self, settings: GatewaySettings, pool: UpstreamPool, client: UpstreamClient) -> None:
        self._settings = settings
        self._pool = pool
        self._client = client
        self.placement = Placement(
            settings.adapters,
            lambda base: settings.for_model(base).max_loras or settings.max_loras,
            retry_s=settings.adapter_retry_s,
            waiting=lambda name: self._queued(name),
        )
        self._wanted: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Unloads waiting for an adapter's requests in flight on a worker to end.
        self._drained: dict[tuple[str, str], asyncio.Event] = {}
        self.counts: Counter[tuple[str, str]] = Counter()  # (adapter, loads|load_failures|unloads)
        self._queued: Callable[[str], int] = lambda name: 0
        self._fail: Callable[[str, OpenAIError], None] = lambda name, error: None
        self._last_error = ""
        pool.listen(self._kick)  # a worker that became routable may take a wanted adapter

    def bind(self, queued: Callable[[str], int], fail: Callable[[str, OpenAIError], None]) -> None:
        """The dispatcher's view: how many requests wait for an adapter, and how to refuse them all."""
        self._queued, self._fail = queued, fail

    def declared(self, model: str) -> bool:
        return model in self._settings.adapters

    def undeclared(self, model: str) -> bool:
        """An adapter some worker has loaded that this gateway does not declare: a 404, as any unknown model."""
        return (
            bool(self._settings.adapters)
            and model not in self._settings.adapters
            and any(model in u.adapters for u in self._pool.all())
        )

    def workers(self, name: str) -> list[Upstream]:
        """The routable workers of ``name``'s base model."""
        return self._pool.routable(self._settings.adapters[name].base)

    # -- what the dispatcher tells it

    def want(self, name: str) -> None:
        """Requests for ``name`` wait: load it somewhere."""
        self._wanted.add(name)
        self._kick()

    def begin(self, name: str, up: Upstream) -> None:
        self.placement.begin(up.url, name)
        holders = [u for u in self._pool.routable(name) if u.routable]
        if self.placement.crowded(name, holders, self.workers(name), self._settings.adapter_spread_imbalance):
            self._wanted.add(name)
            self._kick()

    def end(self, name: str, up: Upstream) -> None:
        self.placement.end(up.url, name)
        if not self.placement.inflight.get((up.url, name)) and (
            drained := self._drained.pop((up.url, name), None)
        ):
            drained.set()  # an unload waits for this: the adapter's last request there ended
        if self._wanted:
            self._kick()

    # -- loading

    def _kick(self) -> None:
        """Start the loads wanted now, within the bound of loads in flight: most wanted first."""
        for name in sorted(self._wanted, key=self._urgency):
            if self.placement.loading.get(name):
                continue  # one load of an adapter at a time
            holders = [u for u in self._pool.routable(name) if u.routable]
            workers = self.workers(name)
            crowded = self.placement.crowded(name, holders, workers, self._settings.adapter_spread_imbalance)
            if holders and not crowded and not self._short_of_minimum(name, holders):
                self._wanted.discard(name)
                continue
            if self._loads_in_flight() >= self._settings.adapter_loads_in_flight:
                return
            target = self.placement.target(name, workers)
            if target is not None:
                self._start(name, target)
            elif holders:
                self._wanted.discard(name)  # no room for another copy: the holders serve it
            elif workers and not any(self.placement.may_try(u.url, name) for u in workers):
                self._wanted.discard(name)
                self._fail(name, self._unloadable(name))

    def _urgency(self, name: str) -> tuple[float, str]:
        """Requests waiting for ``name`` and begun lately: the more, the sooner it loads."""
        return (-self.placement.demand(name), name)

    def _short_of_minimum(self, name: str, holders: list[Upstream]) -> bool:
        return len(holders) < self._settings.adapters[name].min_workers

    def _loads_in_flight(self) -> int:
        return sum(len(urls) for urls in self.placement.loading.values())

    def _start(self, name: str, target: Target) -> None:
        self.placement.loading.setdefault(name, set()).add(target.worker.url)
        task = asyncio.create_task(self._load(name, target), name=f"load adapter {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, name: str, target: Target) -> None:
        up = target.worker
        try:
            if target.evict is not None:
                await self.unload(up, target.evict)
            await self._load_on(up, name)
        except UpstreamError as exc:
            self._load_failed(name, up, str(exc) or type(exc).__name__)
        finally:
            self.placement.loading.get(name, set()).discard(up.url)
            self._kick()

    async def _load_on(self, up: Upstream, name: str) -> bool:
        """Ask ``up`` to load ``name``; True when it holds it."""
        spec = self._settings.adapters[name]
        status, message = await self._call(up, "load", {"lora_name": name, "lora_path": spec.source})
        if status == 200 or "has already been loaded" in message:
            self.counts[(name, "loads")] += 1
            log.info("adapter %s loaded on %s", name, up.url)
            self._pool.adapter_loaded(up, name)
            return True
        self._load_failed(name, up, f"HTTP {status}: {message}")
        return False

    def _start_swap(self, swap: Swap) -> None:
        self.placement.loading.setdefault(swap.move, set()).add(swap.light.url)
        if swap.back is not None:
            self.placement.loading.setdefault(swap.back, set()).add(swap.heavy.url)
        task = asyncio.create_task(self._swap(swap), name=f"rebalance adapter {swap.move}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _swap(self, swap: Swap) -> None:
        """Move ``swap.move`` to the lighter worker (it stays servable throughout), then ``swap.back`` the other way.

        ``swap.back`` is unloaded first to free its slot and is wanted back at once: its
        requests meanwhile wait in its queue, as for any adapter being loaded.
        """
        log.info(
            "rebalancing adapters: %s from %s to %s%s",
            swap.move,
            swap.heavy.url,
            swap.light.url,
            f", {swap.back} the other way" if swap.back else "",
        )
        try:
            if swap.back is not None:
                await self.unload(swap.light, swap.back)
            if await self._load_on(swap.light, swap.move):
                await self.unload(swap.heavy, swap.move)
                if swap.back is not None:
                    await self._load_on(swap.heavy, swap.back)
        except UpstreamError as exc:
            log.warning("rebalancing adapters %s/%s failed: %s", swap.move, swap.back, exc)
        finally:
            self.placement.loading.get(swap.move, set()).discard(swap.light.url)
            if swap.back is not None:
                self.placement.loading.get(swap.back, set()).discard(swap.heavy.url)
                if not self._pool.routable(swap.back):
                    self._wanted.add(swap.back)  # the move back failed: load it where it fits
            self._kick()

    def _load_failed(self, name: str, up: Upstream, why: str) -> None:
        self.counts[(name, "load_failures")] += 1
        self.placement.failed(up.url, name)
        self._last_error = why
        log.warning("worker %s could not load adapter %s: %s", up.url, name, why)

    def _unloadable(self, name: str) -> OpenAIError:
        return unavailable(
            f"No worker could load adapter '{name}' ({self._last_error}). Retry later.",
            code="adapter_unavailable",
            retry_after_s=self._settings.retry_after_s,
        )

    async def unload(self, up: Upstream, name: str) -> None:
        """Unload ``name`` from ``up`` once its requests in flight there are over; it gets no new ones."""
        self._pool.adapter_unloaded(up, name)
        if self.placement.inflight.get((up.url, name)):
            drained = self._drained.setdefault((up.url, name), asyncio.Event())
            await drained.wait()
        self.placement.forget(up.url, name)
        status, message = await self._call(up, "unload", {"lora_name": name})
        if status in (200, 404):
            self.counts[(name, "unloads")] += 1
            log.info("adapter %s unloaded from %s", name, up.url)
        else:
            log.warning("worker %s could not unload adapter %s: HTTP %d: %s", up.url, name, status, message)

    async def _call(self, up: Upstream, verb: str, body: dict[str, str]) -> tuple[int, str]:
        """POST vLLM's ``/v1/{verb}_lora_adapter``: the status and vLLM's message."""
        resp = await self._client.post(
            f"{up.url}/v1/{verb}_lora_adapter", orjson.dumps(body), _JSON, stream=False
        )
        try:
            raw = await resp.read()
        finally:
            await resp.release()
        return resp.status, _message(raw)

    # -- every health round

    async def reconcile(self) -> None:
        """Keep adapters on their minimum of workers; unload those no longer declared."""
        for name, spec in self._settings.adapters.items():
            if spec.min_workers and self._short_of_minimum(name, self._pool.routable(name)):
                self._wanted.add(name)
        self._kick()
        if not self._settings.adapters:
            return
        if not self._wanted and not self._loads_in_flight():
            for base in sorted({a.base for a in self._settings.adapters.values()}):
                swap = self.placement.rebalance(self._pool.routable(base))
                if swap is not None:
                    self._start_swap(swap)
                    break
        for up in self._pool.all():
            for name in sorted(up.adapters - set(self._settings.adapters)):
                if not self.placement.inflight.get((up.url, name)):
                    try:
                        await self.unload(up, name)
                    except UpstreamError as exc:
                        log.warning("worker %s could not unload adapter %s: %s", up.url, name, exc)

    def stats(self) -> dict[str, Any]:
        """The ``adapters`` section of ``/stats``: where each adapter is loaded, and its loads."""
        out: dict[str, Any] = {}
        for name, spec in sorted(self._settings.adapters.items()):
            out[name] = {
                "base": spec.base,
                "source": spec.source,
                "min_workers": spec.min_workers,
                "loaded_on": [u.url for u in self._pool.all() if name in u.adapters],
                "loading_on": sorted(self.placement.loading.get(name, ())),
                "inflight": sum(c for (_, n), c in self.placement.inflight.items() if n == name),
                "loads": self.counts[(name, "loads")],
                "load_failures": self.counts[(name, "load_failures")],
                "unloads": self.counts[(name, "unloads")],
            }
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _message(raw: bytes) -> str:
    """vLLM's message: a plain-text success sentence, or the ``message`` of its error body."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace").strip()[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:500]
    return raw.decode(errors="replace")[:500]
