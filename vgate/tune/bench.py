"""``make bench-tune``: the tuner on real vLLM (CPU, tiny model) against the full grid and the simulator.

    python -m vgate.tune.bench --model .venv-vllm/tiny-qwen-float --out bench/results/tune

Steps, each a real ``vgate tune`` (or calibration) process whose results directory is kept:

1. calibrate the simulator against this vLLM (``sim-profile.json``);
2. the full grid on vLLM, with a baseline trial at vLLM's default settings (``vllm-grid/``);
3. Bayesian optimisation on vLLM with 40 % of the grid's trials (``vllm-bayes/``);
4. the same grid on the calibrated simulator (``sim-grid/``);
5. ``summary.md``/``summary.json``: smart vs grid, winner vs defaults, simulator vs vLLM ranking
   (Spearman), and the strategies replayed against the recorded vLLM grid over many seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgate.tune import loadgen, search, space, vllm_bench
from vgate.tune.measure import RequestRecord, Targets, summarise
from vgate.tune.runner import TrialPlan, TrialResult, serving
from vgate.tune.scenario import parse_scenario, parse_sweep, sample
from vgate.tune.tuner import load_trials, read_run

GRID = ["--grid", "max-num-seqs=2,4,8,16", "--grid", "max-num-batched-tokens=64,128,512,2048"]
WORKLOAD = ["--scenario", "N(384,128)/(48,16)", "--concurrency", "2,4,8,16", "--requests", "48"]
#: The workload's mean request, for targets scaled to the engine's own speed.
MEAN_PROMPT, MEAN_OUTPUT = 384, 48
#: vLLM's CPU build, started as the real-vLLM tests start it: no core pinning, eager mode.
ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
ENGINE_ARGS = ["--enforce-eager", "--distributed-executor-backend", "uni"]
WORKER_ARGS = ["--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20)]


def cpus() -> tuple[str | None, str | None]:
    """The engine on the last CPU, the gateway and the load generator on the others.

    On a two-core machine unpinned, the gateway and the load generator take CPU from vLLM's
    engine in proportion to the load, most at the heaviest levels, and a configuration's p99 then
    says as much about the scheduler as about its settings.
    """
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None, None
    return str(mine[-1]), ",".join(map(str, mine[:-1]))


def _cpu_flags() -> list[str]:
    engine, client = cpus()
    return [] if engine is None or client is None else ["--engine-cpus", engine, "--client-cpus", client]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(xs: Sequence[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


def targets_for(profile: dict[str, Any]) -> list[str]:
    """Targets in the engine's own units, so the benchmark asks the same of a fast and a slow machine.

    TPOT: three times the step time of a batch of eight (a wider batch, or prefill chunks the
    size of whole prompts in every step, misses it). TTFT: three of the workload's mean requests
    served alone, one after the other (a request may wait for a couple ahead of it).
    """
    sim = profile["sim"]
    step, slope, rate = sim["decode-step-s"], sim["decode-batch-slope"], sim["prefill-tokens-per-s"]
    tpot = 3 * step * (1 + slope * 7)
    alone = MEAN_PROMPT / rate + MEAN_OUTPUT * step
    return ["--ttft-p99-ms", f"{3000 * alone:.0f}", "--tpot-p99-ms", f"{1000 * tpot:.1f}"]


def _worker_flags(args: Sequence[str]) -> list[str]:
    return [f"--worker-arg={a}" for a in args]


def _engine_flags(args: Sequence[str]) -> list[str]:
    return [f"--engine-arg={a}" for a in args]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    if "--results" in cmd:  # a step run again starts over
        shutil.rmtree(cmd[cmd.index("--results") + 1], ignore_errors=True)
    subprocess.run(cmd, env=env, check=False)


def run_all(model: str, out: Path, steps: set[str]) -> None:
    env = {**os.environ, **ENGINE_ENV}
    real = ["--engine", "vllm", "--model", model, *_worker_flags(WORKER_ARGS), *_engine_flags(ENGINE_ARGS)]
    real += _cpu_flags()
    profile = out / "sim-profile.json"
    if "calibrate" in steps:
        cal = [sys.executable, "-m", "vgate.tune.calibrate", "--model", model, "--out", str(profile)]
        _run([*cal, *_worker_flags(WORKER_ARGS[:2]), *_engine_flags(ENGINE_ARGS), *_cpu_flags()], env)
    # Fixed once, by the first calibration: a later one (a re-run of the simulator's grid) must
    # not move the goalposts the vLLM grid was scored against.
    fixed = out / "targets.json"
    if not fixed.exists():
        fixed.write_text(json.dumps(targets_for(json.loads(profile.read_text()))) + "\n")
    targets: list[str] = json.loads(fixed.read_text())
    tune = [sys.executable, "-m", "vgate", "tune", *WORKLOAD, *targets, *GRID]
    if "grid" in steps:
        _run([*tune, *real, "--strategy", "grid", "--results", str(out / "vllm-grid")], env)
    if "bayes" in steps:
        _run(
            [*tune, *real, "--strategy", "bayes", "--no-baseline", "--results", str(out / "vllm-bayes")], env
        )
    if "loadgens" in steps:
        compare_loadgens(model, out)
    if "sim" in steps:
        sim = [
            "--engine",
            "sim",
            "--model",
            model,
            "--sim-profile",
            str(profile),
            *_worker_flags(WORKER_ARGS),
            *_cpu_flags(),
        ]
        _run([*tune, *sim, "--strategy", "grid", "--results", str(out / "sim-grid")], env)


def compare_loadgens(model: str, out: Path) -> dict[str, Any]:
    """One vLLM worker at its defaults, one level measured by our load generator and by vLLM's."""
    scenario = parse_scenario(WORKLOAD[1])
    shapes = sample(scenario, 48, seed=11)
    engine, client = cpus()
    plan = TrialPlan(
        engine="vllm",
        model=model,
        served_name="tiny",
        sweep=parse_sweep("concurrency", "8"),
        shapes={8.0: shapes},
        targets=Targets(),
        objective="throughput",
        worker_args=tuple(WORKER_ARGS),
        engine_args=tuple(ENGINE_ARGS),
        env=ENGINE_ENV,
        engine_cpus=engine,
        client_cpus=client,
    )
    work = out / "loadgens"
    result: dict[str, Any] = {"scenario": scenario.text(), "concurrency": 8, "requests": len(shapes)}
    with serving(plan, {}, work) as (base, _):
        asyncio.run(
            loadgen.run_level(base, plan.served_name, shapes[:4], "concurrency", 2, seed=1)
        )  # warm-up
        ours = asyncio.run(loadgen.run_level(base, plan.served_name, shapes, "concurrency", 8, 3))
        # Another seed: other prompt words of the same lengths, so no prefix-cache hit helps the second.
        theirs = vllm_bench.driver(plan.served_name, base, model, work)("concurrency", 8, shapes, 4)
        measured: dict[str, list[RequestRecord]] = {"vgate": ours, "vllm-bench": theirs}
        for name, records in measured.items():
            level = summarise(8, records, Targets())
            result[name] = {
                k: getattr(level, k)
                for k in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "output_tps")
            }
    (out / "loadgens.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _scores(trials: Sequence[TrialResult]) -> dict[str, float | None]:
    return {space.key(t.config): (t.score if t.status == "ok" else None) for t in trials if t.index >= 0}


def replay_study(run: dict[str, Any], scores: dict[str, float | None], seeds: int = 50) -> dict[str, Any]:
    """Each strategy against the recorded grid: how often, and in how many trials, it gets within 5 %."""
    grid = {k: tuple(v) for k, v in run["grid"].items()}
    candidates = space.expand(grid)
    table = [scores.get(space.key(c)) for c in candidates]
    best = max((s for s in table if s is not None), default=0.0)
    budget = max(1, math.floor(0.4 * len(candidates)))
    points = [space.coordinates(grid, c) for c in candidates]
    out: dict[str, Any] = {"grid_size": len(candidates), "budget": budget}
    for name in ("random", "bayes"):
        hits, needed = 0, []
        for seed in range(seeds if name == "random" else 1):
            observed = search.replay(search.make(name, points, seed), table, len(candidates))
            running = 0.0
            for n, o in enumerate(observed, 1):
                running = max(running, o.score or 0.0)
                if running >= 0.95 * best:
                    needed.append(n)
                    hits += n <= budget
                    break
        runs = seeds if name == "random" else 1
        out[name] = {"within_5pct_at_budget": hits / runs, "mean_trials_to_5pct": statistics.fmean(needed)}
    return out


def repeatability(
    first: dict[str, float | None], second: dict[str, float | None], sim: dict[str, float | None]
) -> dict[str, Any]:
    """vLLM against itself: the configurations both vLLM runs measured, scored twice.

    The simulator cannot agree with vLLM better than vLLM agrees with itself; this is that floor.
    """
    common = [k for k in second if k in first and k in sim]
    a, b, c = ([d[k] or 0.0 for k in common] for d in (first, second, sim))
    return {
        "configurations": len(common),
        "spearman_vllm_vs_vllm": spearman(a, b),
        "mean_relative_difference": statistics.fmean(
            abs(x - y) / max(x, y, 1e-9) for x, y in zip(a, b, strict=True)
        ),
        "spearman_sim_vs_vllm_mean": spearman(c, [(x + y) / 2 for x, y in zip(a, b, strict=True)]),
    }


def summarise_run(out: Path) -> dict[str, Any]:
    grid_run, grid = read_run(out / "vllm-grid"), load_trials(out / "vllm-grid")
    # At most 40 % of the grid: a run with a larger --max-trials is cut to its first trials,
    # which are exactly what a run with that budget would have tried (the strategy is deterministic).
    budget = max(1, math.floor(0.4 * sum(t.index >= 0 for t in grid)))
    bayes = [t for t in load_trials(out / "vllm-bayes") if t.index >= 0][:budget]
    sim = load_trials(out / "sim-grid")
    real_scores, sim_scores = _scores(grid), _scores(sim)
    feasible = [t for t in grid if t.index >= 0 and t.status == "ok"]
    best = max(feasible, key=lambda t: t.score)
    default = next(t for t in grid if t.index < 0)
    smart_best = max((t for t in bayes if t.status == "ok"), key=lambda t: t.score)
    common = [k for k in real_scores if k in sim_scores]
    sim_best_key = max(common, key=lambda k: sim_scores[k] or 0.0)
    summary = {
        "grid": {"trials": len(feasible), "best": space.key(best.config), "goodput": best.score},
        "bayes": {
            "trials": sum(t.index >= 0 for t in bayes),
            "best": space.key(smart_best.config),
            "goodput": smart_best.score,
            "share_of_grid_best": smart_best.score / best.score,
            "grid_goodput_of_its_pick": real_scores.get(space.key(smart_best.config)),
        },
        "default": {
            "goodput": default.score,
            "winner_over_default": best.score / default.score if default.score else None,
        },
        "sim_vs_vllm": {
            "spearman": spearman(
                [real_scores[k] or 0.0 for k in common], [sim_scores[k] or 0.0 for k in common]
            ),
            "sim_winner": sim_best_key,
            "vllm_goodput_of_sim_winner": real_scores[sim_best_key],
            "share_of_vllm_best": (real_scores[sim_best_key] or 0.0) / best.score,
            # The other way round: vLLM's winner, scored by the simulator, against the simulator's best.
            "sim_goodput_of_vllm_winner": sim_scores.get(space.key(best.config)),
            "share_of_sim_best": (sim_scores.get(space.key(best.config)) or 0.0)
            / max(sim_scores[sim_best_key] or 0.0, 1e-9),
            "rows": [{"settings": k, "vllm": real_scores[k], "sim": sim_scores[k]} for k in common],
        },
        "replay": replay_study(grid_run, real_scores),
        "targets": grid_run["targets_text"],
        "workload": f"{grid_run['scenario']}, {grid_run['sweep_kind']} {grid_run['levels']}",
    }
    summary["repeatability"] = repeatability(
        real_scores, _scores(load_trials(out / "vllm-bayes")), sim_scores
    )
    if (out / "loadgens.json").exists():
        summary["loadgens"] = json.loads((out / "loadgens.json").read_text())
    write_agreement_plot(out / "sim-vs-vllm.png", summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def write_agreement_plot(path: Path, summary: dict[str, Any]) -> None:
    """Each grid point's goodput on vLLM against the simulator's, both winners marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = summary["sim_vs_vllm"]
    rows = c["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.scatter(
        [r["vllm"] or 0 for r in rows], [r["sim"] or 0 for r in rows], s=22, c="#8aa", label="grid point"
    )
    for key, colour, label in (
        (summary["grid"]["best"], "#c33", "vLLM's winner"),
        (c["sim_winner"], "#36c", "simulator's winner"),
    ):
        row = next(r for r in rows if r["settings"] == key)
        ax.scatter(
            [row["vllm"] or 0], [row["sim"] or 0], s=90, facecolors="none", edgecolors=colour, label=label
        )
    ax.set_xlabel("goodput on vLLM (req/s)")
    ax.set_ylabel("goodput on the simulator (req/s)")
    ax.set_title(f"Simulator vs vLLM, same grid: Spearman {c['spearman']:.2f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(s: dict[str, Any]) -> str:
    g, b, d, c, r = s["grid"], s["bayes"], s["default"], s["sim_vs_vllm"], s["replay"]
    lines = [
        f"Workload {s['workload']}; targets: {s['targets']}; objective: goodput per worker.",
        "",
        "| | trials | best settings | goodput (req/s) |",
        "|---|---|---|---|",
        f"| full grid | {g['trials']} | {g['best']} | {g['goodput']:.3f} |",
        f"| bayes | {b['trials']} | {b['best']} | {b['goodput']:.3f} ({b['share_of_grid_best']:.1%} of the grid's best; "
        f"the grid run measured the same settings at {(b['grid_goodput_of_its_pick'] or 0) / g['goodput']:.1%}) |",
        f"| vLLM defaults | 1 | (none) | {d['goodput']:.3f} |",
        "",
        f"Winner over vLLM's defaults: {d['winner_over_default'] or 0:.2f}x goodput.",
        "",
        f"Simulator vs vLLM on the same grid: Spearman {c['spearman']:.2f}; the simulator's winner "
        f"({c['sim_winner']}) scores {c['share_of_vllm_best']:.1%} of vLLM's best on vLLM; vLLM's winner "
        f"({g['best']}) scores {c['share_of_sim_best']:.1%} of the simulator's best on the simulator.",
        "",
        "| settings | vLLM goodput | simulator goodput |",
        "|---|---|---|",
        *[f"| {row['settings']} | {row['vllm'] or 0:.3f} | {row['sim'] or 0:.3f} |" for row in c["rows"]],
        "",
        f"Replayed against the recorded vLLM grid ({r['grid_size']} points, budget {r['budget']} trials): "
        f"bayes within 5 % at the budget: {r['bayes']['within_5pct_at_budget']:.0%} "
        f"(after {r['bayes']['mean_trials_to_5pct']:.1f} trials); random search over 50 seeds: "
        f"{r['random']['within_5pct_at_budget']:.0%} (mean {r['random']['mean_trials_to_5pct']:.1f} trials).",
    ]
    rep = s["repeatability"]
    lines += [
        "",
        f"vLLM against itself: the {rep['configurations']} configurations both vLLM runs measured (grid, then bayes) "
        f"rank with Spearman {rep['spearman_vllm_vs_vllm']:.2f} and differ by {rep['mean_relative_difference']:.0%} "
        f"in goodput on average; the simulator against the mean of the two: Spearman {rep['spearman_sim_vs_vllm_mean']:.2f}.",
    ]
    if "loadgens" in s:
        lines += ["", *_loadgen_lines(s["loadgens"])]
    return "\n".join(lines) + "\n"


def _loadgen_lines(lg: dict[str, Any]) -> list[str]:
    head = f"The two load generators on one vLLM worker at its defaults, {lg['scenario']}, {lg['concurrency']} clients:"
    rows = [
        head,
        "",
        "| load generator | TTFT p50/p99 ms | TPOT p50/p99 ms | E2E p50 ms | out tok/s |",
        "|---|---|---|---|---|",
    ]
    for name in ("vgate", "vllm-bench"):
        m = lg[name]
        rows.append(
            f"| {name} | {m['ttft_p50'] * 1000:.0f}/{m['ttft_p99'] * 1000:.0f} | {m['tpot_p50'] * 1000:.1f}/{m['tpot_p99'] * 1000:.1f} "
            f"| {m['e2e_p50'] * 1000:.0f} | {m['output_tps']:.1f} |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vgate.tune.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="bench/results/tune")
    p.add_argument(
        "--steps", default="calibrate,grid,bayes,sim,loadgens", help="which steps to run (then summary)"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_all(args.model, out, set(filter(None, args.steps.split(","))))
    print(summary_markdown(summarise_run(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
