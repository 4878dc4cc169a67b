"""The recent-errors ring and the per-model fleet gauges: pure, no process."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.recent_errors import CAPACITY, MAX_MODEL_CHARS, RecentErrors, error_code
from vgate_gateway.ops.fleet_metrics import FleetCollector
from vgate_gateway.ops.status_page.route import page
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool


def test_the_ring_keeps_the_newest_errors_and_counts_them_all() -> None:
    ring = RecentErrors()
    body = orjson.dumps(OpenAIError(404, "no", code="model_not_found").body())
    for i in range(CAPACITY + 10):
        ring.record(404, body, f"m{i}", "/v1/chat/completions")
    ring.record(503, None, None, "/v1/whatever")
    snap = ring.snapshot()
    assert len(snap["recent"]) == CAPACITY
    assert snap["total_by_status"] == {"404": CAPACITY + 10, "503": 1}
    newest = snap["recent"][0]
    assert (newest["status"], newest["code"], newest["model"], newest["endpoint"]) == (
        503,
        None,
        None,
        "other",
    )
    assert snap["recent"][1]["model"] == f"m{CAPACITY + 9}"
    assert snap["recent"][1]["code"] == "model_not_found"


def test_an_error_code_comes_only_from_an_openai_error_body() -> None:
    assert error_code(b'{"error": {"message": "m", "type": "server_error", "code": null}}') == "server_error"
    assert error_code(b'{"status": "starting"}') is None
    assert error_code(b"not json") is None
    assert error_code(b"[1, 2]") is None
    assert error_code(None) is None


def test_a_client_chosen_model_name_is_cut_short() -> None:
    ring = RecentErrors()
    ring.record(404, None, "x" * 10_000, "/v1/completions")
    assert len(ring.snapshot()["recent"][0]["model"]) == MAX_MODEL_CHARS


def _gauges(collector: FleetCollector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {
        (s.name, s.labels["model"]): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def test_fleet_gauges_count_each_models_known_and_healthy_workers() -> None:
    pool = UpstreamPool(eject_after=1, panic_threshold=0.5)
    pool.replace([DiscoveredEndpoint(f"http://w{i}:8000", frozenset({"a"})) for i in range(3)])
    ups = pool.all()
    for up in ups:
        pool.passed(up, frozenset({"a"}))
    pool.failed(ups[0])  # ejected
    gauges = _gauges(FleetCollector(pool, declared_models=["a", "gone"]))
    assert gauges == {
        ("vgate_model_upstreams", "a"): 3,
        ("vgate_model_healthy_upstreams", "a"): 2,
        # A declared model with no worker at all reads 0: the alert sees it.
        ("vgate_model_upstreams", "gone"): 0,
        ("vgate_model_healthy_upstreams", "gone"): 0,
    }


def test_the_page_is_self_contained() -> None:
    html = page()
    assert 'fetch("/stats"' in html
    # Works offline: nothing is loaded from another origin.
    assert "http://" not in html
    assert "https://" not in html
