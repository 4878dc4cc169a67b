"""``python -m bench.fleet`` (``make bench-fleet``): the elastic fleet against static and oracle fleets, one trace.

One run measures a worker's capacity (one dry-run worker at its batch limit), turns the
standard trace (idle, ramp to three workers' capacity, hold, a burst to four, ramp down,
idle) into open-loop Poisson arrivals of streamed chat requests, and serves the same
arrivals with each system in turn, each behind a fresh gateway: ``elastic`` (the operator's
policy with its defaults, through :class:`vgate.devscale.Scaler`, over workers with a real
cold start), optionally ``elastic-tuned`` (the same with other delays), ``oracle``,
``static-peak`` and ``static-mean``. Everything — trace, cold start, the policy's windows
and delays, a removed worker's preStop sleep, the gateway's health interval, endpoint
propagation and queue timeout, the simulator's speed — is compressed by one factor
(``--compress``); the report gives both time scales.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet_load import closed_loop, drive
from bench.fleet_report import render_markdown, summarize, to_json, write_plot
from bench.fleet_systems import Elastic, Oracle, Static, System, TimedFleet
from bench.fleet_trace import Trace, arrivals, oracle_schedule, standard_trace
from bench.stack import Gateway, vgate_service, wait_routable
from vgate.devscale import Scaler
from vgate.procs import free_port, stop_all
from vgate.waiting import wait_for
from vgate_operator.autoscale.policy import PolicySettings
from vgate_operator.builders.common import PRE_STOP_SLEEP
from vgate_worker.settings import DEFAULT_MODEL

SYSTEMS = ("elastic", "elastic-tuned", "oracle", "static-peak", "static-mean")
#: The operator's loop interval, uncompressed (VGATE_OPERATOR_AUTOSCALE_INTERVAL_S).
OPERATOR_INTERVAL_S = 2.0
#: The gateway's health-check intervals and queue timeout, uncompressed (their defaults).
HEALTH_INTERVAL_S = 2.0
HEALTH_STARTING_INTERVAL_S = 0.25
QUEUE_TIMEOUT_S = 300.0
#: A removed worker's stop, uncompressed: the worker pod's preStop sleep, while its
#: EndpointSlice change reaches the gateway within about a second.
PRE_STOP_S = float(PRE_STOP_SLEEP)
ENDPOINTS_PROPAGATION_S = 1.0


@dataclass(frozen=True)
class FleetConfig:
    """One run's shape. Durations are uncompressed seconds unless named ``_compressed``."""

    compress: float = 10.0
    cold_start_s: float = 20.0
    max_num_seqs: int = 8
    prompt_words: int = 40
    output_tokens: int = 32
    #: The simulated GPU's decode step at batch 1: a slow one, so the peak fleet's token
    #: stream fits a small machine's CPU at the compressed speed.
    decode_step_s: float = 0.4
    #: Multiplies every phase of the trace (tests shrink it).
    trace_scale: float = 1.0
    calibrate_s: float = 60.0
    systems: tuple[str, ...] = ("elastic", "oracle", "static-peak", "static-mean")
    #: The policy's delays for ``elastic-tuned`` (None: the policy's default).
    tuned_scale_down_delay_s: float | None = None
    tuned_scale_to_zero_delay_s: float | None = None
    tuned_stable_window_s: float | None = None
    seed: int = 11
    out: str = "bench/results"

    def c(self, seconds: float) -> float:
        """Uncompressed seconds → compressed."""
        return seconds / self.compress


def worker_args(cfg: FleetConfig, startup_delay_c: float) -> list[str]:
    return [
        "--max-num-seqs", str(cfg.max_num_seqs), "--speed", f"{cfg.compress:g}",
        "--decode-step-s", f"{cfg.decode_step_s:g}", "--startup-delay-s", f"{startup_delay_c:.3f}",
        "--log-level", "warning",
    ]  # fmt: skip


def policy(
    cfg: FleetConfig, peak: int, down_s: float | None, zero_s: float | None, stable_s: float | None = None
) -> PolicySettings:
    """The operator's policy, its defaults unless given, every window and delay compressed."""
    d = PolicySettings(min_replicas=0, max_replicas=peak, target_per_replica=cfg.max_num_seqs)
    return dataclasses.replace(
        d,
        stable_window_s=cfg.c(stable_s if stable_s is not None else d.stable_window_s),
        panic_window_s=cfg.c(d.panic_window_s),
        scale_down_delay_s=cfg.c(down_s if down_s is not None else d.scale_down_delay_s),
        scale_to_zero_delay_s=cfg.c(zero_s if zero_s is not None else d.scale_to_zero_delay_s),
        stale_after_s=cfg.c(d.stale_after_s),
    )


def start_gateway(cfg: FleetConfig, endpoints: Path, logs: Path, name: str) -> Any:
    internal = free_port()
    env = {
        "VGATE_ENDPOINTS_FILE": str(endpoints),
        "VGATE_MODELS": DEFAULT_MODEL,
        "VGATE_WORKER_CAPACITY": str(cfg.max_num_seqs),
        "VGATE_HEALTH_INTERVAL_S": f"{cfg.c(HEALTH_INTERVAL_S):g}",
        "VGATE_HEALTH_STARTING_INTERVAL_S": f"{cfg.c(HEALTH_STARTING_INTERVAL_S):g}",
        "VGATE_QUEUE_TIMEOUT_S": f"{cfg.c(QUEUE_TIMEOUT_S):g}",
        "VGATE_ENDPOINTS_RELOAD_S": f"{cfg.c(ENDPOINTS_PROPAGATION_S):g}",
        "VGATE_LOG_LEVEL": "warning",
        "VGATE_INTERNAL_PORT": str(internal),
    }
    return vgate_service(["gateway"], "/health", env, logs / f"gateway-{name}.log"), internal


def measure_start(cfg: FleetConfig, logs: Path) -> float:
    """Seconds from a worker's process start to its port listening with no simulated delay."""
    fleet = TimedFleet(DEFAULT_MODEL, logs / "probe-endpoints", worker_args(cfg, 0.0), say=lambda _: None)
    fleet.grow(1)
    try:
        wait_for(
            lambda: fleet.watch() or bool(fleet.listening),
            "a probe worker to listen",
            within=60,
            interval=0.01,
        )
        [port] = fleet.listening
        return fleet.listening[port] - fleet.started[port]
    finally:
        stop_all(fleet.children())


def calibrate(cfg: FleetConfig, logs: Path) -> float:
    """Requests per second (compressed) one worker serves at its batch limit, through a gateway."""
    endpoints = logs / "calibrate-endpoints"
    fleet = TimedFleet(DEFAULT_MODEL, endpoints, worker_args(cfg, 0.0), say=lambda _: None)
    fleet.grow(1)
    service, internal = start_gateway(cfg, endpoints, logs, "calibrate")
    try:
        with service as url:
            gw = Gateway(url)
            gw.internal = f"http://127.0.0.1:{internal}"
            wait_routable(gw, 1)
            rate = asyncio.run(
                closed_loop(url, cfg.max_num_seqs, cfg.c(cfg.calibrate_s), cfg.c(cfg.calibrate_s) / 4,
                            cfg.prompt_words, cfg.output_tokens)
            )  # fmt: skip
    finally:
        stop_all(fleet.children())
    return rate


def build_system(
    cfg: FleetConfig, name: str, trace: Trace, endpoints: Path, internal: str, start_overhead: float,
    decisions: list[tuple[float, str]], t0: list[float],
) -> System:  # fmt: skip
    """The system ``name`` over a fresh endpoints file; ``t0[0]`` is the trace's start, once known."""
    peak = math.ceil(trace.peak)
    if name.startswith("elastic"):
        delay = max(0.0, cfg.c(cfg.cold_start_s) - start_overhead)

        def say(text: str) -> None:
            decisions.append((round(time.monotonic() - t0[0], 3), text))

        fleet = TimedFleet(
            DEFAULT_MODEL, endpoints, worker_args(cfg, delay), say=say, drain_s=cfg.c(PRE_STOP_S)
        )
        tuned = name == "elastic-tuned"
        settings = policy(
            cfg, peak,
            cfg.tuned_scale_down_delay_s if tuned else None,
            cfg.tuned_scale_to_zero_delay_s if tuned else None,
            cfg.tuned_stable_window_s if tuned else None,
        )  # fmt: skip
        return Elastic(name, fleet, Scaler(fleet, settings, internal))
    fleet = TimedFleet(DEFAULT_MODEL, endpoints, worker_args(cfg, 0.0), say=lambda _: None)
    if name == "oracle":
        return Oracle(name, fleet, oracle_schedule(trace), peak)
    replicas = peak if name == "static-peak" else math.ceil(trace.mean())
    return Static(name, fleet, replicas)


def _control(
    system: System, t0: float, end: float, interval: float, internal: str, out: dict[str, Any]
) -> None:
    """Step the system every ``interval`` until ``out['stop']``; record the bill and the gateway's view."""
    bill: list[tuple[float, int]] = out["bill"]
    timeline: list[list[float]] = out["timeline"]
    next_view = 0.0
    with httpx.Client(timeout=1.0) as client:
        while not out["stop"]:
            t = time.monotonic() - t0
            system.step(t)
            bill.append((t, system.billed()))
            if t >= next_view and t <= end:
                next_view = t + interval * 5
                try:
                    entry = client.get(internal + "/load").json()["models"].get(DEFAULT_MODEL, {})
                except (httpx.HTTPError, ValueError, KeyError):
                    entry = {}
                timeline.append([round(t, 3), bill[-1][1], len(system.fleet.workers), entry.get("ready_workers", -1),
                                 entry.get("inflight", -1), entry.get("queued", -1)])  # fmt: skip
            time.sleep(max(0.0, interval - (time.monotonic() - t0 - t)))


def gateway_metrics(internal: str) -> dict[str, Any]:
    """The queue-wait histogram's cumulative buckets and the queue's refusals, from ``/metrics``."""
    text = httpx.get(internal + "/metrics", timeout=5.0).text
    buckets: list[tuple[float, float]] = []
    refused: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vgate_queue_wait_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "vgate_queue_refused_requests_total":
                refused[s.labels["reason"]] = refused.get(s.labels["reason"], 0.0) + s.value
    return {"wait_buckets": sorted(buckets), "queue_refused": refused}


def run_system(
    cfg: FleetConfig, name: str, trace: Trace, times: Sequence[float], logs: Path, start_overhead: float
) -> dict[str, Any]:
    """Serve ``times`` (compressed trace seconds) with the system ``name``; the raw measurements."""
    endpoints = logs / f"{name}-endpoints"
    endpoints.write_text("")
    decisions: list[tuple[float, str]] = []
    t0 = [time.monotonic()]
    service, internal_port = start_gateway(cfg, endpoints, logs, name)
    internal = f"http://127.0.0.1:{internal_port}"
    system = build_system(cfg, name, trace, endpoints, internal, start_overhead, decisions, t0)
    out: dict[str, Any] = {"stop": False, "bill": [], "timeline": []}
    try:
        with service as url:
            gw = Gateway(url)
            gw.internal = internal
            system.prepare()
            wait_routable(gw, system.ready_target(), timeout=120.0)
            t0[0] = time.monotonic() + 0.2
            interval = cfg.c(OPERATOR_INTERVAL_S) if isinstance(system, Elastic) else 0.02
            thread = threading.Thread(
                target=_control, args=(system, t0[0], trace.seconds, interval, internal, out), daemon=True
            )
            thread.start()
            timeout = cfg.c(QUEUE_TIMEOUT_S) + 60.0
            outcomes = asyncio.run(drive(url, times, t0[0], cfg.prompt_words, cfg.output_tokens, timeout))
            time.sleep(max(0.0, t0[0] + trace.seconds - time.monotonic()))
            out["stop"] = True
            thread.join()
            metrics = gateway_metrics(internal)
    finally:
        out["stop"] = True
        stop_all(system.children())
    fleet = system.fleet
    starts = [
        {
            "started": round(fleet.started[p] - t0[0], 3),
            "start_s": round(fleet.listening[p] - fleet.started[p], 3),
        }
        for p in sorted(fleet.started, key=fleet.started.__getitem__)
        if p in fleet.listening
    ]
    return {
        "system": name,
        "outcomes": [asdict(o) for o in outcomes],
        "bill": out["bill"],
        "timeline": out["timeline"],
        "decisions": decisions,
        "worker_starts": starts,
        **metrics,
    }


def run(cfg: FleetConfig, logs: Path) -> dict[str, Any]:
    """Calibrate, then every system on the same arrivals; the JSON-ready results (raw and summarized)."""
    print("fleet: measuring a worker's start and capacity ...", file=sys.stderr, flush=True)
    overhead = measure_start(cfg, logs)
    capacity = calibrate(cfg, logs)
    trace = standard_trace().scaled(cfg.trace_scale / cfg.compress)
    times = arrivals(trace, capacity, cfg.seed)
    raw = []
    for name in cfg.systems:
        print(
            f"fleet: {name}, {len(times)} requests over {trace.seconds:.0f}s ...", file=sys.stderr, flush=True
        )
        raw.append(run_system(cfg, name, trace, times, logs, overhead))
    return summarize(asdict(cfg), trace, capacity, overhead, raw)


def _parser() -> argparse.ArgumentParser:
    d = FleetConfig()
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--compress", type=float, default=d.compress, help="time compression factor (default 10)")
    p.add_argument(
        "--cold-start", type=float, default=d.cold_start_s, help="a worker's start, uncompressed s (20)"
    )
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="each worker's batch limit (8)")
    p.add_argument("--prompt-words", type=int, default=d.prompt_words)
    p.add_argument("--output-tokens", type=int, default=d.output_tokens)
    p.add_argument(
        "--decode-step-s", type=float, default=d.decode_step_s, help="simulated decode step at batch 1"
    )
    p.add_argument("--trace-scale", type=float, default=d.trace_scale, help="multiplies every phase (tests)")
    p.add_argument(
        "--calibrate", type=float, default=d.calibrate_s, help="capacity measurement, uncompressed s"
    )
    p.add_argument("--systems", default=",".join(d.systems), help=f"any of {','.join(SYSTEMS)}")
    p.add_argument(
        "--scale-down-delay", type=float, help="elastic-tuned's scaleDownDelaySeconds (uncompressed)"
    )
    p.add_argument("--scale-to-zero-delay", type=float, help="elastic-tuned's scaleToZeroDelaySeconds")
    p.add_argument("--stable-window", type=float, help="elastic-tuned's stableWindowSeconds (uncompressed)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="directory for the JSON, Markdown and PNG (bench/results)")
    return p


def main(argv: Sequence[str]) -> int:
    """Run the benchmark; prints the table and writes ``<out>/fleet-<time>.{json,md,png}``."""
    args = _parser().parse_args(list(argv))
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        print(f"bench-fleet: unknown systems {unknown}; choose from {list(SYSTEMS)}", file=sys.stderr)
        return 2
    if args.compress <= 0 or args.trace_scale <= 0 or args.cold_start < 0 or args.max_num_seqs < 1:
        print("bench-fleet: --compress and --trace-scale must be > 0, --cold-start >= 0, --max-num-seqs >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    cfg = FleetConfig(
        compress=args.compress, cold_start_s=args.cold_start, max_num_seqs=args.max_num_seqs,
        prompt_words=args.prompt_words, output_tokens=args.output_tokens, decode_step_s=args.decode_step_s,
        trace_scale=args.trace_scale, calibrate_s=args.calibrate, systems=systems,
        tuned_scale_down_delay_s=args.scale_down_delay, tuned_scale_to_zero_delay_s=args.scale_to_zero_delay,
        tuned_stable_window_s=args.stable_window, seed=args.seed, out=args.out,
    )  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vgate-fleet-") as logs:
        results = run(cfg, Path(logs))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"fleet-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    stem.with_suffix(".json").write_text(to_json(results))
    table = render_markdown(results, stem.with_suffix(".png").name)
    stem.with_suffix(".md").write_text(table)
    write_plot(results, stem.with_suffix(".png"))
    print(table)
    print(f"\nresults: {stem}.json, .md, .png ({results['wall_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
