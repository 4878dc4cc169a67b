"""The tuning loop: ask the strategy, run the trial, save it, until a budget runs out.

Every finished trial is appended to ``trials.jsonl`` in the results directory before the next
starts, so a run stopped by Ctrl-C, a budget or a crash resumes where it was (``--resume``):
the saved trials are replayed into the strategy, which then proposes what it would have.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vgate.tune import search, space
from vgate.tune.measure import Objective, Targets, score, summarise
from vgate.tune.runner import TrialPlan, TrialResult, load_records, run_trial, trial_dir

TRIALS_FILE = "trials.jsonl"
BASELINE_INDEX = -1


@dataclass(frozen=True)
class Budget:
    trials: int
    seconds: float | None = None


def load_trials(results: Path) -> list[TrialResult]:
    """The trials saved in ``results`` (none for a new directory)."""
    path = results / TRIALS_FILE
    if not path.exists():
        return []
    return [TrialResult.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def save_trial(results: Path, trial: TrialResult) -> None:
    with (results / TRIALS_FILE).open("a") as f:
        f.write(json.dumps(trial.to_json()) + "\n")


def observations(trials: Sequence[TrialResult]) -> list[search.Observation]:
    """What the strategy learns from the saved trials (the baseline is not one of its candidates)."""
    return [
        search.Observation(t.index, t.score if t.status == "ok" else None) for t in trials if t.index >= 0
    ]


class Progress:
    """A one-line progress bar on a terminal; plain lines when the output is a file or a pipe."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total, self.out, self.began = max(total, 1), out, time.monotonic()

    def show(self, done: int, note: str) -> None:
        width = 24
        filled = round(width * min(done, self.total) / self.total)
        elapsed = time.monotonic() - self.began
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} trials  {elapsed:5.0f} s  {note}"
        if self.out.isatty():
            self.out.write("\r\033[K" + bar)
        else:
            self.out.write(bar + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.out.isatty():
            self.out.write("\n")


Runner = Callable[[TrialPlan, int, space.Config, Path], TrialResult]


def tune(
    plan: TrialPlan,
    candidates: Sequence[dict[str, space.Value]],
    strategy: search.Strategy,
    budget: Budget,
    results: Path,
    *,
    baseline: dict[str, space.Value] | None = None,
    runner: Runner = run_trial,
    progress: Progress | None = None,
) -> list[TrialResult]:
    """Run trials until the strategy is done or a budget is spent; returns every trial, saved ones first."""
    results.mkdir(parents=True, exist_ok=True)
    trials = load_trials(results)
    began = time.monotonic()
    total = budget.trials + (baseline is not None)
    progress = progress or Progress(total)
    if baseline is not None and not any(t.index == BASELINE_INDEX for t in trials):
        progress.show(len(trials), "engine defaults (baseline)")
        trial = runner(plan, BASELINE_INDEX, baseline, trial_dir(results, BASELINE_INDEX))
        save_trial(results, trial)
        trials.append(trial)
    while len(observations(trials)) < budget.trials:
        if budget.seconds is not None and time.monotonic() - began > budget.seconds:
            progress.show(len(trials), "time budget spent")
            break
        index = strategy.propose(observations(trials))
        if index is None:
            break
        config = candidates[index]
        progress.show(len(trials), f"{_best(trials)}  next: {space.key(config)}")
        trial = runner(plan, index, config, trial_dir(results, index))
        save_trial(results, trial)
        trials.append(trial)
    progress.show(len(trials), _best(trials))
    progress.close()
    return trials


def _best(trials: Sequence[TrialResult]) -> str:
    scored = [t for t in trials if t.status == "ok"]
    if not scored:
        return "best: none yet"
    top = max(scored, key=lambda t: t.score)
    return f"best {top.score:.3g} ({space.key(top.config) or 'defaults'})"


def write_run(results: Path, run: dict[str, Any]) -> None:
    """The run's own arguments, so ``--resume`` and ``--report`` need only the directory."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "run.json").write_text(json.dumps(run, indent=2) + "\n")


def read_run(results: Path) -> dict[str, Any]:
    path = results / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{results} holds no tuning run (no run.json)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def rescore(results: Path, targets: Targets, objective: Objective) -> list[TrialResult]:
    """Score the saved trials again, from their saved requests, against new targets.

    The measurements do not depend on the targets, so trying stricter or looser ones needs no
    new trial: ``vgate tune --report DIR --tpot-p99-ms 30``.
    """
    trials = load_trials(results)
    for trial in trials:
        levels = []
        for level in trial.levels:
            records = load_records(trial_dir(results, trial.index), level.level)
            levels.append(summarise(level.level, records, targets) if records else level)
        trial.levels, trial.score = levels, score(levels, objective, targets) if trial.status == "ok" else 0.0
    (results / TRIALS_FILE).write_text("".join(json.dumps(t.to_json()) + "\n" for t in trials))
    return trials
