"""One trial, for real: start a worker with the trial's settings, the gateway in front, drive the load.

The worker is ``vgate worker`` (the simulator with ``--dry-run``, else the launcher that execs
vLLM), started exactly as ``vgate dev`` and a pod start it; the load goes through ``vgate
gateway`` with its cache, dedup and batching off, so the engine, not the gateway, is measured.
A worker that exits or never answers ``/health`` makes the trial *infeasible*, with the
engine's own last error line from its log; nothing a trial does stops the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vgate import procs
from vgate.tune import loadgen, space
from vgate.tune.measure import LevelResult, Objective, RequestRecord, Targets, score, summarise
from vgate.tune.scenario import ScenarioError, Shape, Sweep

Engine = Literal["sim", "vllm"]
#: A level whose first and second halves differ by more than this is measured again.
MAX_DRIFT = 0.25

# Lines that carry an engine's reason for stopping: Python exceptions, vLLM's and V-Gate's errors.
_ERROR_LINE = re.compile(r"(\b\w*(Error|Exception)\b[:(]|\berror: |\binvalid settings|out of memory)", re.I)
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?(\w+ \d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \[[^\]]*\]\s*)?")


@dataclass(frozen=True)
class TrialPlan:
    """Everything every trial shares: engine, model, base arguments, load and targets."""

    engine: Engine
    model: str
    served_name: str
    sweep: Sweep
    #: Request shapes per level, the same for every configuration.
    shapes: dict[float, list[Shape]]
    targets: Targets
    objective: Objective
    worker_args: tuple[str, ...] = ()
    #: Arguments after ``--`` that go to vLLM unchanged (``--enforce-eager`` on CPU).
    engine_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    warmup: int = 2
    start_timeout_s: float = 600.0
    repeats: int = 1
    seed: int = 0
    loadgen: Literal["vgate", "vllm-bench"] = "vgate"
    tokenizer: str | None = None
    #: CPUs for the worker (``taskset`` list), and for the gateway and load generator: on a
    #: machine where they share cores, what one measures is the engine plus whatever stole its CPU.
    engine_cpus: str | None = None
    client_cpus: str | None = None


@dataclass
class TrialResult:
    index: int
    config: dict[str, space.Value]
    #: ``infeasible``: the engine did not start; ``error``: the gateway or load generator failed.
    status: Literal["ok", "infeasible", "error"]
    reason: str = ""
    levels: list[LevelResult] = field(default_factory=list)
    score: float = 0.0
    start_s: float = 0.0
    load_s: float = 0.0
    repeats: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "levels"}
        out["levels"] = [lv.to_json() for lv in self.levels]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        levels = [LevelResult.from_json(lv) for lv in data.get("levels", [])]
        return cls(**{**data, "levels": levels})


def check_cpus(engine: str | None, client: str | None, *, here: bool = True) -> None:
    """``--engine-cpus`` and ``--client-cpus``: CPU lists with no CPU in both (the point of
    pinning is that nothing else runs on the engine's); with ``here`` (a run on this machine,
    not a Job rendered for another), CPUs this process may use and ``taskset`` installed."""
    sets = []
    try:
        for text in (engine, client):
            if text is not None:
                if here:
                    procs.pinned([], text)  # taskset is there to do it
                sets.append(procs.parse_cpus(text, here=here))
    except ValueError as exc:
        raise ScenarioError(f"--engine-cpus/--client-cpus: {exc}") from None
    if len(sets) == 2 and sets[0] & sets[1]:
        shared = ",".join(map(str, sorted(sets[0] & sets[1])))
        raise ScenarioError(f"--engine-cpus and --client-cpus share CPU {shared}")


def engine_message(log_text: str) -> str:
    """The engine's own reason for stopping: the last error line of its log, without the log prefix."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.search(line):
            return _LOG_PREFIX.sub("", line)[:500]
    return lines[-1][:500] if lines else "the worker exited without a message"


def worker_command(plan: TrialPlan, config: space.Config, port: int) -> tuple[list[str], dict[str, str]]:
    """``vgate worker`` for one trial, and the environment it runs with."""
    flags = space.worker_args(config)
    argv = procs.vgate_argv("worker")
    if plan.engine == "sim":
        argv.append("--dry-run")
    argv += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", plan.served_name]
    argv += ["--model", plan.model, *plan.worker_args, *flags]
    if plan.engine_args:
        argv += ["--", *plan.engine_args]
    return argv, {**os.environ, **plan.env}


def gateway_command(worker_port: int, port: int, internal_port: int) -> tuple[list[str], dict[str, str]]:
    """The gateway in front of one worker, with every shortcut that would hide the engine off."""
    env = {
        **os.environ,
        "VGATE_ENDPOINTS": f"http://127.0.0.1:{worker_port}",
        "VGATE_CACHE_MAXSIZE": "0",
        "VGATE_DEDUP": "false",
        "VGATE_BATCH_COMPLETIONS": "false",
        "VGATE_LOG_LEVEL": "warning",
        "VGATE_HEALTH_INTERVAL_S": "1",
    }
    argv = procs.vgate_argv("gateway", "--port", str(port), "--internal-port", str(internal_port))
    return argv, env


class EngineFailed(Exception):
    """The worker exited or never became ready; the message is the engine's own reason."""


@contextmanager
def serving(plan: TrialPlan, config: space.Config, trial_dir: Path) -> Iterator[tuple[str, float]]:
    """A worker with ``config`` and the gateway in front: yields the gateway's URL and the start time."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    worker_port, gateway_port, internal_port = procs.free_port(), procs.free_port(), procs.free_port()
    argv, env = worker_command(plan, config, worker_port)
    log = trial_dir / "worker.log"
    log.write_text("")
    began = time.monotonic()
    children = [procs.start(procs.pinned(argv, plan.engine_cpus), env=env, log=log)]
    mask = os.sched_getaffinity(0)
    if plan.client_cpus is not None:  # the load generator runs in this process
        os.sched_setaffinity(0, procs.parse_cpus(plan.client_cpus))
    try:
        try:
            children[0].wait_ready(f"http://127.0.0.1:{worker_port}/health", plan.start_timeout_s)
        except (procs.ProcessExited, TimeoutError) as exc:
            late = f"not ready within {plan.start_timeout_s:g} s; " if isinstance(exc, TimeoutError) else ""
            raise EngineFailed(late + engine_message(log.read_text(errors="replace"))) from None
        started = time.monotonic() - began
        gw_argv, gw_env = gateway_command(worker_port, gateway_port, internal_port)
        gw_argv = procs.pinned(gw_argv, plan.client_cpus)
        children.append(procs.start(gw_argv, env=gw_env, log=trial_dir / "gateway.log"))
        base = f"http://127.0.0.1:{gateway_port}"
        children[1].wait_ready(f"{base}/ready", 60.0)
        yield base, started
    finally:
        os.sched_setaffinity(0, mask)
        procs.stop_all(children, grace=15.0)


def run_trial(plan: TrialPlan, index: int, config: space.Config, trial_dir: Path) -> TrialResult:
    """Start, warm, measure every level, stop; an engine that does not start is infeasible."""
    result = TrialResult(index, dict(config), "ok")
    try:
        with serving(plan, config, trial_dir) as (base, started):
            result.start_s = started
            loaded = time.monotonic()
            result.levels, result.repeats = _measure(plan, base, trial_dir)
            result.load_s = time.monotonic() - loaded
    except EngineFailed as exc:
        result.status, result.reason = "infeasible", str(exc)
        return result
    except (subprocess.CalledProcessError, OSError, TimeoutError, procs.ProcessExited) as exc:
        # The gateway or the load generator failed, not the engine: recorded, and the run goes on.
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"[:500]
        return result
    result.score = score(result.levels, plan.objective, plan.targets)
    return result


def _measure(plan: TrialPlan, base: str, trial_dir: Path) -> tuple[list[LevelResult], int]:
    drive = _driver(plan, base, trial_dir)
    warm = plan.shapes[plan.sweep.levels[0]][: plan.warmup]
    if warm:
        drive(plan.sweep.kind, 1.0, warm, plan.seed + 99)
    levels: list[LevelResult] = []
    repeats = 0
    for n, level in enumerate(plan.sweep.levels):
        shapes = plan.shapes[level]
        records = drive(plan.sweep.kind, level, shapes, plan.seed + n)
        best = summarise(level, records, plan.targets)
        tries = 0
        while best.drift > MAX_DRIFT and tries < plan.repeats:
            tries += 1
            again_records = drive(plan.sweep.kind, level, shapes, plan.seed + n)
            again = summarise(level, again_records, plan.targets)
            if again.drift < best.drift:
                best, records = again, again_records
        repeats += tries
        levels.append(best)
        save_records(trial_dir, level, records)
    return levels, repeats


def trial_dir(results: Path, index: int) -> Path:
    """Where a trial keeps its logs and requests: ``trials/007``, or ``trials/baseline``."""
    return results / "trials" / ("baseline" if index < 0 else f"{index:03d}")


def records_path(trial_dir: Path, level: float) -> Path:
    return trial_dir / f"requests-{level:g}.jsonl"


def save_records(trial_dir: Path, level: float, records: Sequence[RequestRecord]) -> None:
    """Every request of the level that was kept, for the winner's latency distribution."""
    lines = (json.dumps(dataclasses.asdict(r)) for r in records)
    records_path(trial_dir, level).write_text("".join(line + "\n" for line in lines))


def load_records(trial_dir: Path, level: float) -> list[RequestRecord]:
    path = records_path(trial_dir, level)
    if not path.exists():
        return []
    return [RequestRecord(**json.loads(line)) for line in path.read_text().splitlines() if line]


Driver = Callable[[str, float, Sequence[Shape], int], list[RequestRecord]]


def _driver(plan: TrialPlan, base: str, trial_dir: Path) -> Driver:
    if plan.loadgen == "vllm-bench":
        from vgate.tune import vllm_bench

        return vllm_bench.driver(plan.served_name, base, plan.tokenizer or plan.model, trial_dir)

    def drive(kind: str, level: float, shapes: Sequence[Shape], seed: int) -> list[RequestRecord]:
        return asyncio.run(loadgen.run_level(base, plan.served_name, shapes, kind, level, seed))

    return drive
