"""``vgate tune``: find the engine settings that serve a workload best within its latency targets.

    vgate tune --scenario 'D(100,100)' --concurrency 1,4 --grid gpu-memory-utilization=0.7,0.8
    vgate tune -f deploy.yaml --model-name chat --scenario 'N(480,240)/(300,150)' --rate 1,2,4 \\
        --grid max-num-seqs=8,16,32,64 --grid max-num-batched-tokens=512,2048 --strategy bayes \\
        --ttft-p99-ms 500 --tpot-p99-ms 50
    vgate tune --resume DIR        continue a stopped run          vgate tune --report DIR   rebuild its report

Trials run on the dry-run simulator unless ``--engine vllm`` (or the manifest's workers are real
and vLLM is installed). docs/tune.md explains the workload language, strategies and reports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vgate.tune import report, search, space
from vgate.tune.manifest import ManifestError, TuneTarget, load_target
from vgate.tune.measure import OBJECTIVES, Targets
from vgate.tune.runner import TrialPlan, check_cpus
from vgate.tune.scenario import ScenarioError, parse_scenario, parse_sweep, requests_for, sample
from vgate.tune.tuner import TRIALS_FILE, Budget, read_run, rescore, tune, write_run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgate tune",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to tune")
    what.add_argument(
        "-f", "--filename", help="a VGateDeployment manifest: the model and its engine settings"
    )
    what.add_argument("--model-name", help="which spec.models[] entry (default: the first)")
    what.add_argument("--model", help="model id or directory, without a manifest")
    what.add_argument("--engine", choices=("sim", "vllm"), help="simulator (default) or real vLLM")
    what.add_argument(
        "--worker-arg", action="append", default=[], metavar="ARG", help="extra `vgate worker` argument"
    )
    what.add_argument("--engine-arg", action="append", default=[], metavar="ARG", help="extra vLLM argument")
    what.add_argument(
        "--sim-profile", help="simulator timing fitted to a real engine (python -m vgate.tune.calibrate)"
    )
    load = p.add_argument_group("workload")
    load.add_argument(
        "--scenario", default="D(100,100)", help="D(in,out), N(m,sd)/(m,sd), U(a,b)/(a,b) or FILE.jsonl"
    )
    sweep = load.add_mutually_exclusive_group()
    sweep.add_argument("--concurrency", help="clients per level, e.g. 1,4,16 (default 1,4)")
    sweep.add_argument("--rate", help="requests/s per level (Poisson), e.g. 1,2,4")
    load.add_argument("--requests", type=int, default=24, help="requests per level (default 24)")
    load.add_argument("--loadgen", choices=("vgate", "vllm-bench"), default="vgate", help="load generator")
    load.add_argument("--tokenizer", help="tokenizer for --loadgen vllm-bench (default: the model)")
    goal = p.add_argument_group("targets and objective")
    goal.add_argument("--ttft-p99-ms", type=float, help="p99 time to first token")
    goal.add_argument("--tpot-p99-ms", type=float, help="p99 time per output token")
    goal.add_argument("--e2e-p99-ms", type=float, help="p99 end-to-end latency")
    goal.add_argument(
        "--max-error-rate", type=float, default=0.0, help="allowed share of failed requests (0)"
    )
    goal.add_argument(
        "--objective", choices=OBJECTIVES, default="goodput", help="goodput req/s or output tok/s"
    )
    how = p.add_argument_group("search")
    how.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2", help="a setting and its values"
    )
    how.add_argument("--strategy", choices=search.STRATEGIES, default="grid")
    how.add_argument("--max-trials", type=int, help="trial budget (default: grid size; bayes: 40%% of it)")
    how.add_argument("--max-time", type=float, help="time budget in seconds")
    how.add_argument("--no-baseline", action="store_true", help="skip the engine-defaults trial")
    how.add_argument("--seed", type=int, default=0)
    how.add_argument("--start-timeout", type=float, default=600.0, help="seconds a worker may take to start")
    how.add_argument("--repeats", type=int, default=1, help="re-measurements of a level that drifted")
    how.add_argument(
        "--engine-cpus", metavar="LIST", help="run the worker on these CPUs (taskset list, e.g. 1 or 2-7)"
    )
    how.add_argument(
        "--client-cpus", metavar="LIST", help="run the gateway and the load generator on these CPUs (e.g. 0)"
    )
    out = p.add_argument_group("results")
    out.add_argument("--results", help="results directory (default tune-results/<time>)")
    out.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    out.add_argument("--report", metavar="DIR", help="rebuild the report of the run saved in DIR and exit")
    out.add_argument("--render-job", action="store_true", help="print a Kubernetes Job running this tuning")
    out.add_argument("--image", help="--render-job: the image (default: the worker image)")
    out.add_argument("--namespace", default="default", help="--render-job: namespace")
    out.add_argument("--results-claim", help="--render-job: PersistentVolumeClaim for the results")
    return p


def _targets(args: argparse.Namespace) -> Targets:
    ms = [args.ttft_p99_ms, args.tpot_p99_ms, args.e2e_p99_ms]
    if any(v is not None and v <= 0 for v in ms) or not 0 <= args.max_error_rate < 1:
        raise ScenarioError("latency targets must be above 0 ms and --max-error-rate within [0, 1)")
    seconds = [None if v is None else v / 1000 for v in ms]
    return Targets(seconds[0], seconds[1], seconds[2], args.max_error_rate)


def build(
    args: argparse.Namespace,
) -> tuple[TrialPlan, TuneTarget, list[dict[str, space.Value]], dict[str, Any]]:
    """Everything a run needs, validated; raises ScenarioError, SpaceError or ManifestError."""
    target = load_target(args.filename, args.model_name, args.model, args.engine)
    scenario = parse_scenario(args.scenario)
    sweep = (
        parse_sweep("rate", args.rate) if args.rate else parse_sweep("concurrency", args.concurrency or "1,4")
    )
    if args.requests < 1:
        raise ScenarioError("--requests must be at least 1")
    grid = space.parse_grid(args.grid)
    candidates = space.expand(grid)
    targets = _targets(args)
    check_cpus(args.engine_cpus, args.client_cpus, here=not args.render_job)  # a Job checks its own node
    shapes = {
        lv: sample(scenario, requests_for(sweep, lv, args.requests), args.seed + i)
        for i, lv in enumerate(sweep.levels)
    }
    plan = TrialPlan(
        engine=target.engine,
        model=target.model,
        served_name=target.served_name,
        sweep=sweep,
        shapes=shapes,
        targets=targets,
        objective=args.objective,
        worker_args=(*target.worker_args, *_profile_args(args.sim_profile, target.engine), *args.worker_arg),
        engine_args=(*target.engine_args, *args.engine_arg),
        env=target.env,
        start_timeout_s=args.start_timeout,
        repeats=args.repeats,
        seed=args.seed,
        loadgen=args.loadgen,
        tokenizer=args.tokenizer,
        engine_cpus=args.engine_cpus,
        client_cpus=args.client_cpus,
    )
    run = {
        "scenario": scenario.text(),
        "sweep_kind": sweep.kind,
        "levels": list(sweep.levels),
        "targets_text": targets.describe(),
        "objective": args.objective,
        "engine": target.engine,
        "strategy": args.strategy,
        "grid": {k: list(v) for k, v in grid.items()},
        "model_name": target.served_name,
    }
    return plan, target, candidates, run


def _profile_args(path: str | None, engine: str) -> list[str]:
    """The simulator flags of a calibration profile (nothing for real vLLM, which needs none)."""
    if path is None or engine != "sim":
        return []
    try:
        args: list[str] = json.loads(Path(path).read_text())["sim_args"]
    except (OSError, ValueError, KeyError) as exc:
        raise ScenarioError(f"--sim-profile {path}: not a calibration profile ({exc})") from None
    return args


def _budget(args: argparse.Namespace, size: int) -> Budget:
    default = max(1, math.floor(0.4 * size)) if args.strategy == "bayes" else size
    trials = args.max_trials if args.max_trials is not None else default
    if trials < 1:
        raise ScenarioError("--max-trials must be at least 1")
    return Budget(min(trials, size), args.max_time)


#: Flags ``--report``/``--resume`` may change: the targets and objective re-score saved requests.
_SCORING = ("--ttft-p99-ms", "--tpot-p99-ms", "--e2e-p99-ms", "--max-error-rate", "--objective")


def _scoring_overrides(argv: Sequence[str]) -> list[str]:
    """The scoring flags (and values) given on this command line."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name in _SCORING:
            out += [arg] if "=" in arg else [arg, *argv[i + 1 : i + 2]]
    return out


def _without_results(args: Sequence[str]) -> list[str]:
    """``args`` less ``--results DIR``: the saved command line works wherever the directory moves."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--results":
            skip = True
        elif not arg.startswith("--results="):
            out.append(arg)
    return out


def main(argv: Sequence[str]) -> int:
    first = _parser().parse_args(list(argv))
    where = first.report or first.resume or first.results
    results = Path(where or f"tune-results/{time.strftime('%Y%m%dT%H%M%S')}")
    args = list(argv)
    try:
        if first.report or first.resume:
            # The saved command line, with any new targets after it (argparse keeps the last).
            args = [*read_run(results)["argv"], *_scoring_overrides(argv)]
        elif (results / TRIALS_FILE).exists():
            raise ScenarioError(
                f"{results} already holds a run: --resume {results}, or choose another --results"
            )
        parsed = _parser().parse_args([*args, "--results", str(results)])
        plan, target, candidates, run = build(parsed)
        if parsed.render_job:
            from vgate.tune.job import render_job

            print(yaml.safe_dump_all(render_job(args, target, parsed), sort_keys=False), end="")
            return 0
        write_run(results, {**run, "argv": _without_results(args)})
        if first.report:
            rescore(results, plan.targets, plan.objective)
        else:
            grid = space.parse_grid(parsed.grid)
            points = [space.coordinates(grid, c) for c in candidates]
            strategy = search.make(parsed.strategy, points, parsed.seed)
            baseline: dict[str, space.Value] | None = None if parsed.no_baseline else {}
            tune(plan, candidates, strategy, _budget(parsed, len(candidates)), results, baseline=baseline)
    except (ScenarioError, space.SpaceError, ManifestError, FileNotFoundError) as exc:
        print(f"vgate tune: error: {exc}", file=sys.stderr)
        return 2
    return _finish(results, run, target)


def _finish(results: Path, run: dict[str, Any], target: TuneTarget) -> int:
    from vgate.tune.tuner import load_trials

    trials = load_trials(results)
    print(report.write_report(results, run, trials))
    best = report.winner(trials)
    if best is None:
        print("No configuration met the targets; relax them or widen the grid.")
        return 1
    patch = report.manifest_patch(target.manifest, target.served_name, best.config, target.model)
    (results / "patch.yaml").write_text(yaml.safe_dump(patch, sort_keys=False))
    print(
        f"Winner: {space.key(best.config) or 'engine defaults'} (score {best.score:.3g} {run['objective']})"
    )
    print(
        f"Report: {results / report.REPORT_MD}; apply the winner: kubectl apply -f {results / 'patch.yaml'}"
    )
    return 0
