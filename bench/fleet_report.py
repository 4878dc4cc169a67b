"""The fleet benchmark's report: raw measurements → the summary, the Markdown table and the plot.

Every duration is measured in compressed seconds and reported in both: uncompressed (the
trace as a user lives it: multiply by the compression factor) first, compressed in brackets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.fleet_trace import (
    Trace,
    oracle_schedule,
    percentile,
    replica_seconds,
    standard_trace,
    wait_quantile,
)
from vgate_operator.autoscale.policy import PolicySettings

#: Targets for every elastic system (the second and third as ratios in the same run).
MAX_VS_ORACLE = 1.3
MAX_VS_STATIC_PEAK = 0.5
#: Uncompressed seconds the first token from zero may take beyond the worker's own start.
FIRST_TOKEN_SLACK_S = 2.0


def _steps(bill: Sequence[Sequence[float]]) -> list[tuple[float, int]]:
    """The bill's samples as a step function starting at 0 (the state at the first sample holds before it)."""
    steps: list[tuple[float, int]] = []
    for t, n in bill:
        if not steps:
            steps.append((min(0.0, float(t)), int(n)))
        elif steps[-1][1] != int(n):
            steps.append((float(t), int(n)))
    return steps


def _system(raw: dict[str, Any], trace: Trace, f: float) -> dict[str, Any]:
    outcomes = raw["outcomes"]
    ok = [o for o in outcomes if o["result"] == "ok"]
    ttfts = [o["ttft_s"] for o in ok]
    steps = _steps(raw["bill"])
    bill_c = replica_seconds(steps, trace.seconds)
    waits = {q: wait_quantile(raw["wait_buckets"], len(ok), q) for q in (0.5, 0.99)}

    def both(value: float | None) -> dict[str, float | None]:
        return {"s": None if value is None else round(value * f, 3), "compressed_s": value}

    summary: dict[str, Any] = {
        "requests": len(outcomes),
        "ok": len(ok),
        "refused": sum(o["result"] == "refused" for o in outcomes),
        "failed": sum(o["result"] == "failed" for o in outcomes),
        "problems": sorted({o["detail"] for o in outcomes if o["result"] != "ok"})[:5],
        "queue_refused": raw["queue_refused"],
        "replica_seconds": both(bill_c),
        "max_replicas": max((n for _, n in steps), default=0),
        "ttft_p50": both(percentile(ttfts, 0.5)),
        "ttft_p99": both(percentile(ttfts, 0.99)),
        "queue_wait_p50": both(waits[0.5]),
        "queue_wait_p99": both(waits[0.99]),
        "waited": raw["wait_buckets"][-1][1] if raw["wait_buckets"] else 0,
        "bill_steps": [[round(t * f, 2), n] for t, n in steps],
        "requests_series": [
            [round(o["at"] * f, 2), None if o["ttft_s"] is None else round(o["ttft_s"] * f, 3), o["result"]]
            for o in outcomes
        ],
        "timeline": [[round(r[0] * f, 2), *r[1:]] for r in raw["timeline"]],
    }
    if raw["system"].startswith("elastic"):
        first = outcomes[0] if outcomes else None
        start = raw["worker_starts"][0] if raw["worker_starts"] else None
        summary["first_token_from_zero"] = both(first["ttft_s"] if first else None)
        summary["first_worker_start"] = both(start["start_s"] if start else None)
        summary["worker_starts"] = [{k: round(v * f, 2) for k, v in s.items()} for s in raw["worker_starts"]]
        summary["decisions"] = [[round(t * f, 1), text] for t, text in raw["decisions"]]
    return summary


def _targets(name: str, s: dict[str, Any], systems: dict[str, Any]) -> dict[str, Any]:
    bill = s["replica_seconds"]["s"]
    out: dict[str, Any] = {
        "zero_failed": {"value": s["refused"] + s["failed"], "met": s["refused"] + s["failed"] == 0}
    }
    if "oracle" in systems:
        ratio = bill / systems["oracle"]["replica_seconds"]["s"]
        out["vs_oracle"] = {"value": round(ratio, 3), "limit": MAX_VS_ORACLE, "met": ratio <= MAX_VS_ORACLE}
    if "static-peak" in systems:
        ratio = bill / systems["static-peak"]["replica_seconds"]["s"]
        out["vs_static_peak"] = {
            "value": round(ratio, 3),
            "limit": MAX_VS_STATIC_PEAK,
            "met": ratio <= MAX_VS_STATIC_PEAK,
        }
    first, start = s["first_token_from_zero"]["s"], s["first_worker_start"]["s"]
    if first is not None and start is not None:
        limit = start + FIRST_TOKEN_SLACK_S
        out["first_token_from_zero"] = {"value": first, "limit": round(limit, 3), "met": first <= limit}
    return out


def summarize(
    cfg: dict[str, Any], trace: Trace, capacity: float, overhead: float, raw: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The results document: configuration, capacity, each system's figures, the targets."""
    f = float(cfg["compress"])
    systems = {r["system"]: _system(r, trace, f) for r in raw}
    oracle_c = replica_seconds(oracle_schedule(trace), trace.seconds)
    return {
        "config": cfg,
        "trace": {
            "seconds": trace.seconds * f,
            "compressed_seconds": trace.seconds,
            "phases": [[name, round(at * f, 1)] for name, at in trace.boundaries()],
            "mean_demand_workers": round(trace.mean(), 3),
        },
        "capacity_rps": {"per_s": capacity / f, "compressed_per_s": capacity},
        "worker_process_start_s": {"s": overhead * f, "compressed_s": overhead},
        "oracle_schedule_replica_seconds": oracle_c * f,
        "systems": systems,
        "targets": {n: _targets(n, s, systems) for n, s in systems.items() if n.startswith("elastic")},
    }


#: Per-request and per-sample series: one line each in the JSON file, the rest indented.
_SERIES = ("bill_steps", "requests_series", "timeline", "decisions", "worker_starts")


def to_json(results: dict[str, Any]) -> str:
    """The results as indented JSON, each long series on a line of its own."""
    compact: dict[str, str] = {}
    systems = {}
    for name, s in results["systems"].items():
        systems[name] = dict(s)
        for key in _SERIES:
            if key in s:
                marker = f"@@{name}/{key}@@"
                compact[f'"{marker}"'] = json.dumps(s[key], ensure_ascii=False, separators=(",", ":"))
                systems[name][key] = marker
    text = json.dumps({**results, "systems": systems}, indent=1, ensure_ascii=False)
    for marker, value in compact.items():
        text = text.replace(marker, value)
    return text + "\n"


def _fmt(both: dict[str, float | None]) -> str:
    s, c = both["s"], both["compressed_s"]
    return "-" if s is None or c is None else f"{s:.2f} s ({c:.3f})"


def _tuned_line(config: dict[str, Any], systems: dict[str, Any]) -> list[str]:
    """What ``elastic-tuned`` changed from the policy's defaults (uncompressed seconds)."""
    if "elastic-tuned" not in systems:
        return []
    d = PolicySettings(min_replicas=0, max_replicas=1, target_per_replica=1)
    chosen = [
        ("stableWindowSeconds", config.get("tuned_stable_window_s"), d.stable_window_s),
        ("scaleDownDelaySeconds", config.get("tuned_scale_down_delay_s"), d.scale_down_delay_s),
        ("scaleToZeroDelaySeconds", config.get("tuned_scale_to_zero_delay_s"), d.scale_to_zero_delay_s),
    ]
    parts = [f"{name} {value if value is not None else default:g}" for name, value, default in chosen]
    defaults = "/".join(f"{default:g}" for _, _, default in chosen)
    return [f"elastic-tuned: {', '.join(parts)} (elastic: the defaults, {defaults}).", ""]


def render_markdown(results: dict[str, Any], png: str) -> str:
    """The table (uncompressed seconds, compressed in brackets), the targets and the plot's name."""
    f = results["config"]["compress"]
    systems = results["systems"]
    peak = systems.get("static-peak", {}).get("replica_seconds", {}).get("s")
    lines = [
        f"Trace {results['trace']['seconds']:.0f} s compressed {f:g}x to {results['trace']['compressed_seconds']:.0f} s; "
        f"one worker's capacity {results['capacity_rps']['per_s']:.3f} req/s "
        f"({results['capacity_rps']['compressed_per_s']:.2f} compressed), measured in the same run.",
        "",
        *_tuned_line(results["config"], systems),
        "| system | replicas | replica-seconds | vs static-peak | TTFT p50 | TTFT p99 | queue wait p50 | queue wait p99 | requests | refused | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in systems.items():
        bill = s["replica_seconds"]["s"]
        ratio = f"{bill / peak:.2f}" if peak else "-"
        lines.append(
            f"| {name} | ≤{s['max_replicas']} | {bill:,.0f} ({s['replica_seconds']['compressed_s']:,.1f}) | {ratio} | "
            f"{_fmt(s['ttft_p50'])} | {_fmt(s['ttft_p99'])} | {_fmt(s['queue_wait_p50'])} | {_fmt(s['queue_wait_p99'])} | "
            f"{s['requests']} | {s['refused']} | {s['failed']} |"
        )
    lines += ["", "| elastic system | target | measured | limit | met |", "|---|---|---|---|---|"]
    for name, targets in results["targets"].items():
        for key, t in targets.items():
            lines.append(
                f"| {name} | {key} | {t['value']} | {t.get('limit', 0)} | {'yes' if t['met'] else 'NO'} |"
            )
    for name, s in systems.items():
        if "first_token_from_zero" in s:
            lines.append(
                f"\n{name}: first token from zero {_fmt(s['first_token_from_zero'])}, "
                f"its worker started in {_fmt(s['first_worker_start'])}"
            )
    lines += ["", f"![replicas and TTFT over time]({png})", ""]
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Replicas (billed) and demand over time per system; TTFT over time below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    end = results["trace"]["seconds"] / 60
    phases = results["trace"]["phases"]
    demand = _demand_curve(results["config"]["trace_scale"])
    top.plot(
        [t for t, _ in demand], [d for _, d in demand], "k--", lw=1.5, label="demand (workers' capacity)"
    )
    for i, (name, s) in enumerate(systems.items()):
        xs, ys = [], []
        for t, n in s["bill_steps"]:
            if xs:
                xs.append(t / 60)
                ys.append(ys[-1])
            xs.append(max(0.0, t / 60))
            ys.append(n)
        xs.append(end)
        ys.append(ys[-1] if ys else 0)
        top.plot(xs, [y + 0.03 * i for y in ys], lw=1.6, label=f"{name} (billed replicas)")
        points = [
            (a / 60, ttft) for a, ttft, result in s["requests_series"] if ttft is not None and result == "ok"
        ]
        bottom.scatter([p[0] for p in points], [p[1] for p in points], s=3, alpha=0.4, label=name)
    for name, at in phases:
        for ax in (top, bottom):
            ax.axvline(at / 60, color="0.85", lw=0.8, zorder=0)
        top.text(at / 60 + 0.1, 4.35, name, fontsize=8, color="0.4")
    top.set_ylabel("workers")
    top.set_ylim(-0.2, 4.6)
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"V-Gate fleet benchmark: one trace, {len(systems)} fleets (times uncompressed)")
    bottom.set_yscale("log")
    bottom.set_ylabel("TTFT (s)")
    bottom.set_xlabel("minutes into the trace")
    bottom.legend(loc="upper right", fontsize=8, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _demand_curve(trace_scale: float) -> list[tuple[float, float]]:
    """The trace's demand as (minutes, workers) corner points, uncompressed."""
    points: list[tuple[float, float]] = []
    begin = 0.0
    for p in standard_trace().scaled(trace_scale).phases:
        points += [(begin / 60, p.start), ((begin + p.seconds) / 60, p.end)]
        begin += p.seconds
    return points
