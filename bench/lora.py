"""``python -m bench.lora`` (``make bench-lora``): LoRA adapter placement against round-robin.

Eight adapters of one base model, two dry-run workers with four adapter slots each
(``--max-loras 4``, a load takes ``--lora-load-s``), and requests whose adapter is drawn
from a Zipf popularity (a few adapters take most of the traffic). Two arms serve the same
request sequence, each on freshly started workers:

* ``vgate``: the gateway with the adapters declared: each request goes to a worker that has
  its adapter loaded; the gateway loads it (unloading the least recently used idle adapter
  there) only when no worker has it, or when its holders are crowded.
* ``round-robin``: the placement of a router that knows nothing of adapters: requests go to
  the workers in turn, and a worker that lacks the adapter loads it first (unloading its
  least recently used idle adapter when its slots are full). It is driven by this harness
  directly against the workers, one hop shorter than the gateway arm.

Reported per arm: adapter loads per 1,000 requests, p50/p99 time to first token (streamed
completions, measured at the client), and the share of requests each worker served (from
each worker's own ``vllm:request_success_total``), over the whole run and over its second
half, once the gateway knows the adapters' popularity and has rebalanced them. Results: ``bench/results/lora-<time>.json``,
``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.stack import SUT_CPU, gateway, metric_total, other_cpus, vgate_service
from vgate_worker.settings import DEFAULT_MODEL

SUCCESS = "vllm:request_success_total"


@dataclass
class Config:
    adapters: int = 8
    workers: int = 2
    slots: int = 4
    requests: int = 4000
    concurrency: int = 16
    zipf_s: float = 1.1
    lora_load_s: float = 0.2
    #: Long enough that the run outlasts a few of the gateway's reconcile rounds (the placement
    #: learns the adapters' popularity and rebalances there): 16-token answers ran 4,000
    #: requests in about 10 s, and the second half caught a swap half done.
    max_tokens: int = 64
    seed: int = 7
    out: str = "bench/results"


@dataclass
class Arm:
    name: str
    loads: int = 0
    ttft_s: list[float] = field(default_factory=list)
    errors: int = 0
    per_worker: list[float] = field(default_factory=list)
    #: Requests each worker served in the second half of the run (placement settled).
    per_worker_late: list[float] = field(default_factory=list)

    def summary(self, requests: int) -> dict[str, Any]:
        ttft = sorted(self.ttft_s)
        total = sum(self.per_worker) or 1.0
        late = sum(self.per_worker_late) or 1.0
        return {
            "loads": self.loads,
            "loads_per_1000": round(1000 * self.loads / requests, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
            "ttft_p99_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 1),
            "errors": self.errors,
            "worker_share": [round(n / total, 3) for n in self.per_worker],
            "worker_share_second_half": [round(n / late, 3) for n in self.per_worker_late],
        }


def names(cfg: Config) -> list[str]:
    return [f"adapter-{i}" for i in range(cfg.adapters)]


def workload(cfg: Config) -> list[tuple[str, str]]:
    """(adapter, prompt) per request: Zipf popularity over the adapters, varied prompts."""
    rng = random.Random(cfg.seed)
    weights = [1 / (rank**cfg.zipf_s) for rank in range(1, cfg.adapters + 1)]
    chosen = rng.choices(names(cfg), weights=weights, k=cfg.requests)
    return [
        (a, f"Request {i} for {a}: summarise the shipment {rng.randrange(10**6)}.")
        for i, a in enumerate(chosen)
    ]


@contextmanager
def workers(cfg: Config, logs: Path) -> Iterator[list[str]]:
    args = ["worker", "--dry-run", "--served-model-name", DEFAULT_MODEL, "--enable-lora"]
    args += ["--max-loras", str(cfg.slots), "--lora-load-s", str(cfg.lora_load_s)]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VGATE_SIM_LOG_LEVEL": "warning"}
    with ExitStack() as es:
        yield [
            es.enter_context(vgate_service(args, "/health", env, logs / f"worker{i}.log", cpus=other_cpus()))
            for i in range(cfg.workers)
        ]


async def first_token(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> float:
    """Seconds until the first streamed chunk of a completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    started = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        ttft = 0.0
        async for line in resp.aiter_lines():
            if line.startswith("data:") and not ttft:
                ttft = time.perf_counter() - started
        return ttft


async def drive(cfg: Config, arm: Arm, send: Any, urls: Sequence[str]) -> None:
    """Send the workload with ``cfg.concurrency`` requests in flight; ``send(adapter, prompt)``.

    It goes in two halves; each worker's count of served requests is read between them and
    at the end, so the split of the second half (placement settled) is known too.
    """
    items = workload(cfg)
    half = len(items) // 2
    await _drive(cfg, arm, send, items[:half])
    mid = [await metric_total([u], SUCCESS) for u in urls]
    await _drive(cfg, arm, send, items[half:])
    arm.per_worker = [await metric_total([u], SUCCESS) for u in urls]
    arm.per_worker_late = [end - start for start, end in zip(mid, arm.per_worker, strict=True)]


async def _drive(cfg: Config, arm: Arm, send: Any, items: list[tuple[str, str]]) -> None:
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def client_loop() -> None:
        while not queue.empty():
            adapter, prompt = queue.get_nowait()
            try:
                arm.ttft_s.append(await send(adapter, prompt))
            except (RuntimeError, httpx.HTTPError):
                arm.errors += 1

    await asyncio.gather(*(client_loop() for _ in range(cfg.concurrency)))


async def run_vgate(cfg: Config, logs: Path) -> Arm:
    arm = Arm("vgate")
    adapters = {n: {"base": DEFAULT_MODEL, "source": f"org/{n}"} for n in names(cfg)}
    env = {
        "VGATE_ADAPTERS": json.dumps(adapters),
        "VGATE_MAX_LORAS": str(cfg.slots),
        "VGATE_CACHE_MAXSIZE": "0",
        "VGATE_ROUTING": "prefix-aware",
    }
    with workers(cfg, logs) as urls, gateway(urls, env, logs, cpus=SUT_CPU) as gw:
        async with httpx.AsyncClient(timeout=120.0) as client:
            await drive(cfg, arm, lambda a, p: first_token(client, gw, a, p, cfg.max_tokens), urls)
            stats = (await client.get(gw.internal + "/stats")).json()["adapters"]
        arm.loads = sum(s["loads"] for s in stats.values())
    return arm


class RoundRobinPlacement:
    """A router without adapter affinity: workers in turn, loading (with LRU unload) on a miss."""

    def __init__(self, urls: Sequence[str], slots: int, client: httpx.AsyncClient) -> None:
        self._turn = itertools.cycle(urls)
        self._slots = slots
        self._client = client
        self.loaded: dict[str, OrderedDict[str, None]] = {u: OrderedDict() for u in urls}
        self.inflight: dict[tuple[str, str], int] = {}
        self._locks = {u: asyncio.Lock() for u in urls}
        self.loads = 0

    async def send(self, adapter: str, prompt: str, max_tokens: int) -> float:
        url = next(self._turn)
        started = time.perf_counter()
        await self._ensure(url, adapter)
        key = (url, adapter)
        self.inflight[key] = self.inflight.get(key, 0) + 1
        try:
            waited = time.perf_counter() - started
            return waited + await first_token(self._client, url, adapter, prompt, max_tokens)
        finally:
            self.inflight[key] -= 1
            if adapter in self.loaded[url]:
                self.loaded[url].move_to_end(adapter)

    async def _ensure(self, url: str, adapter: str) -> None:
        held = self.loaded[url]
        if adapter in held:  # loaded: no wait behind another request's load
            held.move_to_end(adapter)
            return
        async with self._locks[url]:  # one load at a time per worker, as vLLM does
            if adapter in held:
                held.move_to_end(adapter)
                return
            while len(held) >= self._slots:
                idle = next((a for a in held if not self.inflight.get((url, a))), None)
                if idle is None:
                    await asyncio.sleep(0.01)
                    continue
                del held[idle]  # gone before the call: no request is sent to it meanwhile
                await self._client.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": idle})
            r = await self._client.post(
                f"{url}/v1/load_lora_adapter", json={"lora_name": adapter, "lora_path": f"org/{adapter}"}
            )
            if r.status_code != 200:
                raise RuntimeError(f"load failed: {r.text}")
            held[adapter] = None
            self.loads += 1


async def run_round_robin(cfg: Config, logs: Path) -> Arm:
    arm = Arm("round-robin")
    with workers(cfg, logs) as urls:
        async with httpx.AsyncClient(timeout=120.0) as client:
            router = RoundRobinPlacement(urls, cfg.slots, client)
            await drive(cfg, arm, lambda a, p: router.send(a, p, cfg.max_tokens), urls)
        arm.loads = router.loads
    return arm


def render(cfg: Config, results: dict[str, dict[str, Any]]) -> str:
    base, ours = results["round-robin"], results["vgate"]
    lines = [
        f"{cfg.adapters} adapters (Zipf s={cfg.zipf_s}), {cfg.workers} dry-run workers with {cfg.slots} slots "
        f"each, a load takes {cfg.lora_load_s} s; {cfg.requests} streamed completions "
        f"of {cfg.max_tokens} tokens, {cfg.concurrency} in flight.",
        "",
        "| placement | adapter loads / 1,000 requests | TTFT p50 | TTFT p99 | requests per worker | second half | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("round-robin", base), ("vgate (affinity)", ours)):
        split = " / ".join(f"{100 * s:.0f} %" for s in r["worker_share"])
        late = " / ".join(f"{100 * s:.0f} %" for s in r["worker_share_second_half"])
        lines.append(
            f"| {name} | {r['loads_per_1000']} | {r['ttft_p50_ms']} ms | {r['ttft_p99_ms']} ms | {split} | {late} "
            f"| {r['errors']} |"
        )
    loads = ours["loads_per_1000"] / base["loads_per_1000"] if base["loads_per_1000"] else float("nan")
    lines += [
        "",
        f"V-Gate / round-robin, same run: loads {loads:.2f}x, TTFT p99 "
        f"{ours['ttft_p99_ms'] / base['ttft_p99_ms']:.2f}x, TTFT p50 {ours['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}x",
    ]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["round-robin", "vgate"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    axes[0].bar(arms, [results[a]["loads_per_1000"] for a in arms], color=["#999", "#2a7"])
    axes[0].set_title("adapter loads / 1,000 requests")
    axes[1].bar(arms, [results[a]["ttft_p99_ms"] for a in arms], color=["#999", "#2a7"])
    axes[1].set_title("TTFT p99 (ms)")
    for i, a in enumerate(arms):
        shares = results[a]["worker_share"]
        bottom = 0.0
        for w, share in enumerate(shares):
            axes[2].bar(
                a,
                share,
                bottom=bottom,
                color=["#48c", "#c84", "#8c4", "#c48"][w % 4],
                label=f"worker {w}" if i == 0 else None,
            )
            bottom += share
    axes[2].set_title("share of requests per worker")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = Config()
    p = argparse.ArgumentParser(prog="python -m bench.lora", description=__doc__.splitlines()[0])
    for name, value in asdict(cfg).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    cfg = Config(**vars(p.parse_args(argv)))
    with tempfile.TemporaryDirectory(prefix="vgate-bench-lora-") as tmp:
        logs = Path(tmp)
        arms = [asyncio.run(run_round_robin(cfg, logs)), asyncio.run(run_vgate(cfg, logs))]
    results = {a.name: a.summary(cfg.requests) for a in arms}
    table = render(cfg, results)
    print(table)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"lora-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    stem.with_suffix(".json").write_text(
        json.dumps({"config": asdict(cfg), "results": results}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(table + "\n")
    plot(results, stem.with_suffix(".png"))
    print(f"results: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
