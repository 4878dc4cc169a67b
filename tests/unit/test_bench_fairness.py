"""``make bench-fairness``'s pure parts: what counts as a first token, the verdicts, the table."""

from __future__ import annotations

from typing import Any

from bench.fairness import Tally, _has_text, render, verdicts


def test_the_first_token_is_the_first_event_carrying_text() -> None:
    role_only = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}'
    assert not _has_text(role_only)
    assert _has_text(b'data: {"choices":[{"delta":{"content":"Hi"}}]}')


def _phase(ttft: list[float], lost: int = 0) -> dict[str, Any]:
    tally = Tally(
        sent=len(ttft) + lost, ok=len(ttft), lost=lost, ttft=ttft, sent_at=[0.5 * i for i in range(len(ttft))]
    )
    return {"A": tally.summary(), "B": tally.summary(), "H": tally.summary(), "queue": {}}


def test_verdicts_are_ratios_of_the_runs_own_p99s_and_count_every_lost_request() -> None:
    fleet = {
        "capacity_rps": 10.0,
        "phases": {
            "idle": _phase([0.1] * 99 + [0.2]),
            "busy": _phase([0.2] * 100),
            "fair": _phase([0.25] * 100),
            "fair+engine": _phase([0.3] * 100),
            "fair+reserve": _phase([0.15] * 100),
            "fair+prefills": _phase([0.12] * 100),
            "fair+free": _phase([0.11] * 100),
            "fifo": _phase([4.0] * 100, lost=2),
        },
    }
    v = verdicts(fleet)
    assert v["B_p99_fair_vs_idle"] == 0.25 / 0.2
    assert v["B_p99_fifo_vs_idle"] == 4.0 / 0.2
    assert v["B_p99_fair_vs_busy"] == 0.25 / 0.2
    assert v["B_p99_fair_engine_vs_idle"] == 0.3 / 0.2
    assert v["B_answered_all_fair_engine"] is True
    assert v["B_p99_fair_reserve_vs_idle"] == 0.15 / 0.2
    assert v["B_answered_all_fair_reserve"] is True
    assert v["B_p99_fair_prefills_vs_idle"] == 0.12 / 0.2
    assert v["B_p99_fair_free_vs_idle"] == 0.11 / 0.2
    assert v["H_p99_fair_free_vs_idle"] == 0.11 / 0.2
    assert v["requests_lost"] == 2 * 3  # A, B and H each lost two in the fifo phase
    fleet["verdicts"] = v
    table = render({"fleets": {"dry-run": fleet}, "errors": {}})
    assert "| dry-run | 10.0 | fifo | B | 102 | 100 | - | 2 | 4000 ms | 4000 ms |" in table
    assert "| dry-run | fair+free | 0.55x | 0.55x | True |" in table
    assert "| dry-run | fifo | 20.00x | 20.00x | False |" in table


def test_a_run_of_some_phases_judges_only_those() -> None:
    fleet = {"capacity_rps": 10.0, "phases": {"idle": _phase([0.1] * 100), "fair+free": _phase([0.12] * 100)}}
    v = verdicts(fleet)
    assert set(v) == {
        "B_p99_fair_free_vs_idle",
        "H_p99_fair_free_vs_idle",
        "B_answered_all_fair_free",
        "requests_lost",
    }
    fleet["verdicts"] = v
    assert "| dry-run | fair+free | 1.20x | 1.20x | True |" in render(
        {"fleets": {"dry-run": fleet}, "errors": {}}
    )
