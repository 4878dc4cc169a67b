"""What a finished run tells a person: a ranked table, the Pareto front, the winner as a patch.

Everything here is a pure function of the saved trials except the two ``write_*`` functions,
so ``vgate tune --report DIR`` rebuilds the same report from a results directory at any time.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgate.tune import space
from vgate.tune.measure import LevelResult, Objective
from vgate.tune.runner import TrialResult, load_records, trial_dir

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PARETO_PNG = "throughput-vs-ttft.png"
WINNER_PNG = "winner-latency.png"


def ranked(trials: Sequence[TrialResult]) -> list[TrialResult]:
    """Best first: feasible by score, then those meeting no target, then those that did not start."""
    return sorted(trials, key=lambda t: (t.status != "ok", -t.score, t.index))


def best_level(trial: TrialResult) -> LevelResult | None:
    """The heaviest level meeting every target (the score starts there), else the lightest."""
    good = [lv for lv in trial.levels if lv.meets]
    if good:
        return max(good, key=lambda lv: lv.request_rate)
    return trial.levels[0] if trial.levels else None


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other beats on both throughput (higher) and p99 TTFT (lower)."""
    front = []
    for i, (tps, ttft) in enumerate(points):
        dominated = any(
            (t2 >= tps and f2 <= ttft) and (t2 > tps or f2 < ttft)
            for j, (t2, f2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _name(trial: TrialResult) -> str:
    return "engine defaults" if trial.index < 0 else space.key(trial.config)


def table_rows(trials: Sequence[TrialResult], objective: Objective = "goodput") -> list[dict[str, Any]]:
    """One row per trial, best first: settings, latencies at the heaviest level it met, rates, verdict.

    The objective's own column (goodput, or output tokens/s) is the trial's score, which may
    reach past that level towards the next (:func:`vgate.tune.measure.score`); the other is the
    level's.
    """
    rows = []
    for rank, trial in enumerate(ranked(trials), 1):
        lv = best_level(trial)
        met = max((x.request_rate for x in trial.levels if x.meets), default=0.0)
        verdict = "meets targets" if lv and lv.meets else (lv.misses[0] if lv and lv.misses else "")
        rows.append(
            {
                "rank": rank,
                "trial": trial.index,
                "settings": _name(trial),
                "config": trial.config,
                "status": trial.status,
                "level": lv.level if lv else None,
                "ttft_p50": lv.ttft_p50 if lv else None,
                "ttft_p99": lv.ttft_p99 if lv else None,
                "tpot_p50": lv.tpot_p50 if lv else None,
                "tpot_p99": lv.tpot_p99 if lv else None,
                "e2e_p50": lv.e2e_p50 if lv else None,
                "e2e_p99": lv.e2e_p99 if lv else None,
                "output_tps": trial.score if objective == "throughput" else (lv.output_tps if lv else 0.0),
                "goodput": trial.score if objective == "goodput" else met,
                "errors": sum(x.errors for x in trial.levels),
                "score": trial.score,
                "why": trial.reason if trial.status != "ok" else verdict,
                "repeats": trial.repeats,
            }
        )
    return rows


def markdown(run: dict[str, Any], trials: Sequence[TrialResult]) -> str:
    """The ranked table with the run's workload, targets and strategy above it."""
    head = (
        f"Workload {run['scenario']}, {run['sweep_kind']} {', '.join(f'{x:g}' for x in run['levels'])}; "
        f"targets: {run['targets_text']}; objective: {run['objective']}; engine: {run['engine']}; "
        f"strategy: {run['strategy']}, {sum(t.index >= 0 for t in trials)} trials."
    )
    lines = [
        head,
        "",
        "| # | settings | level met | TTFT p50/p99 ms | TPOT p50/p99 ms | E2E p50/p99 ms | out tok/s | goodput req/s | errors | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table_rows(trials, run["objective"]):
        load = "-" if r["level"] is None else f"{r['level']:g}"
        lines.append(
            f"| {r['rank']} | {r['settings']} | {load} | {_ms(r['ttft_p50'])}/{_ms(r['ttft_p99'])} | "
            f"{_ms(r['tpot_p50'])}/{_ms(r['tpot_p99'])} | {_ms(r['e2e_p50'])}/{_ms(r['e2e_p99'])} | "
            f"{r['output_tps']:.1f} | {r['goodput']:.2f} | {r['errors']} | "
            f"{r['status'] if r['status'] != 'ok' else ''}{': ' if r['status'] != 'ok' else ''}{r['why']} |"
        )
    return "\n".join(lines) + "\n"


def winner(trials: Sequence[TrialResult]) -> TrialResult | None:
    """The best trial that meets the targets somewhere (its score is above zero)."""
    top = ranked(trials)
    return top[0] if top and top[0].status == "ok" and top[0].score > 0 else None


def manifest_patch(
    manifest: dict[str, Any] | None, model_name: str, config: space.Config, model_id: str = ""
) -> dict[str, Any]:
    """The manifest with the winner's settings on ``model_name`` (a full object for ``kubectl apply``).

    Settings the CR has a field for set that field; the others (``kv-cache-memory-bytes``)
    replace their flag in the model's ``engineArgs``. Without a manifest, a minimal resource
    to fill in.
    """
    if manifest is None:
        name = re.sub(r"[^a-z0-9]+", "-", model_name.lower().rsplit("/", 1)[-1]).strip("-") or "model"
        manifest = {
            "apiVersion": "vgate.io/v1alpha1",
            "kind": "VGateDeployment",
            "metadata": {"name": "CHANGE-ME"},
            "spec": {"models": [{"name": name[:40], "model": model_id or model_name}]},
        }
        model_name = name[:40]
    patched: dict[str, Any] = json.loads(json.dumps(manifest))
    for model in patched["spec"]["models"]:
        if model.get("name") == model_name:
            model.update(space.cr_fields(config))
            model_args = _replace_flags(model.get("engineArgs", []), config)
            if model_args:
                model["engineArgs"] = model_args
    return patched


def _replace_flags(args: list[str], config: space.Config) -> list[str]:
    """``args`` with each CR-less setting of ``config`` as its flag, any earlier value dropped."""
    extra = {n: v for n, v in config.items() if space.PARAMS[n].cr_field is None}
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0].removeprefix("--")
        if flag in extra:
            skip = "=" not in arg
            continue
        out.append(arg)
    for name, value in extra.items():
        out += space.PARAMS[name].flag(value)
    return out


def write_report(out: Path, run: dict[str, Any], trials: Sequence[TrialResult]) -> str:
    """report.md, report.json and the plots in ``out``; returns the Markdown."""
    text = markdown(run, trials)
    (out / REPORT_MD).write_text(text)
    (out / REPORT_JSON).write_text(
        json.dumps({"run": run, "rows": table_rows(trials, run["objective"])}, indent=2) + "\n"
    )
    write_plots(out, trials)
    return text


def write_plots(out: Path, trials: Sequence[TrialResult]) -> None:
    """Throughput vs p99 TTFT for every measured level (Pareto front marked), the winner's latencies."""
    try:
        import matplotlib
    except ImportError:
        print(
            "vgate tune: no plots: matplotlib is not installed (pip install 'vgate[tune]')", file=sys.stderr
        )
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(lv.output_tps, lv.ttft_p99 or 0.0, t) for t in trials if t.status == "ok" for lv in t.levels]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        ax.scatter(
            [p[1] * 1000 for p in points], [p[0] for p in points], s=18, c="#8aa", label="trial x load level"
        )
        front = sorted((points[i] for i in pareto([(p[0], p[1]) for p in points])), key=lambda p: p[1])
        ax.plot([p[1] * 1000 for p in front], [p[0] for p in front], "o-", c="#c33", label="Pareto front")
    ax.set_xlabel("p99 TTFT (ms)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs p99 time to first token")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / PARETO_PNG, dpi=110)
    plt.close(fig)
    _winner_plot(out, trials, plt)


def _winner_plot(out: Path, trials: Sequence[TrialResult], plt: Any) -> None:
    """Cumulative distributions of the winner's TTFT, TPOT and E2E at the level it scored at."""
    best = winner(trials)
    level = best_level(best) if best is not None else None
    records = load_records(trial_dir(out, best.index), level.level) if best and level else []
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    series = (
        ("TTFT", [r.ttft for r in records if r.error is None and r.ttft is not None]),
        ("TPOT", [t for r in records if r.error is None and (t := r.tpot) is not None]),
        ("E2E", [r.e2e for r in records if r.error is None]),
    )
    for ax, (name, values) in zip(axes, series, strict=True):
        ordered = sorted(v * 1000 for v in values)
        if ordered:
            ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of requests")
    if best is not None and level is not None:
        fig.suptitle(f"Winner {_name(best)} at load {level.level:g}: latency CDFs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / WINNER_PNG, dpi=110)
    plt.close(fig)
