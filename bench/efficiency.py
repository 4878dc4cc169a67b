"""``python -m bench.efficiency`` (``make bench``): measure the gateway's routing, dedup, cache and batching on the simulator.

Everything runs on loopback: dry-run workers (``vgate worker --dry-run``) with a bounded
KV cache and the real gateway, restarted for every measurement so no run inherits a
warm cache. The routing workload is a few applications, each with its own long system
prompt, whose users send varied short questions; each routing strategy serves the same
request sequence, and round-robin (measured in the same run) is the baseline every other
strategy is compared with. Results go to stdout as a table and to ``bench-results/`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import (
    SUT_CPU,
    Gateway,
    gateway,
    metric_total,
    other_cpus,
    pinned,
    save_results,
    vgate_service,
)
from vgate import procs, redis_server
from vgate.procs import free_port
from vgate.waiting import wait_for
from vgate_gateway.upstream.loadstats import metric_sums
from vgate_gateway.upstream.routing import STRATEGIES as _ROUTING
from vgate_worker.settings import DEFAULT_MODEL

STRATEGIES = tuple(_ROUTING)
_WORDS = [
    "account",
    "balance",
    "carrier",
    "customs",
    "delivery",
    "freight",
    "harbor",
    "invoice",
    "ledger",
    "manifest",
    "order",
    "parcel",
    "quota",
    "route",
    "schedule",
    "tariff",
    "unit",
    "vessel",
    "warehouse",
    "yard",
    "policy",
    "clause",
    "contract",
    "tenant",
    "lease",
    "notice",
    "party",
    "remedy",
    "statute",
    "witness",
    "answer",
    "brief",
    "claim",
]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run's shape (command-line flags)."""

    workers: tuple[int, ...] = (2, 4)
    strategies: tuple[str, ...] = STRATEGIES
    requests: int = 160
    concurrency: int = 16
    apps: int = 8
    system_tokens: int = 1500
    max_tokens: int = 16
    kv_cache_tokens: int = 8192
    #: Below 1 the simulated GPU is slower than real, so on a small machine the measured
    #: times are the model's, not the Python processes' competition for CPU.
    speed: float = 0.25
    identical: int = 50
    seed: int = 7
    out: str = "bench-results"
    #: Requests per rate-limiter variant (none / in-process / Redis); 0 skips that section.
    limiter_requests: int = 400
    #: Interleaved rounds of the three variants; each figure is the median over them.
    limiter_rounds: int = 3


@contextmanager
def stack(
    cfg: BenchConfig,
    workers: int,
    env: dict[str, str],
    logs: Path,
    *,
    speed: float | None = None,
    pin: bool = False,
) -> Iterator[tuple[Gateway, list[str]]]:
    """Fresh workers and a gateway in front of them; yields (gateway URL, worker URLs).

    ``pin`` runs the gateway alone on :data:`SUT_CPU` and the workers on the other cores.
    """
    worker_args = [
        "worker", "--dry-run", "--served-model-name", DEFAULT_MODEL, "--speed", str(speed or cfg.speed),
        "--kv-cache-tokens", str(cfg.kv_cache_tokens), "--log-level", "warning",
    ]  # fmt: skip
    worker_cpus = other_cpus() if pin else None
    with ExitStack() as es:
        urls = [
            es.enter_context(
                vgate_service(worker_args, "/health", {}, logs / f"worker{i}.log", cpus=worker_cpus)
            )
            for i in range(workers)
        ]
        gw = es.enter_context(gateway(urls, env, logs, cpus=SUT_CPU if pin else None))
        yield gw, urls


# -- workload ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    app: int
    user: str
    question: str


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def system_prompts(cfg: BenchConfig) -> list[str]:
    """One long, distinct system prompt per application."""
    return [
        f"You are assistant {a} " + _text(random.Random(cfg.seed * 1000 + a), cfg.system_tokens)
        for a in range(cfg.apps)
    ]


def workload(cfg: BenchConfig) -> list[Turn]:
    """The request sequence every strategy serves: users of each app ask varied questions."""
    rng = random.Random(cfg.seed)
    users = [f"user-{u}" for u in range(cfg.apps * 4)]
    turns = []
    for i in range(cfg.requests):
        user = rng.choice(users)
        app = int(user.split("-")[1]) % cfg.apps
        turns.append(Turn(app, user, f"question {i}: " + _text(rng, rng.randint(10, 40))))
    return turns


def _chat(system: str, question: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": DEFAULT_MODEL, "messages": messages, "max_tokens": max_tokens, **extra}


async def _ttft(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]) -> float:
    """Seconds until the first generated text of a streamed chat completion."""
    started = time.perf_counter()
    async with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as resp:
        resp.raise_for_status()
        first: float | None = None
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {") and _has_text(json.loads(line[6:])):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no text")
    return first


def _has_text(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def run_routing(cfg: BenchConfig, gateway: Gateway, workers: Sequence[str]) -> dict[str, Any]:
    """Serve the workload with ``cfg.concurrency`` clients; TTFT and the workers' prefix hit rate."""
    systems, turns = system_prompts(cfg), workload(cfg)
    queue: asyncio.Queue[Turn] = asyncio.Queue()
    for turn in turns:
        queue.put_nowait(turn)
    ttfts: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            turn = queue.get_nowait()
            body = _chat(systems[turn.app], turn.question, cfg.max_tokens, temperature=0.7)
            ttfts.append(await _ttft(client, body, {"x-session-id": turn.user}))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, timeout=120.0) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(cfg.concurrency)))
    wall = time.perf_counter() - started
    hits = await metric_total(workers, "vllm:prefix_cache_hits_total")
    queries = await metric_total(workers, "vllm:prefix_cache_queries_total")
    async with httpx.AsyncClient(timeout=5.0) as client:
        stats = (await client.get(gateway.internal + "/stats")).json()
    spread = [u["requests"] for u in stats["upstreams"]]
    return {
        "prefix_hit_rate": hits / queries if queries else 0.0,
        "ttft_mean_s": statistics.fmean(ttfts),
        "ttft_p99_s": _p99(ttfts),
        "throughput_rps": len(ttfts) / wall,
        "requests_per_worker": spread,
    }


async def run_dedup(cfg: BenchConfig, gateway: Gateway, workers: Sequence[str]) -> dict[str, Any]:
    """``cfg.identical`` identical deterministic requests at once: how many reach a worker."""
    body = _chat(system_prompts(cfg)[0], "one question everybody asks", cfg.max_tokens, temperature=0)
    calls_before = await metric_total([gateway], "vgate_upstream_requests_total")
    served_before = await metric_total(workers, "vllm:e2e_request_latency_seconds_count")
    async with httpx.AsyncClient(base_url=gateway, timeout=120.0) as client:
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(cfg.identical))
        )
    texts = {r.json()["choices"][0]["message"]["content"] for r in replies if r.status_code == 200}
    return {
        "client_requests": cfg.identical,
        "ok": sum(r.status_code == 200 for r in replies),
        "distinct_answers": len(texts),
        "upstream_calls": await metric_total([gateway], "vgate_upstream_requests_total") - calls_before,
        "worker_requests": await metric_total(workers, "vllm:e2e_request_latency_seconds_count")
        - served_before,
    }


async def run_cache(cfg: BenchConfig, gateway: str, probes: int = 20) -> dict[str, Any]:
    """Latency of a deterministic request the first time (miss) and the second (hit)."""
    system = system_prompts(cfg)[1]
    misses: list[float] = []
    hits: list[float] = []
    headers_seen: set[str] = set()
    async with httpx.AsyncClient(base_url=gateway, timeout=120.0) as client:
        for i in range(probes):
            body = _chat(system, f"cache probe {i}", cfg.max_tokens, temperature=0)
            for into in (misses, hits):
                started = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=body)
                into.append(time.perf_counter() - started)
                resp.raise_for_status()
                headers_seen.add(f"{'miss' if into is misses else 'hit'}:{resp.headers.get('x-vgate-cache')}")
    miss, hit = statistics.median(misses), statistics.median(hits)
    return {
        "miss_latency_s": miss,
        "hit_latency_s": hit,
        "speedup": miss / hit if hit else 0.0,
        "headers": sorted(headers_seen),
    }


async def run_batching(cfg: BenchConfig, gateway: Gateway, clients: int = 32) -> dict[str, Any]:
    """``clients`` concurrent single-prompt completions: how many upstream requests they became."""
    rng = random.Random(cfg.seed + 1)
    async with httpx.AsyncClient(base_url=gateway, timeout=120.0) as client:
        # The gateway merges a model's requests only once it has seen how that model answers.
        warm = {"model": DEFAULT_MODEL, "prompt": "warm up", "max_tokens": 2, "temperature": 0.7}
        (await client.post("/v1/completions", json=warm)).raise_for_status()
    calls_before = await metric_total([gateway], "vgate_upstream_requests_total")
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, timeout=120.0) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    "/v1/completions",
                    json={
                        "model": DEFAULT_MODEL,
                        "prompt": _text(rng, 30),
                        "max_tokens": 8,
                        "temperature": 0.7,
                    },
                )
                for _ in range(clients)
            )
        )
    return {
        "client_requests": clients,
        "ok": sum(r.status_code == 200 for r in replies),
        "upstream_calls": await metric_total([gateway], "vgate_upstream_requests_total") - calls_before,
        "wall_s": time.perf_counter() - started,
    }


# -- rate limiter ------------------------------------------------------------------------

LIMITER_KEY = "sk-bench-limiter"
#: Limits far above the load: every request pays for the limiter, none is refused.
LIMITER_KEYS = f"{LIMITER_KEY} id=bench rpm=100000000 tpm=1000000000\n"


@contextmanager
def _redis(logs: Path) -> Iterator[str]:
    """A local redis-server on a free port, on the cores the gateway does not use."""
    binary = redis_server.binary()
    if binary is None:
        raise RuntimeError(redis_server.MISSING)
    port = free_port()
    with procs.running(
        pinned(redis_server.argv(binary, port), other_cpus()), log=logs / "redis.log"
    ) as redis:

        def pong() -> bool:
            if not redis.alive():
                raise RuntimeError(f"redis-server stopped:\n{redis.log_tail()}")
            return redis_server.ping(port)

        wait_for(pong, "redis-server to answer PING", within=10, interval=0.05)
        yield f"redis://127.0.0.1:{port}/0"


async def _limiter_load(gateway: Gateway, requests: int, concurrency: int) -> dict[str, float]:
    """``requests`` one-token completions through ``concurrency`` clients: latency and throughput."""
    body = {"model": DEFAULT_MODEL, "prompt": "ping", "max_tokens": 1}
    headers = {"authorization": f"Bearer {LIMITER_KEY}", "x-vgate-cache": "bypass"}
    latencies: list[float] = []
    remaining = requests

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            resp = await client.post("/v1/completions", json=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                raise RuntimeError(f"limiter bench: HTTP {resp.status_code}: {resp.text[:200]}")

    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        await _warm_up(client, body, headers)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "mean_s": statistics.fmean(latencies),
        "median_s": statistics.median(latencies),
        "p99_s": _p99(latencies),
        "throughput_rps": len(latencies) / wall,
    }


async def _warm_up(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]) -> None:
    for _ in range(20):  # connections, the script cache in Redis, first-call paths
        (await client.post("/v1/completions", json=body, headers=headers)).raise_for_status()


async def _limiter_round(cfg: BenchConfig, gateway: Gateway) -> dict[str, Any]:
    """Serial requests, the limiter's own decision time over them, then concurrent requests."""
    serial = await _limiter_load(gateway, cfg.limiter_requests // 2, 1)
    # The gateway's own timing of each decision, over the serial requests only (under
    # concurrency it would include waiting for the event loop): the limiter's cost without
    # the noise of everything else a request does.
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(gateway.internal + "/metrics")).text
    sums = metric_sums(text, ["vgate_ratelimit_admit_seconds_count", "vgate_ratelimit_admit_seconds_sum"])
    decisions = sums.get("vgate_ratelimit_admit_seconds_count", 0.0)
    spent = sums.get("vgate_ratelimit_admit_seconds_sum", 0.0)
    loaded = await _limiter_load(gateway, cfg.limiter_requests, cfg.concurrency)
    return {
        "serial": serial,
        "concurrent": loaded,
        "admit_mean_s": spent / decisions if decisions else 0.0,
        "admit_median_s": _bucket_median(text, "vgate_ratelimit_admit_seconds") if decisions else 0.0,
    }


def _bucket_median(text: str, name: str) -> float:
    """The upper bound of the histogram bucket holding the median (Prometheus text format)."""
    buckets = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    return next((le for le, count in buckets if count >= total / 2), float("nan"))


def _median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[..., float]) -> float:
        return statistics.median(get(r) for r in runs)

    return {
        "serial": {k: med(lambda r, k=k: r["serial"][k]) for k in runs[0]["serial"]},
        "concurrent": {k: med(lambda r, k=k: r["concurrent"][k]) for k in runs[0]["concurrent"]},
        "admit_mean_s": med(lambda r: r["admit_mean_s"]),
        "admit_median_s": med(lambda r: r["admit_median_s"]),
        "rounds": len(runs),
    }


def run_limiter(cfg: BenchConfig, logs: Path) -> dict[str, Any]:
    """The same load through a gateway without limits, with in-process limits, with Redis limits.

    The gateway is pinned to one core (workers and Redis on the others) and every variant
    authenticates the same key, so the differences are the limiter's. Serial requests give
    the per-request cost; concurrent ones the throughput cost.
    """
    keys = logs / "limiter-keys"
    keys.write_text(LIMITER_KEYS)
    unlimited = logs / "unlimited-keys"
    unlimited.write_text(f"{LIMITER_KEY} id=bench\n")
    rounds: dict[str, list[dict[str, Any]]] = {"none": [], "in-process": [], "redis": []}
    with ExitStack() as es:
        redis_url = es.enter_context(_redis(logs))
        envs = {
            "none": {"VGATE_API_KEYS_FILE": str(unlimited)},
            "in-process": {"VGATE_API_KEYS_FILE": str(keys)},
            "redis": {"VGATE_API_KEYS_FILE": str(keys), "VGATE_REDIS_URL": redis_url},
        }
        # Interleaved rounds (none, in-process, redis, none, ...): drift on a shared machine hits
        # every variant alike; each figure is the median over the rounds.
        for round_ in range(cfg.limiter_rounds):
            for name, env in envs.items():
                print(f"rate limiter: {name}, round {round_ + 1} ...", file=sys.stderr, flush=True)
                with stack(cfg, 1, env, logs, speed=100.0, pin=True) as (gateway, _):
                    rounds[name].append(asyncio.run(_limiter_round(cfg, gateway)))
    variants = {name: _median_round(runs) for name, runs in rounds.items()}
    base = variants["none"]
    for v in variants.values():
        v["serial_median_vs_none"] = v["serial"]["median_s"] / base["serial"]["median_s"]
        v["throughput_vs_none"] = v["concurrent"]["throughput_rps"] / base["concurrent"]["throughput_rps"]
    return {
        "variants": variants,
        # Per request, measured inside the gateway: one Redis round trip (EVALSHA) per decision.
        "redis_round_trip_cost_s": variants["redis"]["admit_mean_s"],
        "redis_vs_in_process_serial_median_s": (
            variants["redis"]["serial"]["median_s"] - variants["in-process"]["serial"]["median_s"]
        ),
        "pinned": shutil.which("taskset") is not None,
    }


# -- driver ------------------------------------------------------------------------------


def run(cfg: BenchConfig, logs: Path, only_limiter: bool = False) -> dict[str, Any]:
    """Every measurement, each on a fresh stack; returns the JSON-ready results."""
    results: dict[str, Any] = {"config": asdict(cfg), "routing": {}}
    if only_limiter:
        results["limiter"] = run_limiter(cfg, logs)
        return results
    for n in cfg.workers:
        by_strategy: dict[str, Any] = {}
        for strategy in cfg.strategies:
            print(f"routing: {strategy} on {n} workers ...", file=sys.stderr, flush=True)
            with stack(cfg, n, {"VGATE_ROUTING": strategy}, logs) as (gateway, workers):
                by_strategy[strategy] = asyncio.run(run_routing(cfg, gateway, workers))
        results["routing"][str(n)] = by_strategy
    print("dedup, cache and batching ...", file=sys.stderr, flush=True)
    with stack(cfg, 2, {}, logs) as (gateway, workers):
        results["dedup"] = asyncio.run(run_dedup(cfg, gateway, workers))
        results["cache"] = asyncio.run(run_cache(cfg, gateway))
        results["batching"] = asyncio.run(run_batching(cfg, gateway))
    if cfg.limiter_requests > 0:
        results["limiter"] = run_limiter(cfg, logs)
    return results


def render(results: dict[str, Any]) -> str:
    """The human-readable table; ratios are against round-robin in the same run."""
    lines = [
        f"{'workers':>7}  {'strategy':<14} {'prefix hit':>10} {'TTFT mean':>10} {'TTFT p99':>9} "
        f"{'vs RR mean':>10} {'vs RR p99':>9} {'req/s':>6}  per worker"
    ]
    for n, by_strategy in results["routing"].items():
        base = by_strategy.get("round-robin")
        for strategy, r in by_strategy.items():
            mean_ratio = r["ttft_mean_s"] / base["ttft_mean_s"] if base else float("nan")
            p99_ratio = r["ttft_p99_s"] / base["ttft_p99_s"] if base else float("nan")
            lines.append(
                f"{n:>7}  {strategy:<14} {r['prefix_hit_rate']:>10.1%} {r['ttft_mean_s'] * 1000:>8.1f}ms "
                f"{r['ttft_p99_s'] * 1000:>7.1f}ms {mean_ratio:>10.2f} {p99_ratio:>9.2f} "
                f"{r['throughput_rps']:>6.1f}  {r['requests_per_worker']}"
            )
    if "dedup" not in results:
        return "\n".join([render_limiter(results["limiter"])] if "limiter" in results else lines)
    d, c, b = results["dedup"], results["cache"], results["batching"]
    lines += [
        "",
        f"dedup:    {d['client_requests']} identical concurrent requests -> {d['upstream_calls']:.0f} upstream "
        f"call(s), {d['worker_requests']:.0f} worker request(s), {d['distinct_answers']} distinct answer(s)",
        f"cache:    miss {c['miss_latency_s'] * 1000:.1f}ms, hit {c['hit_latency_s'] * 1000:.1f}ms "
        f"(median; hit is {c['speedup']:.1f}x faster) headers {c['headers']}",
        f"batching: {b['client_requests']} concurrent completions -> {b['upstream_calls']:.0f} upstream request(s)",
    ]
    if "limiter" in results:
        lines += ["", render_limiter(results["limiter"])]
    return "\n".join(lines)


def _le(seconds: float) -> str:
    return f"<={seconds * 1e6:.0f}us" if seconds else "-"


def render_limiter(limiter: dict[str, Any]) -> str:
    """Gateway pinned to one core; ratios are against the same gateway without limits, same run."""
    lines = [
        f"{'rate limiter':<12} {'decision':>9} {'(median)':>9} {'serial median':>13} {'vs none':>8} {'serial p99':>10} "
        f"{'req/s (conc.)':>13} {'vs none':>8}"
    ]
    for name, v in limiter["variants"].items():
        s, c = v["serial"], v["concurrent"]
        lines.append(
            f"{name:<12} {v['admit_mean_s'] * 1e6:>7.0f}us {_le(v['admit_median_s']):>9} {s['median_s'] * 1000:>11.2f}ms "
            f"{v['serial_median_vs_none']:>8.2f} {s['p99_s'] * 1000:>8.2f}ms {c['throughput_rps']:>13.1f} "
            f"{v['throughput_vs_none']:>8.2f}"
        )
    lines.append(
        f"Redis round trip per request (decision time inside the gateway, mean; median bucket): "
        f"{limiter['redis_round_trip_cost_s'] * 1e6:.0f}us; {_le(limiter['variants']['redis']['admit_median_s'])}; end to end, serial median redis - in-process: "
        f"{limiter['redis_vs_in_process_serial_median_s'] * 1000:+.2f}ms"
        + ("" if limiter["pinned"] else "  (taskset missing: gateway not pinned)")
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--workers", default=",".join(map(str, d.workers)), help="worker counts (default 2,4)")
    p.add_argument("--strategies", default=",".join(d.strategies), help="routing strategies to compare")
    p.add_argument("--requests", type=int, default=d.requests, help="requests per routing run")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="concurrent clients")
    p.add_argument("--apps", type=int, default=d.apps, help="distinct system prompts")
    p.add_argument("--system-tokens", type=int, default=d.system_tokens, help="system prompt length")
    p.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens, help="each worker's KV cache")
    p.add_argument("--speed", type=float, default=d.speed, help="simulator time multiplier")
    p.add_argument("--identical", type=int, default=d.identical, help="identical requests for dedup")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="directory for the JSON results (default bench-results)")
    p.add_argument("--only-limiter", action="store_true", help="run only the rate-limiter comparison")
    p.add_argument("--limiter-rounds", type=int, default=d.limiter_rounds, help="interleaved limiter rounds")
    p.add_argument(
        "--limiter-requests",
        type=int,
        default=d.limiter_requests,
        help="requests per rate-limiter variant: none, in-process, Redis (0 skips; needs redis-server)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Run the benchmark; prints the table and writes ``<out>/bench-<time>.json``."""
    args = _parser().parse_args(list(argv))
    strategies = tuple(s for s in args.strategies.split(",") if s)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        print(f"bench: unknown strategies {unknown}; choose from {list(STRATEGIES)}", file=sys.stderr)
        return 2
    try:
        workers = tuple(int(n) for n in args.workers.split(",") if n)
    except ValueError:
        print("bench: --workers takes comma-separated numbers, e.g. 2,4", file=sys.stderr)
        return 2
    cfg = BenchConfig(
        workers=workers, strategies=strategies, requests=args.requests, concurrency=args.concurrency,
        apps=args.apps, system_tokens=args.system_tokens, kv_cache_tokens=args.kv_cache_tokens,
        speed=args.speed, identical=args.identical, seed=args.seed, out=args.out,
        limiter_requests=args.limiter_requests, limiter_rounds=max(1, args.limiter_rounds),
    )  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vgate-bench-") as logs:
        results = run(cfg, Path(logs), only_limiter=args.only_limiter)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    save_results(results, cfg.out, "bench", render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
