"""``python -m bench.real_vllm`` (``make bench-vllm``): the gateway's efficiency measured against real vLLM (its CPU build).

Two real vLLM workers serve the float16 checkpoint given with ``--model`` (``make bench-vllm``
writes V-Gate's tiny Qwen2 model with ``hack/tiny_model.py --format float``: the CPU build's AWQ
kernels need AVX-512, and the measurements are about the gateway, not the kernels), started once;
a fresh gateway is started for every configuration. Measured, each against its peer in
the same run:

- **dedup**: N identical in-flight requests, and the upstream calls they became;
- **cache fidelity**: a cached replay (JSON and stream) against the worker's own answer,
  field by field (only ``id`` and ``created`` may differ: they are the replaying request's);
- **batching**: concurrent single-prompt completions with merging on and off;
- **embeddings**: the same for single-input embeddings, on two pooling workers
  (``--runner pooling --convert embed`` of the same model);
- **routing quality**: vLLM's own prefix-cache hit rate and the requests each worker served,
  for prefix-aware and round-robin over two workers and for one worker alone, on
  applications with shared system prompts. The workers' KV cache is kept small
  (``--kv-blocks``) so that it cannot hold every system prompt at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import stack
from bench.stack import Gateway, metric_total, save_results, scrape

MODEL = "tiny-qwen-float"
# Words the tiny model's tokenizer was trained on: prompts stay a few tokens a word.
_WORDS = [
    "gateway",
    "routes",
    "request",
    "healthy",
    "worker",
    "relays",
    "answer",
    "workers",
    "quantized",
    "models",
    "prefix",
    "caching",
    "repeated",
    "prompts",
    "skip",
    "work",
    "engine",
    "already",
    "done",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "cat",
    "sleeps",
    "sun",
    "kubernetes",
    "restarts",
    "pod",
    "health",
    "check",
    "fails",
    "system",
    "user",
    "assistant",
    "hello",
    "fine",
    "thank",
    "you",
]
_VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "VLLM_SERVER_DEV_MODE": "1",  # POST /reset_prefix_cache between routing runs
}


@dataclass(frozen=True)
class VllmBenchConfig:
    """One run's shape (command-line flags)."""

    #: The float16 checkpoint the workers serve (a directory); the prompts use the tiny model's words.
    model: str = ""
    identical: int = 8
    batch_requests: int = 192
    batch_concurrency: int = 32
    batch_max_tokens: int = 8
    batch_rounds: int = 3
    routing_requests: int = 80
    routing_concurrency: int = 4
    apps: int = 8
    system_words: int = 300
    max_model_len: int = 512
    #: KV blocks of 32 tokens per worker (2,048 tokens): fewer than all system prompts need together.
    kv_blocks: int = 64
    seed: int = 11
    #: Which measurements to run, comma-separated.
    sections: str = "dedup,fidelity,batching,routing,embeddings"
    out: str = "bench-results"


# -- processes ---------------------------------------------------------------------------


def _worker(args: list[str], log: Path) -> AbstractContextManager[str]:
    """A vLLM worker on the cores the gateway does not use; yields its URL once it answers."""
    return stack.vgate_service(args, "/health", _VLLM_ENV, log, cpus=stack.other_cpus(), timeout=600.0)


def _worker_args(cfg: VllmBenchConfig, model: Path) -> list[str]:
    return [
        "worker", "--model", str(model), "--quantization", "none", "--device", "cpu", "--host", "127.0.0.1",
        "--served-model-name", MODEL, "--max-model-len", str(cfg.max_model_len), "--",
        "--enforce-eager", "--distributed-executor-backend", "uni", "--block-size", "32",
        "--num-gpu-blocks-override", str(cfg.kv_blocks),
    ]  # fmt: skip


def gateway(workers: Sequence[str], env: dict[str, str], logs: Path) -> AbstractContextManager[Gateway]:
    """A fresh gateway in front of ``workers``, pinned to its own core."""
    return stack.gateway(workers, env, logs, cpus=stack.SUT_CPU)


# -- helpers -----------------------------------------------------------------------------


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _chat(system: str | None, question: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, **extra}


def _differences(mine: Any, theirs: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        out = []
        for key in sorted(set(mine) | set(theirs)):
            if key not in mine or key not in theirs:
                out.append(f"{path}.{key} (missing on one side)")
            else:
                out += _differences(mine[key], theirs[key], f"{path}.{key}")
        return out
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        return [
            d
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if mine == theirs else [path or "."]


def _unstamped(answer: Any) -> Any:
    return (
        {k: v for k, v in answer.items() if k not in ("id", "created")}
        if isinstance(answer, dict)
        else answer
    )


def _events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else _unstamped(json.loads(data)))
    return out


# -- measurements ------------------------------------------------------------------------


async def run_dedup(cfg: VllmBenchConfig, gw: str, workers: Sequence[str]) -> dict[str, Any]:
    """``cfg.identical`` identical requests at once: how many calls reach a worker."""
    body = _chat(None, "The quick brown fox", 24, temperature=0)
    before = await metric_total(workers, "vllm:request_success_total")
    calls_before = await metric_total([gw], "vgate_upstream_requests_total")
    async with httpx.AsyncClient(base_url=gw, timeout=120.0) as client:
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(cfg.identical))
        )
    after = await metric_total(workers, "vllm:request_success_total")
    calls = await metric_total([gw], "vgate_upstream_requests_total") - calls_before
    ok = [r for r in replies if r.status_code == 200]
    return {
        "client_requests": cfg.identical,
        "ok": len(ok),
        "distinct_ids": len({r.json()["id"] for r in ok}),
        "distinct_answers": len({json.dumps(_unstamped(r.json()), sort_keys=True) for r in ok}),
        "upstream_calls": calls,
        "worker_requests": after - before,
    }


async def run_fidelity(gw: str, worker: str) -> dict[str, Any]:
    """A cached replay against the worker's own answer, field by field, JSON and stream."""
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=120.0) as client:
        for name, extra in (
            ("json", {}),
            ("stream", {"stream": True, "stream_options": {"include_usage": True}}),
            (
                "stream, continuous usage",
                {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            ),
        ):
            body = _chat(None, f"Kubernetes restarts a pod ({name})", 12, temperature=0, **extra)
            direct = await client.post(
                worker + "/v1/chat/completions", json=body, headers={"x-request-id": "direct"}
            )
            miss = await client.post(gw + "/v1/chat/completions", json=body, headers={"x-request-id": "miss"})
            hit = await client.post(gw + "/v1/chat/completions", json=body, headers={"x-request-id": "hit"})
            if body.get("stream"):
                # vLLM's chunking of one greedy stream varies from run to run: the replay is
                # compared with the stream that filled the entry (the worker's, relayed untouched).
                differences = _differences(_events(hit.content), _events(miss.content))
                first = json.loads(hit.content.decode().split("\n\n")[0][6:])
            else:
                differences = _differences(_unstamped(hit.json()), _unstamped(direct.json()))
                first = hit.json()
            out[name] = {
                "cache": [miss.headers.get("x-vgate-cache"), hit.headers.get("x-vgate-cache")],
                "differences_besides_id_and_created": differences,
                "hit_id": first.get("id"),
                "hit_created_is_current": abs(int(first.get("created", 0)) - time.time()) < 120,
            }
    return out


async def _closed_loop(
    gw: str, path: str, bodies: list[dict[str, Any]], concurrency: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """``concurrency`` clients sending ``bodies`` one after another; throughput and latency."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    usage_ok = True

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal usage_ok
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            resp = await client.post(path, json=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            resp.raise_for_status()
            usage = resp.json()["usage"]
            limit = body.get("max_tokens")
            usage_ok &= usage["prompt_tokens"] > 0 and (limit is None or usage["completion_tokens"] <= limit)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gw, timeout=120.0) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "throughput_rps": len(latencies) / wall,
        "latency_mean_s": statistics.fmean(latencies),
        "latency_p90_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "usage_plausible": usage_ok,
    }


async def run_direct(
    cfg: VllmBenchConfig, worker: str, kind: str = "completions", prompts: int = 8, rounds: int = 6
) -> dict[str, Any]:
    """What merging can gain at most: one list request against as many single ones at once, at vLLM itself."""
    rng = random.Random(cfg.seed + 1)
    texts = [_text(rng, rng.randint(4, 12)) for _ in range(prompts)]

    def body(prompt: str | list[str]) -> dict[str, Any]:
        if kind == "embeddings":
            return {"model": MODEL, "input": prompt}
        return {"model": MODEL, "prompt": prompt, "max_tokens": cfg.batch_max_tokens, "temperature": 0.8}

    merged_body = body(texts) if kind == "embeddings" else {**body(texts), "return_token_ids": True}
    separate, merged = [], []
    async with httpx.AsyncClient(base_url=worker, timeout=120.0) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            await asyncio.gather(*(client.post(f"/v1/{kind}", json=body(t)) for t in texts))
            separate.append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.post(f"/v1/{kind}", json=merged_body)
            merged.append(time.perf_counter() - started)
    return {
        "prompts": prompts,
        "separate_median_s": statistics.median(separate),
        "merged_median_s": statistics.median(merged),
        "merged_vs_separate_time": statistics.median(merged) / statistics.median(separate),
    }


def _on_off(
    cfg: VllmBenchConfig,
    workers: Sequence[str],
    logs: Path,
    setting: str,
    path: str,
    bodies: list[dict[str, Any]],
) -> dict[str, Any]:
    """The same load through a gateway with ``setting`` false and true, in alternating rounds."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    bypass = {"x-vgate-cache": "bypass"}  # every request reaches the batcher, none the cache
    for _ in range(cfg.batch_rounds):
        for mode in ("off", "on"):
            with gateway(workers, {setting: "true" if mode == "on" else "false"}, logs) as gw:
                # One answer first: the gateway merges a model's requests once it has seen how it answers.
                httpx.post(gw + path, json=bodies[0], headers=bypass, timeout=120.0).raise_for_status()
                before = asyncio.run(metric_total([gw], "vgate_upstream_requests_total"))
                result = asyncio.run(_closed_loop(gw, path, bodies, cfg.batch_concurrency, bypass))
                after = asyncio.run(metric_total([gw], "vgate_upstream_requests_total"))
                result["upstream_calls"] = after - before
                runs[mode].append(result)

    def median(mode: str, key: str) -> float:
        values: list[float] = [r[key] for r in runs[mode]]
        return statistics.median(values)

    return {
        "runs": runs,
        "throughput_on_vs_off": median("on", "throughput_rps") / median("off", "throughput_rps"),
        "latency_mean_on_vs_off": median("on", "latency_mean_s") / median("off", "latency_mean_s"),
        "latency_p90_on_vs_off": median("on", "latency_p90_s") / median("off", "latency_p90_s"),
    }


def _prompts(cfg: VllmBenchConfig) -> list[str]:
    rng = random.Random(cfg.seed)
    return [_text(rng, rng.randint(4, 12)) for _ in range(cfg.batch_requests)]


def run_batching(cfg: VllmBenchConfig, workers: Sequence[str], logs: Path) -> dict[str, Any]:
    """Concurrent single-prompt completions with merging off and on."""
    bodies = [
        {"model": MODEL, "prompt": p, "max_tokens": cfg.batch_max_tokens, "temperature": 0.8}
        for p in _prompts(cfg)
    ]
    result = _on_off(cfg, workers, logs, "VGATE_BATCH_COMPLETIONS", "/v1/completions", bodies)
    return {"direct": asyncio.run(run_direct(cfg, workers[0])), **result}


def run_embeddings(cfg: VllmBenchConfig, model: Path, logs: Path) -> dict[str, Any]:
    """Concurrent single-input embeddings with merging off and on, on two pooling workers."""
    args = [*_worker_args(cfg, model), "--runner", "pooling", "--convert", "embed"]
    with ExitStack() as es:
        workers = [es.enter_context(_worker(args, logs / f"vllm-embed{i}.log")) for i in range(2)]
        bodies = [{"model": MODEL, "input": p} for p in _prompts(cfg)]
        result = _on_off(cfg, workers, logs, "VGATE_BATCH_EMBEDDINGS", "/v1/embeddings", bodies)
        return {"direct": asyncio.run(run_direct(cfg, workers[0], "embeddings")), **result}


async def _routing_load(cfg: VllmBenchConfig, gw: str) -> None:
    rng = random.Random(cfg.seed)
    systems = [
        f"You are assistant {a}. " + _text(random.Random(cfg.seed * 100 + a), cfg.system_words)
        for a in range(cfg.apps)
    ]
    turns = [(rng.randrange(cfg.apps), _text(rng, rng.randint(3, 8))) for _ in range(cfg.routing_requests)]
    queue = list(reversed(turns))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            app, question = queue.pop()
            body = _chat(systems[app], question, 4, temperature=0.8)
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()

    async with httpx.AsyncClient(base_url=gw, timeout=120.0) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(cfg.routing_concurrency)))


def run_routing(cfg: VllmBenchConfig, workers: Sequence[str], logs: Path) -> dict[str, Any]:
    """Prefix-cache hit rate and requests per worker, by vLLM's own counters."""
    names = ["vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:request_success_total"]
    out = {}
    for label, used, strategy in (
        ("one worker alone", workers[:1], "round-robin"),
        ("round-robin", workers, "round-robin"),
        ("prefix-aware", workers, "prefix-aware"),
    ):
        for w in workers:
            httpx.post(w + "/reset_prefix_cache", timeout=30.0).raise_for_status()
        before = asyncio.run(scrape(workers, names))
        with gateway(used, {"VGATE_ROUTING": strategy}, logs) as gw:
            started = time.perf_counter()
            asyncio.run(_routing_load(cfg, gw))
            wall = time.perf_counter() - started
        after = asyncio.run(scrape(workers, names))
        delta = [
            {n: a.get(n, 0.0) - b.get(n, 0.0) for n in names} for a, b in zip(after, before, strict=True)
        ]
        hits = sum(d[names[0]] for d in delta)
        queries = sum(d[names[1]] for d in delta)
        out[label] = {
            "prefix_hit_rate": hits / queries if queries else 0.0,
            "requests_per_worker": [int(d[names[2]]) for d in delta],
            "throughput_rps": cfg.routing_requests / wall,
        }
    return out


# -- driver ------------------------------------------------------------------------------


def run(cfg: VllmBenchConfig, logs: Path) -> dict[str, Any]:
    """Every measurement on one pair of workers; returns the JSON-ready results."""
    model = Path(cfg.model)
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "model": f"{model.name}, float16 (this CPU has no AVX-512 for AWQ)",
    }
    sections = set(cfg.sections.split(","))
    with ExitStack() as es:
        if sections & {"dedup", "fidelity", "batching", "routing"}:
            print("vLLM: starting two workers ...", file=sys.stderr, flush=True)
            args = _worker_args(cfg, model)
            workers = [es.enter_context(_worker(args, logs / f"vllm{i}.log")) for i in range(2)]
        if sections & {"dedup", "fidelity"}:
            print("vLLM: dedup and cache fidelity ...", file=sys.stderr, flush=True)
            with gateway(workers, {}, logs) as gw:
                if "dedup" in sections:
                    results["dedup"] = asyncio.run(run_dedup(cfg, gw, workers))
                if "fidelity" in sections:
                    results["cache_fidelity"] = asyncio.run(run_fidelity(gw, workers[0]))
        if "batching" in sections:
            print("vLLM: batching on and off ...", file=sys.stderr, flush=True)
            results["batching"] = run_batching(cfg, workers, logs)
        if "routing" in sections:
            print("vLLM: routing quality ...", file=sys.stderr, flush=True)
            results["routing"] = run_routing(cfg, workers, logs)
    if "embeddings" in sections:
        print("vLLM: embeddings batching on and off (pooling workers) ...", file=sys.stderr, flush=True)
        results["embeddings"] = run_embeddings(cfg, model, logs)
    return results


def render(results: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = [f"real vLLM ({results['model']})"]
    if d := results.get("dedup"):
        lines.append(
            f"dedup:    {d['client_requests']} identical in-flight requests -> {d['upstream_calls']:.0f} upstream "
            f"call(s), {d['worker_requests']:.0f} worker request(s), {d['distinct_answers']} distinct answer(s), "
            f"{d['distinct_ids']} ids"
        )
    for name, f in results.get("cache_fidelity", {}).items():
        diff = f["differences_besides_id_and_created"] or "none"
        lines.append(
            f"cache:    {name}: {f['cache']} differences from the worker's own answer: {diff}; id {f['hit_id']}"
        )
    if b := results.get("batching"):
        lines.append(
            f"batching: merged vs separate: throughput x{b['throughput_on_vs_off']:.2f}, mean latency "
            f"x{b['latency_mean_on_vs_off']:.2f}, p90 x{b['latency_p90_on_vs_off']:.2f}; upstream calls "
            f"{[r['upstream_calls'] for r in b['runs']['on']]} vs {[r['upstream_calls'] for r in b['runs']['off']]}"
        )
        d = b["direct"]
        lines.append(
            f"          at vLLM itself, one list of {d['prompts']} prompts took x{d['merged_vs_separate_time']:.2f} "
            f"the time of {d['prompts']} concurrent single requests"
        )
    if e := results.get("embeddings"):
        lines.append(
            f"embeddings: merged vs separate: throughput x{e['throughput_on_vs_off']:.2f}, mean latency "
            f"x{e['latency_mean_on_vs_off']:.2f}, p90 x{e['latency_p90_on_vs_off']:.2f}; at vLLM itself, one list "
            f"of {e['direct']['prompts']} inputs took x{e['direct']['merged_vs_separate_time']:.2f} the time"
        )
    if routing := results.get("routing"):
        lines.append(f"{'routing':<18} {'prefix hit':>10}  {'req/s':>6}  requests per worker")
        for label, r in routing.items():
            lines.append(
                f"{label:<18} {r['prefix_hit_rate']:>10.1%}  {r['throughput_rps']:>6.2f}  {r['requests_per_worker']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Run the real-vLLM section; prints the summary and writes ``<out>/bench-vllm-<time>.json``."""
    d = VllmBenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.real_vllm", description=__doc__.splitlines()[0])
    for name, value in asdict(d).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = vars(p.parse_args(list(argv)))
    cfg = VllmBenchConfig(**args)
    if not Path(cfg.model, "config.json").is_file():
        print(
            f"bench: --model {cfg.model or 'DIR'}: no checkpoint there; "
            "make bench-vllm writes the tiny one (hack/tiny_model.py DIR --format float)",
            file=sys.stderr,
        )
        return 2
    try:
        import vllm  # noqa: F401
    except ImportError:
        print(
            "bench: vLLM is not installed here; run it in .venv-vllm (make bench-vllm)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vgate-bench-vllm-") as logs:
        try:
            results = run(cfg, Path(logs))
        except Exception:
            for log in sorted(Path(logs).glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    results["wall_s"] = round(time.perf_counter() - started, 1)
    save_results(results, cfg.out, "bench-vllm", render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
