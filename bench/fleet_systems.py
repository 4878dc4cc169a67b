"""The fleets the benchmark compares, each a set of dry-run workers behind one gateway's endpoints file.

Every system lists its workers in the gateway's endpoints file (``VGATE_ENDPOINTS_FILE``)
through :class:`vgate.devscale.Fleet`, the same local "Deployment controller" ``vgate dev
--autoscale`` uses; they differ only in who decides the list and what it costs:

* **static N**: N workers, started and ready before the trace; billed N all along.
* **oracle**: four workers started before the trace (instantly available), of which exactly
  ``ceil(demand / capacity)`` are listed at each moment; billed only for the listed ones.
* **elastic**: :class:`vgate.devscale.Scaler` (the operator's policy on the gateway's
  ``/load``) starts and stops workers with a real cold start; a worker is billed from the
  moment its process starts until it has exited.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.fleet_trace import replicas_at
from vgate.devscale import Fleet, Scaler
from vgate.procs import Child


@dataclass
class TimedFleet(Fleet):
    """A :class:`Fleet` that remembers when each worker's process started and when it first listened."""

    started: dict[int, float] = field(default_factory=dict)
    listening: dict[int, float] = field(default_factory=dict)

    def grow(self, count: int) -> None:
        before = set(self.workers)
        super().grow(count)
        now = time.monotonic()
        for port in set(self.workers) - before:
            self.started[port] = now

    def watch(self) -> None:
        """Note the workers that listen now (a connect succeeds) for the first time."""
        for port in list(self.workers):
            if port in self.listening:
                continue
            with socket.socket() as s:
                s.settimeout(0.05)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    self.listening[port] = time.monotonic()

    def billed(self) -> int:
        """Worker processes running now, starting and draining ones included."""
        return sum(1 for c in self.children() if c.alive())


class System:
    """One fleet under test: prepared before the trace, stepped during it."""

    name: str
    fleet: TimedFleet

    def prepare(self) -> None:
        """Start what must run before the trace begins."""

    def step(self, t: float) -> None:
        """Act ``t`` seconds into the trace (called every control interval)."""

    def billed(self) -> int:
        return len(self.fleet.workers)

    def ready_target(self) -> int:
        """Routable workers the gateway must see before the trace starts."""
        return len(self.fleet.workers)

    def children(self) -> list[Child]:
        """Every process to stop at the end."""
        return self.fleet.children()


@dataclass
class Static(System):
    name: str
    fleet: TimedFleet
    replicas: int

    def prepare(self) -> None:
        self.fleet.grow(self.replicas)


@dataclass
class Oracle(System):
    """All-knowing and instant: the listed workers follow the demand's schedule exactly."""

    name: str
    fleet: TimedFleet
    schedule: Sequence[tuple[float, int]]
    pool_size: int
    pool: dict[int, Child] = field(default_factory=dict)
    listed: int = -1

    def prepare(self) -> None:
        self.fleet.grow(self.pool_size)
        self.pool = dict(self.fleet.workers)

    def ready_target(self) -> int:
        return self.pool_size

    def step(self, t: float) -> None:
        want = replicas_at(self.schedule, t)
        if want != self.listed:
            self.fleet.workers = {p: self.pool[p] for p in sorted(self.pool)[:want]}
            self.fleet.write()
            self.listed = want

    def children(self) -> list[Child]:
        return list(self.pool.values())


@dataclass
class Elastic(System):
    """The operator's policy over real cold starts."""

    name: str
    fleet: TimedFleet
    scaler: Scaler

    def step(self, t: float) -> None:
        self.scaler.tick()
        self.fleet.watch()

    def billed(self) -> int:
        return self.fleet.billed()
