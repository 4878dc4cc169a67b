"""The upstream pool reconciles discovery snapshots; the router picks or refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.body import parse_request
from vgate_gateway.protocol import Kind, Request
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.routing import Router

DEFAULTS = GatewaySettings()


def _pool() -> UpstreamPool:
    return UpstreamPool(eject_after=DEFAULTS.eject_after_failures, panic_threshold=DEFAULTS.panic_threshold)


def _router(pool: UpstreamPool, default: str, per_model: dict[str, str] | None = None, **kw: Any) -> Router:
    """A router configured as the gateway's defaults configure it, but for ``kw``."""
    options = {"session_header": DEFAULTS.session_header, "retry_after_s": DEFAULTS.retry_after_s, **kw}
    return Router(pool, default, per_model, **options)


def _healthy_pool(*urls: str, model: str = "m") -> UpstreamPool:
    pool = _pool()
    pool.replace([DiscoveredEndpoint(u) for u in urls])
    for u in pool.all():
        pool.passed(u, frozenset({model}))
    return pool


def _req(model: str = "m", user: str | None = None, headers: dict[str, str] | None = None) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    if user:
        body["user"] = user
    return parse_request(Kind.CHAT, json.dumps(body).encode(), headers=headers)


def test_snapshot_adds_updates_and_forgets() -> None:
    pool = _healthy_pool("http://a:1", "http://b:1/")
    b = pool.get("http://b:1")
    assert b is not None
    assert b.url == "http://b:1"
    b.inflight = 3
    pool.replace([DiscoveredEndpoint("http://b:1", terminating=True), DiscoveredEndpoint("http://c:1")])
    assert [u.url for u in pool.all()] == ["http://b:1", "http://c:1"]
    assert pool.get("http://b:1") is b
    assert b.inflight == 3
    assert pool.routable("m") == []  # b drains, c is not checked yet
    assert pool.known_model("m")


def test_new_endpoints_are_not_routable_until_healthy() -> None:
    pool = _pool()
    pool.replace([DiscoveredEndpoint("http://a:1", models=frozenset({"m"}))])
    assert pool.routable("m") == []
    assert pool.models() == []
    pool.passed(pool.all()[0], frozenset())
    assert [u.url for u in pool.routable("m")] == ["http://a:1"]
    assert pool.models() == ["m"]


def test_declared_models_win_over_served_ones() -> None:
    pool = _healthy_pool("http://a:1", model="served")
    pool.replace([DiscoveredEndpoint("http://a:1", models=frozenset({"declared"}))])
    assert pool.models() == ["declared"]


def test_router_round_robin_excludes_tried_endpoints() -> None:
    router = _router(_healthy_pool("http://a:1", "http://b:1"), "round-robin")
    picks = [router.pick(_req()).url for _ in range(4)]
    assert picks == ["http://a:1", "http://b:1", "http://a:1", "http://b:1"]
    assert router.pick(_req(), exclude=["http://a:1"]).url == "http://b:1"


def test_unknown_model_is_404_model_not_found() -> None:
    router = _router(_healthy_pool("http://a:1"), "round-robin")
    with pytest.raises(OpenAIError) as info:
        router.pick(_req("nope"))
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")


def test_known_model_without_healthy_worker_is_503_with_retry_after() -> None:
    pool = _pool()
    pool.replace([DiscoveredEndpoint("http://a:1", models=frozenset({"m"}))])  # never passed a check
    router = _router(pool, "least-request", retry_after_s=2)
    with pytest.raises(OpenAIError) as info:
        router.pick(_req())
    assert info.value.status == 503
    assert info.value.headers["Retry-After"] == "2"


def test_per_model_strategy_and_unknown_names() -> None:
    router = _router(_pool(), "least-request", {"big": "round-robin"})
    assert router.strategy_name("big") == "round-robin"
    assert router.strategy_name("small") == "least-request"
    with pytest.raises(ValueError, match="unknown routing strategy"):
        _router(_pool(), "no-such-thing")


def test_a_declared_model_without_endpoints_is_503_not_404() -> None:
    """Mid-rollout, a model the deployment serves has no worker yet: retry, don't give up."""
    router = _router(_pool(), "least-request", declared_models={"m"})
    with pytest.raises(OpenAIError) as info:
        router.pick(_req())
    assert (info.value.status, info.value.code) == (503, "no_healthy_upstream")
    with pytest.raises(OpenAIError) as info:
        router.pick(_req("other"))
    assert info.value.status == 404


def test_router_builds_the_route_request_from_the_session_header_or_user() -> None:
    router = _router(_pool(), "session", session_header="X-Session-Id")
    route = router.route_request(_req(user="alice", headers={"x-session-id": "s1"}))
    assert (route.model, route.session_key) == ("m", "s1")
    assert route.prompt == "<user>\nx"
    assert router.route_request(_req(user="alice")).session_key == "alice"
    assert router.route_request(_req()).session_key is None


def test_ejection_needs_failures_in_a_row_and_a_success_resets_the_count() -> None:
    pool = _healthy_pool("http://a:1", "http://b:1", "http://c:1")
    pool.eject_after = 3
    a = pool.get("http://a:1")
    assert a is not None
    pool.failed(a)
    pool.failed(a)
    pool.passed(a)  # a request that worked
    pool.failed(a)
    pool.failed(a)
    assert [u.url for u in pool.routable("m")] == ["http://a:1", "http://b:1", "http://c:1"]
    assert pool.failed(a)
    assert [u.url for u in pool.routable("m")] == ["http://b:1", "http://c:1"]
    pool.passed(a)  # traffic alone does not readmit: only a passing probe does
    assert not a.healthy
    pool.passed(a, frozenset({"m"}))
    assert a.healthy


def test_panic_routes_to_the_whole_fleet_when_more_than_half_is_out() -> None:
    pool = _healthy_pool("http://a:1", "http://b:1", "http://c:1", "http://d:1")
    pool.eject_after = 1
    ups = pool.all()
    pool.failed(ups[0])
    pool.failed(ups[1])  # half out: not yet panic
    assert (len(pool.routable("m")), pool.candidates("m")[1]) == (2, False)
    pool.failed(ups[2])  # three of four out
    chosen, panic = pool.candidates("m")
    assert panic
    assert [u.url for u in chosen] == [u.url for u in ups]
    pool.passed(ups[0], frozenset({"m"}))
    assert (len(pool.routable("m")), pool.candidates("m")[1]) == (2, False)
