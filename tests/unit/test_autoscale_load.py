"""Which gateway pods the autoscaler asks, and how their answers add up."""

from __future__ import annotations

from typing import Any

from vgate_operator.autoscale.load import gateway_urls, parse_report, total_load


def piece(*endpoints: tuple[str, dict[str, Any]], port: int = 8081) -> dict[str, Any]:
    return {
        "ports": [{"name": "http", "port": 8000}, {"name": "internal", "port": port}],
        "endpoints": [{"addresses": [a], "conditions": c} for a, c in endpoints],
    }


def test_ready_and_still_serving_gateways_are_asked_on_the_internal_port() -> None:
    slices = [
        piece(
            ("10.0.0.1", {"ready": True}),
            ("10.0.0.2", {"ready": False, "serving": True, "terminating": True}),  # draining: holds requests
            ("10.0.0.3", {"ready": False, "serving": False}),  # starting: not asked
            ("10.0.0.4", {}),  # unknown readiness reads as ready (the API's rule)
        ),
        piece(("fd00::5", {"ready": True})),
        {
            "ports": [{"name": "http", "port": 8000}],
            "endpoints": [{"addresses": ["10.0.0.9"]}],
        },  # no internal port
    ]
    assert gateway_urls(slices) == [
        "http://10.0.0.1:8081/load",
        "http://10.0.0.2:8081/load",
        "http://10.0.0.4:8081/load",
        "http://[fd00::5]:8081/load",
    ]


def test_load_is_summed_per_model_over_the_gateways_that_answered() -> None:
    answers = [
        {"timestamp": 1.0, "models": {"qwen": {"inflight": 3, "queued": 2, "ready_workers": 1}}},
        {"timestamp": 1.0, "models": {"qwen": {"inflight": 1}, "other": {"queued": 9}}},
        {"timestamp": 1.0, "models": {}},
    ]
    reports = [r for r in map(parse_report, answers) if r is not None]
    assert len(reports) == 3
    assert total_load(reports, ["qwen", "llama"]) == {"qwen": 6.0, "llama": 0.0}


def test_an_answer_that_is_not_a_report_counts_as_no_answer() -> None:
    assert parse_report({"models": {}}) is None  # no timestamp
    assert parse_report({"timestamp": 1, "models": {"qwen": {"inflight": "many"}}}) is None
    assert parse_report(["not", "an", "object"]) is None
