"""``python -m bench.fleet_model`` (``make bench-fleet-model``): the fleet benchmark as a queueing model, over many seeds.

``make bench-fleet`` serves one arrival seed of the trace with real processes in 12 minutes;
a run's bill moves by about 1 % with the moment a noisy load crosses a threshold. This
model answers the question one run cannot — how the policy does over the arrivals the trace
*could* have — in about a second per 30 seeds, by replaying the same trace and arrivals
(:mod:`bench.fleet_trace`) through the operator's own :func:`decide` and a model of
everything around it:

* a worker serves ``slots`` requests at once, each for ``slots / capacity`` seconds (the
  benchmark's measured capacity at its batch limit), and listens ``cold_start_s`` after it
  was asked for;
* the gateway queues FIFO and dispatches to the ready worker with the fewest in flight;
* every ``interval_s`` the policy sees in flight (on workers still listed) plus queued;
* a removed worker (the newest, as a ReplicaSet picks) takes no new requests and is billed
  until its preStop sleep is over and its last request has finished.

It leaves out what the real run measures: process starts, the simulator's step times, HTTP.
Checked against the real run of the same seed (docs/autoscaling.md), not instead of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.fleet import OPERATOR_INTERVAL_S, PRE_STOP_S, FleetConfig
from bench.fleet import policy as fleet_policy
from bench.fleet_trace import Trace, arrivals, percentile, standard_trace
from vgate_operator.autoscale.policy import Decision, PolicySettings, Sample, ScaleState, decide

Decide = Callable[[Sequence[Sample], float, int, int, PolicySettings, ScaleState], Decision]


@dataclass(frozen=True)
class ModelConfig:
    """The benchmark's fleet, uncompressed (``bench.fleet.FleetConfig``'s defaults)."""

    #: One worker's capacity as the real runs measure it.
    capacity_rps: float = 0.555
    slots: int = FleetConfig.max_num_seqs
    cold_start_s: float = FleetConfig.cold_start_s
    pre_stop_s: float = PRE_STOP_S
    interval_s: float = OPERATOR_INTERVAL_S
    dt: float = 0.1


@dataclass
class _Worker:
    asked_at: float
    ready_at: float
    #: When each request in flight ends.
    ends: list[float] = field(default_factory=list)
    left_at: float | None = None


@dataclass(frozen=True)
class Outcome:
    replica_seconds: float
    #: Seconds each request waited in the gateway's queue, in arrival order.
    waits: list[float]


def run(
    trace: Trace,
    settings: PolicySettings,
    seed: int,
    cfg: ModelConfig = ModelConfig(),
    policy: Decide = decide,
) -> Outcome:
    """One seed of ``trace`` under ``settings``: the bill and every request's queue wait."""
    service_s = cfg.slots / cfg.capacity_rps
    pending = deque(arrivals(trace, cfg.capacity_rps, seed))
    queue: deque[float] = deque()
    workers: list[_Worker] = []
    samples: list[Sample] = []
    state = ScaleState.starting(0.0, 0)
    waits: list[float] = []
    bill, t, tick = 0.0, 0.0, 0.0
    while t < trace.seconds:
        while pending and pending[0] <= t:
            queue.append(pending.popleft())
        for w in workers:
            w.ends = [e for e in w.ends if e > t]
        workers = [w for w in workers if w.left_at is None or w.ends or t < w.left_at + cfg.pre_stop_s]
        listed = [w for w in workers if w.left_at is None]
        while queue:
            free = [w for w in listed if t >= w.ready_at and len(w.ends) < cfg.slots]
            if not free:
                break
            waits.append(t - queue.popleft())
            min(free, key=lambda w: len(w.ends)).ends.append(t + service_s)
        if t >= tick:
            tick += cfg.interval_s
            samples.append(Sample(t, sum(len(w.ends) for w in listed) + len(queue)))
            samples = [s for s in samples if t - s.at <= settings.history_s]
            ready = sum(1 for w in listed if t >= w.ready_at)
            decision = policy(samples, t, len(listed), ready, settings, state)
            state = decision.state
            for _ in range(decision.replicas - len(listed)):
                workers.append(_Worker(t, t + cfg.cold_start_s))
            for w in sorted(listed, key=lambda w: w.asked_at)[decision.replicas :]:
                w.left_at = t
        bill += len(workers) * cfg.dt
        t += cfg.dt
    return Outcome(bill, waits)


def tuned_settings(
    peak: int, stable_s: float = 30.0, down_s: float = 20.0, zero_s: float = 20.0
) -> PolicySettings:
    """``make bench-fleet``'s ``elastic-tuned`` (uncompressed)."""
    return fleet_policy(FleetConfig(compress=1.0), peak, down_s, zero_s, stable_s)


def default_settings(peak: int) -> PolicySettings:
    """``make bench-fleet``'s ``elastic``: the policy's defaults."""
    return fleet_policy(FleetConfig(compress=1.0), peak, None, None)


def summary(
    name: str, trace: Trace, settings: PolicySettings, seeds: Sequence[int]
) -> dict[str, float | str]:
    """The bill against static-at-peak over ``seeds``, and the queue waits' p99, as a table row."""
    static_peak = trace.peak * trace.seconds
    outcomes = [run(trace, settings, s) for s in seeds]
    ratios = [o.replica_seconds / static_peak for o in outcomes]
    return {
        "system": name,
        "seeds": len(seeds),
        "mean": statistics.mean(ratios),
        "sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "min": min(ratios),
        "max": max(ratios),
        "over_half": sum(r > 0.5 for r in ratios) / len(ratios),
        "wait_p99_s": statistics.mean(percentile(o.waits, 0.99) or 0.0 for o in outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_model", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=30, help="arrival seeds 1..N (the real run uses 11)")
    args = p.parse_args(argv)
    trace = standard_trace()
    peak = int(trace.peak)
    seeds = range(1, args.seeds + 1)
    rows = [
        summary("elastic (defaults)", trace, default_settings(peak), seeds),
        summary("elastic-tuned", trace, tuned_settings(peak), seeds),
    ]
    print(
        "| system | seeds | vs static-peak, mean | sd | min | max | seeds over 0.5 | queue wait p99, mean |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['seeds']} | {r['mean']:.3f} | {r['sd']:.3f} | {r['min']:.3f} | {r['max']:.3f} "
            f"| {r['over_half']:.0%} | {r['wait_p99_s']:.1f} s |"
        )
    seed11 = run(trace, tuned_settings(peak), 11).replica_seconds / (trace.peak * trace.seconds)
    print(f"\nelastic-tuned, seed 11 (the real run's): {seed11:.3f} of static-at-peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
