"""``vgate dev --autoscale MIN:MAX``: the local stack's workers started and stopped on load.

The operator's policy (:func:`vgate_operator.autoscale.policy.decide`) decides, from the
gateway's own ``GET /load``, how many dry-run workers run; this module is the local
"Deployment controller": a new worker is a new process on a new port, added to the
gateway's endpoints file (``VGATE_ENDPOINTS_FILE``, which the gateway re-reads); a worker
that goes is first taken out of the file, then stopped. Workers start after
``--cold-start`` seconds (``--startup-delay-s``), as a GPU worker loads its model, and the
gateway queues the model's requests meanwhile.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from vgate.procs import Child, free_port, start, vgate_argv
from vgate_operator.autoscale.policy import Decision, PolicySettings, Sample, ScaleState, decide

#: Seconds between decisions (the operator's loop takes 2; locally there is no API server to spare).
TICK_S = 1.0
#: Seconds the gateway gets to drop a worker from its list before the worker is stopped
#: (three of the gateway's endpoints-file checks; a pod's preStop sleep in a cluster).
DRAIN_S = 1.5


def parse_bounds(text: str) -> tuple[int, int]:
    """``MIN:MAX`` → (min, max); ValueError says what is wrong."""
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ValueError(f"--autoscale wants MIN:MAX (e.g. 0:4), not {text!r}")
    bounds = int(lo), int(hi)
    if bounds[1] < 1 or bounds[0] > bounds[1]:
        raise ValueError(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return bounds


def dev_settings(bounds: tuple[int, int], target: int, down_s: float, zero_s: float) -> PolicySettings:
    """The cluster's policy with windows short enough to watch: 20 s stable, 2 s panic."""
    return PolicySettings(
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        target_per_replica=target,
        stable_window_s=20.0,
        panic_window_s=2.0,
        scale_down_delay_s=down_s,
        scale_to_zero_delay_s=zero_s,
    )


@dataclass
class Fleet:
    """The dry-run workers of one model and the endpoints file that lists them."""

    model: str
    endpoints: Path
    worker_args: Sequence[str]
    say: Callable[[str], None]
    workers: dict[int, Child] = field(default_factory=dict)
    #: Workers taken out of the list, stopped once the gateway has seen that: (when, child).
    leaving: list[tuple[float, Child]] = field(default_factory=list)
    #: Seconds between taking a worker out of the list and stopping it; must outlast the
    #: gateway's ``endpoints_reload_s``.
    drain_s: float = DRAIN_S

    def write(self) -> None:
        # Whole-file replace: the gateway never reads half a list.
        tmp = self.endpoints.with_suffix(".tmp")
        tmp.write_text("".join(f"http://127.0.0.1:{p}\n" for p in sorted(self.workers)))
        tmp.replace(self.endpoints)

    def grow(self, count: int) -> None:
        for _ in range(count):
            port = free_port()
            argv = vgate_argv("worker", "--dry-run", "--port", str(port), "--served-model-name", self.model)
            self.workers[port] = start([*argv, *self.worker_args], group=False)
        self.write()

    def shrink(self, count: int) -> None:
        # The newest go first: the oldest have the warmest prefix caches.
        for port in sorted(self.workers, reverse=True)[:count]:
            self.leaving.append((time.monotonic(), self.workers.pop(port)))
        self.write()

    def reap(self) -> None:
        """Stop drained workers; forget (and report) workers that died on their own."""
        now = time.monotonic()
        for when, child in list(self.leaving):
            if now - when >= self.drain_s and child.alive():
                child.send(signal.SIGTERM)
            if not child.alive():
                self.leaving.remove((when, child))
        dead = [p for p, c in self.workers.items() if not c.alive()]
        for port in dead:
            child = self.workers.pop(port)
            self.say(f"worker 127.0.0.1:{port} exited (status {child.popen.returncode})")
        if dead:
            self.write()

    def children(self) -> list[Child]:
        return [*self.workers.values(), *(c for _, c in self.leaving)]


def read_load(internal: str, model: str, client: httpx.Client | None = None) -> tuple[int, int, int] | None:
    """(in flight, queued, ready workers) of ``model`` from the gateway's ``/load``, or None.

    Pass a ``client`` when asking often: a fresh one per call costs tens of milliseconds of CPU.
    """
    try:
        answer = (client or httpx).get(f"{internal}/load", timeout=1.0)
        answer.raise_for_status()
        entry = (answer.json().get("models") or {}).get(model) or {}
    except (httpx.HTTPError, ValueError) as exc:
        print(f"vgate dev: the gateway's /load did not answer ({exc}); holding", file=sys.stderr, flush=True)
        return None
    return int(entry.get("inflight", 0)), int(entry.get("queued", 0)), int(entry.get("ready_workers", 0))


@dataclass
class Scaler:
    """The policy's loop over one fleet: one :meth:`tick` a second."""

    fleet: Fleet
    settings: PolicySettings
    internal: str
    samples: list[Sample] = field(default_factory=list)
    state: ScaleState | None = None
    #: One connection pool for every tick's ``/load``.
    client: httpx.Client = field(default_factory=httpx.Client)

    def tick(self) -> Decision:
        now = time.monotonic()
        current = len(self.fleet.workers)
        if self.state is None:
            self.state = ScaleState.starting(now, current)
        load = read_load(self.internal, self.fleet.model, self.client)
        ready = current
        if load is not None:
            inflight, queued, ready = load
            self.samples.append(Sample(now, inflight + queued))
        self.samples = [s for s in self.samples if now - s.at <= self.settings.history_s]
        decision = decide(self.samples, now, current, min(ready, current), self.settings, self.state)
        self.state = decision.state
        if decision.replicas != current:
            detail = f"{load[1]} queued, {load[0]} in flight" if load is not None else "no load reading"
            self.fleet.say(
                f"{self.fleet.model}: scaling {current} → {decision.replicas} ({detail}): {decision.reason}"
            )
            if decision.replicas > current:
                self.fleet.grow(decision.replicas - current)
            else:
                self.fleet.shrink(current - decision.replicas)
        self.fleet.reap()
        return decision


def endpoints_file() -> Path:
    """An empty private endpoints file, removed when this process exits."""
    fd, path = tempfile.mkstemp(prefix="vgate-dev-endpoints-", text=True)
    os.close(fd)
    atexit.register(Path(path).unlink, missing_ok=True)
    return Path(path)
