"""``python -m bench.fairness`` (``make bench-fairness``): the noisy neighbour, fair dispatch against FIFO.

One fleet (dry-run workers, and real vLLM CPU workers when a vLLM interpreter is given),
whose capacity is measured first in the same run; then, each for ``--phase-s`` seconds with
Poisson arrivals:

- **idle**: tenant B (short prompts) at 10 % of capacity and tenant H (a ``priority=high``
  key) at 5 %, alone: their TTFT on an idle fleet, the baseline;
- **busy**: the same with A at 80 % of capacity: the fleet nearly full, hardly a queue;
- **fair**, **fair+engine**, **fair+reserve**, **fair+prefills**, **fair+free** and **fifo**:
  the same B and H while tenant A floods at 10x capacity with long prompts, starting
  ``--flood-delay-s`` after them, through a gateway with ``VGATE_QUEUE_POLICY=fair``; the same
  with each request's engine priority sent to the workers
  (``model_settings.<m>.engine_priority``); with the reserve too (``VGATE_QUEUE_RESERVE``: each
  worker's last slots kept for keys within their share); with a flooding key held to
  ``--prefills`` streams awaiting their first token per worker
  (``VGATE_QUEUE_PREFILLS_OVER_SHARE``); with ``--free-workers`` kept free of the flood
  (``VGATE_QUEUE_PREFILL_FREE_WORKERS``); then ``fifo``. ``--phases`` runs some of them.

Each tenant's client is a process of its own (see :func:`run_phase`).

The workers run vLLM's ``--scheduling-policy priority`` throughout: without a ``priority`` in
the requests (fair, busy, idle, fifo) every request has vLLM's default 0, and the priority
policy orders and preempts exactly as ``fcfs`` does (by arrival), so one fleet serves every phase.

The workers saturate for real: the simulator (and vLLM) batch at most ``--seqs`` sequences
and the gateway is told so (``VGATE_WORKER_CAPACITY``), so A's backlog waits in the
gateway's queue, where the policy decides who goes next. Every request is streamed; TTFT is
the time to the first event carrying text. A request is *answered* (200), *refused with a
reason* (an OpenAI error with a code: a full queue, shed) or *lost* (no answer: a client
timeout or a broken connection); the run reports all three per tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench import stack
from bench.real_vllm import _VLLM_ENV, _WORDS
from bench.real_vllm import MODEL as VLLM_MODEL
from vgate import procs
from vgate.procs import free_port

SIM_MODEL = "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
KEYS = {"A": "sk-bench-flood", "B": "sk-bench-light", "H": "sk-bench-ops"}
KEYS_FILE = "sk-bench-flood id=flood\nsk-bench-light id=light\nsk-bench-ops id=ops priority=high\n"


@dataclass(frozen=True)
class FairnessConfig:
    """One run's shape (command-line flags)."""

    phase_s: float = 30.0
    capacity_s: float = 12.0
    flood_factor: float = 10.0
    #: Seconds into each phase before A starts: B and H are already using the fleet when their
    #: neighbour begins to flood (a gateway holds nothing back while one key is alone).
    flood_delay_s: float = 2.0
    #: A's rate in the "busy" phase: the fleet nearly full, hardly a queue (the engine's own slowdown).
    busy_share: float = 0.8
    light_share: float = 0.10
    high_share: float = 0.05
    workers: int = 2
    #: Sequences one worker batches (its ``max_num_seqs``, and the gateway's capacity per worker).
    seqs: int = 16
    sim_speed: float = 0.2
    flood_words: int = 600
    light_words: int = 12
    max_tokens: int = 48
    #: The queue's bound, in seconds of the fleet's measured capacity (a FIFO backlog that long).
    queue_s: float = 15.0
    #: A Python with vLLM's CPU build (``.venv-vllm/bin/python``): runs the real-vLLM fleet too.
    vllm_python: str = ""
    vllm_model: str = ""
    vllm_seqs: int = 4
    vllm_flood_words: int = 150
    vllm_max_tokens: int = 24
    #: Slots of each worker kept for keys under their share in the fair+reserve phase
    #: (``VGATE_QUEUE_RESERVE``), on the dry-run fleet and on the vLLM one.
    reserve: int = 2
    vllm_reserve: int = 1
    #: Streams of a key over its share that may await their first token on one worker, in the
    #: fair+prefills phase (``VGATE_QUEUE_PREFILLS_OVER_SHARE``, with the reserve too).
    prefills: int = 1
    #: Workers kept free of a flooding key's requests in the fair+free phase
    #: (``VGATE_QUEUE_PREFILL_FREE_WORKERS``, with the reserve and the prefill limit too).
    free_workers: int = 1
    #: The workers' ``--long-prefill-token-threshold`` (vLLM's cap on the prompt tokens one
    #: request's prefill takes per step while others are scheduled; 0: off, vLLM's default).
    long_prefill_tokens: int = 0
    seed: int = 7
    out: str = "bench/results"
    #: Which fleets run, of "dry-run" and "vLLM" (the latter only with ``vllm_python``).
    fleets: str = "dry-run,vLLM"
    #: Which flooded phases run ("all", or names from :data:`PHASES`); capacity and idle always do.
    phases: str = "all"


@dataclass(frozen=True)
class Fleet:
    """What one backend serves and how its requests look."""

    name: str
    model: str
    urls: list[str]
    seqs: int
    flood_words: int
    light_words: int
    max_tokens: int
    #: Its ``VGATE_QUEUE_RESERVE`` in the fair+reserve phase.
    reserve: int = 0


@dataclass
class Tally:
    """One tenant's requests in one phase."""

    sent: int = 0
    ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    #: Answered in full (``[DONE]``) without a character of text: the tiny random model's
    #: tokens can all decode to nothing. Counted as answered, with no TTFT sample.
    empty: int = 0
    ttft: list[float] = field(default_factory=list)
    #: When each answered request was sent (perf_counter), in the order of ``ttft``.
    sent_at: list[float] = field(default_factory=list)
    #: The phase's start (perf_counter): ``sent_at`` is reported from it.
    start: float = 0.0

    def summary(self, every: bool = True) -> dict[str, Any]:
        """Counts and percentiles; with ``every``, each answered request's TTFT too."""
        out = {
            "sent": self.sent,
            "ok": self.ok,
            "refused": dict(sorted(self.refused.items())),
            "lost": self.lost,
            "empty": self.empty,
            "ttft_p50_s": _pct(self.ttft, 0.50),
            "ttft_p99_s": _pct(self.ttft, 0.99),
        }
        if every:
            # Every answered request as (seconds into the phase it was sent, its TTFT in ms), in
            # the order they were sent: a p99 of a few dozen requests is nearly their slowest
            # one, so the run shows them all, and when they came.
            out["ttft_ms_by_sent_s"] = sorted(
                (round(at - self.start, 2), round(t * 1000, 1))
                for at, t in zip(self.sent_at, self.ttft, strict=True)
            )
        return out


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _body(fleet: Fleet, rng: random.Random, words: int) -> bytes:
    body = {
        "model": fleet.model,
        "messages": [{"role": "user", "content": _text(rng, words)}],
        "max_tokens": fleet.max_tokens,
        "ignore_eos": True,  # every answer is max_tokens long: the work per request is known
        "stream": True,
    }
    return json.dumps(body).encode()


def _has_text(event: bytes) -> bool:
    """A chunk that carries generated text (vLLM's first chunk carries only the role)."""
    return b'"content":"' in event and b'"content":""' not in event


async def _one(session: aiohttp.ClientSession, url: str, key: str, body: bytes, tally: Tally) -> None:
    """Send one streamed request; count how it ended, and its TTFT if it was answered."""
    tally.sent += 1
    started = time.perf_counter()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    try:
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            if resp.status != 200:
                error = (await resp.json(content_type=None)).get("error", {})
                code = f"{resp.status} {error.get('code')}"
                tally.refused[code] = tally.refused.get(code, 0) + 1
                return
            first: float | None = None
            finished = False
            async for line in resp.content:
                if first is None and line.startswith(b"data: {") and _has_text(line):
                    first = time.perf_counter() - started
                if line.startswith(b"data: [DONE]"):
                    finished = True
                    break
            if first is None:
                if finished:
                    tally.ok, tally.empty = tally.ok + 1, tally.empty + 1
                else:
                    tally.lost += 1
                return
            tally.ok += 1
            tally.ttft.append(first)
            tally.sent_at.append(started)
    except (aiohttp.ClientError, TimeoutError):
        tally.lost += 1


async def _poisson(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    make: Callable[[], bytes],
    rate: float,
    until: float,
    tally: Tally,
) -> list[asyncio.Task[None]]:
    """Open-loop arrivals at ``rate`` per second until ``until`` (perf_counter), each body new."""
    rng = random.Random(hash(key) & 0xFFFF)
    tasks: list[asyncio.Task[None]] = []
    at = time.perf_counter()
    while True:
        at += rng.expovariate(rate)
        if at >= until:
            return tasks
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(session, url, key, make(), tally)))


def _session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=180)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


async def measure_capacity(cfg: FairnessConfig, fleet: Fleet, url: str) -> float:
    """Answers per second of flood-shaped requests with the fleet kept full (closed loop)."""
    rng = random.Random(cfg.seed)  # every prompt new: no prefix-cache hit makes a long prompt cheap
    tally, done = Tally(), 0
    concurrency = 2 * fleet.seqs * len(fleet.urls)
    async with _session() as session:

        async def loop(until: float) -> None:
            nonlocal done
            while time.perf_counter() < until:
                mine = Tally()  # the shared tally counts every loop's answers, not this one's
                await _one(session, url, KEYS["A"], _body(fleet, rng, fleet.flood_words), mine)
                done += mine.ok
                tally.sent, tally.lost = tally.sent + 1, tally.lost + mine.lost
                for code, n in mine.refused.items():
                    tally.refused[code] = tally.refused.get(code, 0) + n

        warm = time.perf_counter() + min(4.0, cfg.capacity_s / 3)
        await asyncio.gather(*(loop(warm) for _ in range(concurrency)))
        done, started = 0, time.perf_counter()
        await asyncio.gather(*(loop(started + cfg.capacity_s) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if tally.lost or tally.refused:
        raise RuntimeError(f"capacity run: {tally.summary()}")
    return done / elapsed


def run_phase(
    cfg: FairnessConfig, fleet: Fleet, url: str, capacity: float, flood: float
) -> dict[str, dict[str, Any]]:
    """B and H at their shares of capacity, A at ``flood`` x capacity (0: none); every request followed to its end.

    Each tenant's client runs in a process of its own, as separate clients would: the flood's
    thousands of requests and streamed events, read in one event loop with B's, would delay
    the moment B's first token is read, and B's TTFT would measure the client, not the fleet.
    """
    shapes = {"A": fleet.flood_words, "B": fleet.light_words, "H": fleet.light_words}
    rates = {"A": flood * capacity, "B": cfg.light_share * capacity, "H": cfg.high_share * capacity}
    tenants = [t for t, rate in rates.items() if rate > 0]
    delays = {"A": cfg.flood_delay_s}
    start = time.perf_counter() + _CLIENT_START_S
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(tenants), mp_context=spawn) as clients:
        running = {
            t: clients.submit(
                _tenant,
                url,
                KEYS[t],
                fleet,
                shapes[t],
                rates[t],
                start + delays.get(t, 0.0),
                cfg.phase_s,
                cfg.seed + i,
            )
            for i, t in enumerate(tenants)
        }
        # The light tenants' every request; of the flood's thousands, the percentiles only.
        return {t: future.result().summary(every=t != "A") for t, future in running.items()}


#: Time given to the tenants' client processes to start (spawned, imported) before the phase's first arrival.
_CLIENT_START_S = 3.0


def _tenant(
    url: str, key: str, fleet: Fleet, words: int, rate: float, start: float, phase_s: float, seed: int
) -> Tally:
    """One tenant's open-loop arrivals from ``start`` (perf_counter, the system's monotonic clock) for ``phase_s``."""

    async def arrive() -> Tally:
        tally, rng = Tally(start=start), random.Random(seed)
        async with _session() as session:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            make = partial(_body, fleet, rng, words)
            await asyncio.gather(*await _poisson(session, url, key, make, rate, start + phase_s, tally))
        return tally

    return asyncio.run(arrive())


@contextmanager
def sim_fleet(cfg: FairnessConfig, logs: Path) -> Iterator[Fleet]:
    """Dry-run workers batching at most ``cfg.seqs`` sequences, on the cores the gateway does not use."""
    args = ["worker", "--dry-run", "--served-model-name", SIM_MODEL, "--max-num-seqs", str(cfg.seqs),
            "--speed", str(cfg.sim_speed), "--log-level", "warning", "--scheduling-policy", "priority"]  # fmt: skip
    if cfg.long_prefill_tokens:
        args += ["--long-prefill-token-threshold", str(cfg.long_prefill_tokens)]
    with ExitStack() as es:
        urls = [
            es.enter_context(
                stack.vgate_service(args, "/health", {}, logs / f"sim-{i}.log", cpus=stack.other_cpus())
            )
            for i in range(cfg.workers)
        ]
        yield Fleet(
            "dry-run",
            SIM_MODEL,
            urls,
            cfg.seqs,
            cfg.flood_words,
            cfg.light_words,
            cfg.max_tokens,
            cfg.reserve,
        )


@contextmanager
def vllm_fleet(cfg: FairnessConfig, logs: Path) -> Iterator[Fleet]:
    """Real vLLM (CPU) workers serving the tiny model, started by ``vgate worker`` under ``cfg.vllm_python``."""
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(str(root / p) for p in ("", "gateway", "worker", "operator"))
    env = {**os.environ, **_VLLM_ENV, "PYTHONPATH": path}
    children: list[procs.Child] = []
    urls = []
    try:
        for i in range(cfg.workers):  # started together: vLLM's start-up dominates
            port = free_port()
            command = [cfg.vllm_python, "-m", "vgate", "worker", "--port", str(port), "--model", cfg.vllm_model,
                       "--quantization", "none", "--device", "cpu", "--host", "127.0.0.1",
                       "--served-model-name", VLLM_MODEL, "--max-model-len", "1024",
                       "--max-num-seqs", str(cfg.vllm_seqs), "--scheduling-policy", "priority", "--",
                       "--enforce-eager", "--distributed-executor-backend", "uni", "--block-size", "32",
                       "--num-gpu-blocks-override", "256"]  # fmt: skip
            if cfg.long_prefill_tokens:
                command += ["--long-prefill-token-threshold", str(cfg.long_prefill_tokens)]
            argv = stack.pinned(command, stack.other_cpus())
            children.append(procs.start(argv, env=env, log=logs / f"vllm-{i}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for child, url in zip(children, urls, strict=True):
            child.wait_ready(url + "/health", timeout=600)
        yield Fleet(
            "vLLM",
            VLLM_MODEL,
            urls,
            cfg.vllm_seqs,
            cfg.vllm_flood_words,
            cfg.light_words,
            cfg.vllm_max_tokens,
            cfg.vllm_reserve,
        )
    finally:
        procs.stop_all(children)


def _gateway_env(
    cfg: FairnessConfig,
    fleet: Fleet,
    keys: Path,
    policy: str,
    capacity: float,
    engine: bool = False,
    reserve: int = 0,
    prefills: int = 0,
    free_workers: int = 0,
) -> dict[str, str]:
    return {
        "VGATE_QUEUE_RESERVE": str(reserve),
        "VGATE_QUEUE_PREFILLS_OVER_SHARE": str(prefills),
        "VGATE_QUEUE_PREFILL_FREE_WORKERS": str(free_workers),
        "VGATE_MODEL_SETTINGS": json.dumps({fleet.model: {"engine_priority": engine}}),
        "VGATE_API_KEYS_FILE": str(keys),
        "VGATE_WORKER_CAPACITY": str(fleet.seqs),
        "VGATE_QUEUE_POLICY": policy,
        # (unknown while it is being measured: room for the closed loop's excess)
        "VGATE_QUEUE_MAX_REQUESTS": str(max(20, round(cfg.queue_s * capacity)) if capacity else 1000),
        "VGATE_QUEUE_TIMEOUT_S": "120",
        "VGATE_ROUTING": "least-request",
        "VGATE_DEDUP": "false",
    }


#: The phases after the capacity and idle ones, in the order they run.
PHASES = ("busy", "fair", "fair+engine", "fair+reserve", "fair+prefills", "fair+free", "fifo")


def run_fleet(cfg: FairnessConfig, fleet: Fleet, logs: Path) -> dict[str, Any]:
    """Capacity, idle, then the flooded phases of :data:`PHASES` that ``cfg.phases`` names."""
    keys = logs / "keys"
    keys.write_text(KEYS_FILE)
    out: dict[str, Any] = {"workers": len(fleet.urls), "seqs_per_worker": fleet.seqs, "phases": {}}
    flood, reserve, prefills, free = cfg.flood_factor, fleet.reserve, cfg.prefills, cfg.free_workers
    # name: (policy, A's rate in capacities, engine priority, reserve, prefills, prefill-free workers)
    shapes = {"capacity": ("fair", 0.0, False, 0, 0, 0), "idle": ("fair", 0.0, False, 0, 0, 0),
              "busy": ("fair", cfg.busy_share, False, 0, 0, 0), "fair": ("fair", flood, False, 0, 0, 0),
              "fair+engine": ("fair", flood, True, 0, 0, 0),
              "fair+reserve": ("fair", flood, True, reserve, 0, 0),
              "fair+prefills": ("fair", flood, True, reserve, prefills, 0),
              "fair+free": ("fair", flood, True, reserve, prefills, free),
              "fifo": ("fifo", flood, False, 0, 0, 0)}  # fmt: skip
    wanted = PHASES if cfg.phases == "all" else tuple(p for p in PHASES if p in cfg.phases.split(","))
    for phase in ("capacity", "idle", *wanted):
        policy, rate, engine, *held = shapes[phase]
        print(f"{fleet.name}: {phase} ...", file=sys.stderr, flush=True)
        with stack.gateway(
            fleet.urls,
            _gateway_env(cfg, fleet, keys, policy, out.get("capacity_rps", 0.0), engine, *held),
            logs,
            cpus=stack.SUT_CPU,
        ) as gw:
            if phase == "capacity":
                out["capacity_rps"] = asyncio.run(measure_capacity(cfg, fleet, gw))
                continue
            before = asyncio.run(_engine_sums(fleet.urls))
            out["phases"][phase] = run_phase(cfg, fleet, gw, out["capacity_rps"], rate)
            out["phases"][phase]["queue"] = _queue_stats(gw, fleet.model)
            out["phases"][phase]["split"] = _split(gw, before, asyncio.run(_engine_sums(fleet.urls)))
    return out


#: The workers' series that say where a request's time to first token went (vLLM's names).
_ENGINE_SERIES = (
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_queue_time_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:num_preemptions_total",
)


async def _engine_sums(urls: Sequence[str]) -> dict[str, float]:
    per_worker = await stack.scrape(urls, _ENGINE_SERIES)
    return {name: sum(w.get(name, 0.0) for w in per_worker) for name in _ENGINE_SERIES}


def _split(gw: stack.Gateway, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Where the phase's first tokens waited: the gateway's queue (all, and class high: H alone),
    the engines' waiting queue and the engines' time to first token (all tenants), in means."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(gw.internal + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name.startswith("vgate_queue_wait_seconds_") or (
                sample.name.startswith("vgate_queue_class_wait_seconds_")
                and sample.labels.get("priority") == "high"
            ):
                key = sample.name.replace("class_wait", "high_wait")
                sums[key] = sums.get(key, 0.0) + sample.value
    delta = {k: after[k] - before.get(k, 0.0) for k in after}

    def mean(total: float, count: float) -> float | None:
        return total / count if count else None

    return {
        "gateway_wait_mean_s": mean(
            sums.get("vgate_queue_wait_seconds_sum", 0), sums.get("vgate_queue_wait_seconds_count", 0)
        ),
        "gateway_waited": sums.get("vgate_queue_wait_seconds_count", 0),
        "gateway_wait_high_mean_s": mean(
            sums.get("vgate_queue_high_wait_seconds_sum", 0),
            sums.get("vgate_queue_high_wait_seconds_count", 0),
        ),
        "engine_queue_mean_s": mean(
            delta["vllm:request_queue_time_seconds_sum"], delta["vllm:request_queue_time_seconds_count"]
        ),
        "engine_ttft_mean_s": mean(
            delta["vllm:time_to_first_token_seconds_sum"], delta["vllm:time_to_first_token_seconds_count"]
        ),
        "engine_preemptions": delta["vllm:num_preemptions_total"],
    }


def _queue_stats(gw: stack.Gateway, model: str) -> dict[str, Any]:
    import httpx

    queue = httpx.get(gw.internal + "/stats", timeout=5).json().get("queues", {}).get(model, {})
    return {k: queue.get(k) for k in ("policy", "dispatched", "refused", "timed_out", "shed", "keys")}


def policy_cost(keys: int, waiting: int = 200, rounds: int = 2000) -> dict[str, float]:
    """Microseconds the gateway spends per request dispatched from a queue of ``waiting``, in process.

    What a shared counter across replicas would replace with a round trip to Redis per dispatch.
    """
    from vgate_gateway.front.body import parse_request
    from vgate_gateway.protocol import Kind, Usage
    from vgate_gateway.upstream.queue import Bounds, FairShare, Fifo, ModelQueue, Waiting

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}).encode()
    out: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    try:
        for policy in (FairShare(), Fifo()):
            queue = ModelQueue("m", Bounds(10 * waiting, 1 << 30, 60))
            reqs = [parse_request(Kind.CHAT, body, key_id=f"k{i % keys}") for i in range(waiting + rounds)]
            for req in reqs[:waiting]:
                w = Waiting(req, 0.0, loop.create_future())
                policy.arrived(queue, w)
                queue.add(w)
            started = time.perf_counter()
            for req in reqs[waiting:]:
                w = Waiting(req, 0.0, loop.create_future())
                policy.arrived(queue, w)
                queue.add(w)
                head = policy.pick(queue)
                assert head is not None
                queue.remove(head)
                policy.dispatched(head)
                policy.settle(head.req, Usage(prompt_tokens=100, completion_tokens=50))
            out[policy.name] = (time.perf_counter() - started) / rounds * 1e6
    finally:
        loop.close()
    return out


def _key(phase: str) -> str:
    return phase.replace("+", "_")


def verdicts(fleet: dict[str, Any]) -> dict[str, Any]:
    """The ratios the run is judged by, from its own numbers, for each flooded phase it ran.

    Per phase ``p``: ``B_p99_<p>_vs_idle`` and ``H_p99_<p>_vs_idle`` (``+`` written ``_``),
    ``B_answered_all_<p>``; with a busy phase, ``B_p99_fair_vs_busy`` and ``H_p99_fair_vs_busy``.
    """
    phases = fleet["phases"]

    def p99(phase: str, tenant: str) -> float:
        return float(phases[phase][tenant]["ttft_p99_s"] or 0.0)

    out: dict[str, Any] = {}
    for phase in PHASES:
        if phase in phases and phase != "busy":
            for tenant in ("B", "H"):
                out[f"{tenant}_p99_{_key(phase)}_vs_idle"] = p99(phase, tenant) / p99("idle", tenant)
            out[f"B_answered_all_{_key(phase)}"] = phases[phase]["B"]["ok"] == phases[phase]["B"]["sent"]
    if "busy" in phases and "fair" in phases:
        for tenant in ("B", "H"):
            out[f"{tenant}_p99_fair_vs_busy"] = p99("fair", tenant) / p99("busy", tenant)
    out["requests_lost"] = sum(phases[p][t]["lost"] for p in phases for t in phases[p] if t in KEYS)
    return out


def render(results: dict[str, Any]) -> str:
    lines = [
        "| fleet | capacity (req/s) | phase | tenant | sent | answered | refused (reason: n) | lost | TTFT p50 | TTFT p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, fleet in results["fleets"].items():
        for phase, tenants in fleet["phases"].items():
            for tenant in ("A", "B", "H"):
                t = tenants.get(tenant)
                if t is None:
                    continue
                refused = ", ".join(f"{k}: {v}" for k, v in t["refused"].items()) or "-"
                answered = f"{t['ok']} ({t['empty']} empty)" if t.get("empty") else str(t["ok"])
                lines.append(
                    f"| {name} | {fleet['capacity_rps']:.1f} | {phase} | {tenant} | {t['sent']} | {answered} | "
                    f"{refused} | {t['lost']} | {_ms(t['ttft_p50_s'])} | {_ms(t['ttft_p99_s'])} |"
                )
    lines.append("")
    lines += ["| fleet | phase | B p99 / idle | H (high) p99 / idle | B answered in full |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, fleet in results["fleets"].items():
        v = fleet["verdicts"]
        for phase in fleet["phases"]:
            if f"B_p99_{_key(phase)}_vs_idle" in v:
                lines.append(
                    f"| {name} | {phase} | {v[f'B_p99_{_key(phase)}_vs_idle']:.2f}x | "
                    f"{v[f'H_p99_{_key(phase)}_vs_idle']:.2f}x | {v[f'B_answered_all_{_key(phase)}']} |"
                )
    for name, fleet in results["fleets"].items():
        v = fleet["verdicts"]
        busy = (
            f"; B p99 fair/busy {v['B_p99_fair_vs_busy']:.2f}x, H {v['H_p99_fair_vs_busy']:.2f}x"
            if "B_p99_fair_vs_busy" in v
            else ""
        )
        lines.append(f"{name}: requests lost {v['requests_lost']}{busy}")
    lines += ["", "| fleet | phase | gateway wait, mean (requests that waited) | of H (class high) | engine queue, mean | engine TTFT, mean | preemptions |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, fleet in results["fleets"].items():
        for phase, tenants in fleet["phases"].items():
            sp = tenants.get("split", {})
            lines.append(
                f"| {name} | {phase} | {_ms(sp.get('gateway_wait_mean_s'))} ({sp.get('gateway_waited', 0):.0f}) | "
                f"{_ms(sp.get('gateway_wait_high_mean_s'))} | {_ms(sp.get('engine_queue_mean_s'))} | "
                f"{_ms(sp.get('engine_ttft_mean_s'))} | {sp.get('engine_preemptions', 0):.0f} |"
            )
    for name, error in results.get("errors", {}).items():
        lines.append(f"{name}: not measured: {error}")
    for keys, cost in results.get("policy_cost_us", {}).items():
        lines.append(
            f"In-process cost per request queued and dispatched (200 waiting, {keys}): "
            + ", ".join(f"{name} {us:.1f} us" for name, us in cost.items())
        )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def plot(results: dict[str, Any], path: Path) -> None:
    """p99 TTFT of B and H per phase, one panel per fleet (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = results["fleets"]
    fig, axes = plt.subplots(1, len(fleets), figsize=(5.5 * len(fleets), 4), squeeze=False)
    for ax, (name, fleet) in zip(axes[0], fleets.items(), strict=True):
        phases = list(fleet["phases"])
        for offset, tenant in ((-0.2, "B"), (0.2, "H")):
            values = [(fleet["phases"][p][tenant]["ttft_p99_s"] or 0) * 1000 for p in phases]
            ax.bar([i + offset for i in range(len(phases))], values, width=0.4, label=f"tenant {tenant}")
        ax.set_xticks(range(len(phases)), [f"{p}" for p in phases])
        ax.set_yscale("log")
        ax.set_ylabel("p99 TTFT (ms)")
        ax.set_title(f"{name}: idle, busy (A at 80 %), A flooding at 10x")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    for name, value in asdict(FairnessConfig()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return p


def main(argv: Sequence[str]) -> int:
    cfg = FairnessConfig(**vars(_parser().parse_args(argv)))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = out / f"fairness-{stamp}"
    logs = Path(tempfile.mkdtemp(prefix=f"vgate-fairness-{stamp}-"))  # kept: the processes' logs
    results: dict[str, Any] = {"config": asdict(cfg), "fleets": {}, "errors": {}}
    results["policy_cost_us"] = {f"{k} keys": policy_cost(k) for k in (3, 100)}
    wanted = {f.strip() for f in cfg.fleets.split(",")}
    fleets = [sim_fleet] if "dry-run" in wanted else []
    fleets += [vllm_fleet] if cfg.vllm_python and "vLLM" in wanted else []
    for make in fleets:
        try:
            with make(cfg, logs) as fleet:
                measured = run_fleet(cfg, fleet, logs)
        except (RuntimeError, TimeoutError, OSError) as exc:  # a process that did not start, a run that broke
            print(f"{make.__name__} failed: {exc!r} (logs in {logs})", file=sys.stderr)
            results["errors"][make.__name__] = repr(exc)
            continue
        measured["verdicts"] = verdicts(measured)
        results["fleets"][fleet.name] = measured
        _save(results, base)  # what is measured so far survives a later failure
    _save(results, base)
    print(render(results))
    print(f"results: {base}.json, .md, .png; logs: {logs}", file=sys.stderr)
    return 1 if results["errors"] else 0


def _save(results: dict[str, Any], base: Path) -> None:
    base.with_suffix(".json").write_text(json.dumps(results, indent=2))
    base.with_suffix(".md").write_text(render(results))
    if results["fleets"]:
        plot(results, base.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
