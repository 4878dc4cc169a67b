"""``make bench-proxy``'s pure parts: reading wrk, the canned answers, the table, the profile summary
and the in-process run of the gateway's own layers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.own import measure as measure_own
from bench.proxy import (
    EVENTS,
    _body,
    _chat_json,
    _chat_stream,
    parse_wrk,
    render,
    summarize_profile,
    write_plot,
)

WRK = """\
Running 8s test @ http://127.0.0.1:40000/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.41ms    1.10ms  40.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    2.10ms
     90%    3.20ms
     99%    1.20s
  40000 requests in 8.00s, 20.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   5000.50
Transfer/sec:      2.50MB
"""


def test_wrk_output_is_read_in_milliseconds_with_its_errors() -> None:
    r = parse_wrk(WRK)
    assert r["rps"] == 5000.5
    assert r["p50_ms"] == 0.85
    assert r["p99_ms"] == 1200.0
    assert r["non_2xx"] == 12


def test_canned_streams_are_valid_openai_chunks_ending_in_done() -> None:
    for shape, n in EVENTS.items():
        events = [e for e in _chat_stream(n).split("\n\n") if e]
        assert len(events) == n, shape
        assert events[-1] == "data: [DONE]"
        for e in events[:-1]:
            assert json.loads(e.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_table_gives_added_latency_over_the_nginx_hop_and_same_run_ratios() -> None:
    case = {"rps": 1000.0, "p50_ms": 0.5, "p99_ms": 2.0}
    results = {
        "systems": {
            "nginx": {"json-c1": {**case, "p50_ms": 0.2}, "json-c16": {**case, "rps": 4000.0}},
            "vgate": {"json-c1": case, "json-c16": {**case, "rps": 2000.0}},
            "vllm-router": {"json-c1": case, "json-c16": {**case, "rps": 8000.0}},
        }
    }
    table = render(results)
    vgate_row = next(line for line in table.splitlines() if line.startswith("| vgate "))
    assert "+0.30 ms" in vgate_row
    assert "json-c16 0.25x" in table  # against vllm-router
    assert "json-c16 0.50x" in table  # against nginx


def test_profile_summary_ranks_packages_and_functions_by_samples() -> None:
    raw = "main (a.py:1);f (aiohttp/client.py:10) 30\nmain (a.py:1);g (vgate_gateway/proxy.py:5) 10\n"
    summary = summarize_profile(raw)
    assert "40 samples" in summary
    assert summary.index("aiohttp") < summary.index("vgate_gateway")
    assert "| 75.0% | aiohttp |" in summary


def test_table_splits_the_gateways_own_cpu_from_its_server_and_client() -> None:
    results = {
        "systems": {
            "vgate": {
                "json-c16": {"rps": 4000.0, "p50_ms": 1.0, "p99_ms": 2.0, "sut_cpu_ms_per_request": 0.25}
            },
        },
        "own": {"cpu_us_per_request": 50.0},
    }
    table = render(results)
    assert "| vgate | - | 250 | - | - | - |" in table
    assert "50 us of CPU per request, of 250 us end to end at JSON c=16" in table
    assert "other 200 us" in table


def test_the_baseline_commit_is_set_beside_this_tree_figure_by_figure() -> None:
    json16 = {"rps": 4000.0, "p50_ms": 1.0, "p99_ms": 2.0, "sut_cpu_ms_per_request": 0.25}
    results = {
        "systems": {
            "vgate": {"json-c16": json16},
            "vgate-baseline": {"json-c16": {**json16, "rps": 3000.0, "sut_cpu_ms_per_request": 0.3}},
        },
        "own": {"cpu_us_per_request": 40.0},
        "own_baseline": {"cpu_us_per_request": 80.0},
        "baseline": {"ref": "main~1", "commit": "0123456789abcdef"},
    }
    table = render(results)
    assert "This tree against main~1 (0123456789), same run:" in table
    assert "| own layers, CPU us/request (in-process) | 80.0 | 40.0 | 0.50x |" in table
    assert "| json-c16 rps | 3,000 | 4,000 | 1.33x |" in table
    assert "| json-c16 CPU us/request | 300 | 250 | 0.83x |" in table


async def test_the_in_process_run_answers_every_request_through_the_shipped_app() -> None:
    body = _body(False).encode()
    result = await measure_own(body, _chat_json().encode(), requests=50)
    assert result["requests"] == 50
    assert result["cpu_us_per_request"] > 0


def test_the_plot_is_a_png_of_every_system_and_case(tmp_path: Path) -> None:
    case = {"rps": 1000.0, "p50_ms": 0.5, "p99_ms": 2.0, "sut_cpu_ms_per_request": 0.25}
    results = {
        "systems": {
            "vgate": {"json-c1": case, "sse-c16": {**case, "rps": 500.0}},
            "nginx": {"json-c1": {**case, "sut_cpu_ms_per_request": 0.02}},  # a case it did not run
        }
    }
    path = tmp_path / "proxy.png"
    write_plot(results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
