"""EndpointSlice objects -> discovered endpoints, as data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vgate_gateway.discovery.kubernetes import (
    KubernetesDiscovery,
    build_snapshot,
    endpoint_url,
    label_selector,
    resolve_namespace,
    slice_endpoints,
    slice_port,
)
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.pool import DiscoveredEndpoint

QWEN = frozenset({"qwen"})


def endpoint(*addresses: str, **conditions: bool | None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": list(addresses)}
    if conditions:
        ep["conditions"] = {k: v for k, v in conditions.items() if v is not None}
    return ep


def eps(
    name: str,
    service: str | None,
    *endpoints: dict[str, Any],
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ai", "labels": labels},
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
    }


@pytest.mark.parametrize(
    ("conditions", "ready", "terminating"),
    [
        ({"ready": True, "serving": True, "terminating": False}, True, False),
        ({}, True, False),  # no conditions at all: ready is unknown, read as ready
        ({"serving": True}, True, False),
        ({"ready": None, "terminating": None}, True, False),
        ({"ready": False, "serving": False, "terminating": False}, False, False),
        ({"ready": False, "serving": True, "terminating": True}, False, True),
        ({"ready": False, "serving": False, "terminating": True}, False, True),
    ],
)
def test_conditions(conditions: dict[str, bool | None], ready: bool, terminating: bool) -> None:
    got = slice_endpoints(eps("s1", "svc", endpoint("10.0.0.1", **conditions)), QWEN)
    assert got == [
        DiscoveredEndpoint(url="http://10.0.0.1:8000", models=QWEN, ready=ready, terminating=terminating)
    ]


def test_every_address_of_an_endpoint_is_listed() -> None:
    got = slice_endpoints(eps("s1", "svc", endpoint("10.0.0.1", "10.0.0.2")), QWEN)
    assert [e.url for e in got] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([{"name": "metrics", "port": 9100}, {"name": "http", "port": 8000}], 8000),
        ([{"name": "grpc", "port": 9000}, {"name": "metrics", "port": 9100}], 9000),
        ([{"port": 8080}], 8080),
        ([{"name": "", "port": 8081, "protocol": "TCP"}], 8081),
        ([{"name": "http"}, {"name": "web", "port": 7000}], 7000),  # a port without a number is unusable
        ([], None),
    ],
)
def test_port_choice(ports: list[dict[str, Any]], expected: int | None) -> None:
    assert slice_port(eps("s1", "svc", ports=ports)) == expected


def test_slice_without_ports_yields_nothing() -> None:
    s = eps("s1", "svc", endpoint("10.0.0.1"), ports=[])
    s["ports"] = None
    assert slice_endpoints(s, QWEN) == []


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("10.1.2.3", "http://10.1.2.3:8000"),
        ("fd00::1", "http://[fd00::1]:8000"),
        ("2001:db8:0:0:0:0:2:1", "http://[2001:db8:0:0:0:0:2:1]:8000"),
        ("worker-0.workers.ai.svc", "http://worker-0.workers.ai.svc:8000"),
    ],
)
def test_endpoint_url(address: str, url: str) -> None:
    assert endpoint_url(address, 8000) == url


def test_ipv6_slice() -> None:
    got = slice_endpoints(eps("s6", "svc", endpoint("fd00::7"), address_type="IPv6"), QWEN)
    assert [e.url for e in got] == ["http://[fd00::7]:8000"]


def test_snapshot_merges_several_slices_of_a_service_and_sorts() -> None:
    slices = [
        eps("svc-b", "svc", endpoint("10.0.0.3"), endpoint("10.0.0.2", ready=False)),
        eps("svc-a", "svc", endpoint("10.0.0.1")),
    ]
    assert build_snapshot(slices, {"qwen": "svc"}) == [
        DiscoveredEndpoint(url="http://10.0.0.1:8000", models=QWEN),
        DiscoveredEndpoint(url="http://10.0.0.2:8000", models=QWEN, ready=False),
        DiscoveredEndpoint(url="http://10.0.0.3:8000", models=QWEN),
    ]


def test_unknown_and_unlabelled_services_are_ignored() -> None:
    slices = [
        eps("kube-dns-x", "kube-dns", endpoint("10.0.0.10")),
        eps("orphan", None, endpoint("10.0.0.11")),
        eps("svc-a", "svc", endpoint("10.0.0.1")),
    ]
    assert [e.url for e in build_snapshot(slices, {"qwen": "svc"})] == ["http://10.0.0.1:8000"]


def test_address_in_two_models_slices_serves_both() -> None:
    slices = [
        eps("chat-1", "chat", endpoint("10.0.0.1"), endpoint("10.0.0.2")),
        eps("code-1", "code", endpoint("10.0.0.1")),
    ]
    got = build_snapshot(slices, {"qwen-chat": "chat", "qwen-coder": "code"})
    assert got == [
        DiscoveredEndpoint(url="http://10.0.0.1:8000", models=frozenset({"qwen-chat", "qwen-coder"})),
        DiscoveredEndpoint(url="http://10.0.0.2:8000", models=frozenset({"qwen-chat"})),
    ]


def test_one_service_serving_two_model_names() -> None:
    got = build_snapshot([eps("s", "svc", endpoint("10.0.0.1"))], {"a": "svc", "b": "svc"})
    assert got == [DiscoveredEndpoint(url="http://10.0.0.1:8000", models=frozenset({"a", "b"}))]


def test_disagreeing_slices_read_conservatively() -> None:
    slices = [
        eps("old", "svc", endpoint("10.0.0.1", ready=False, terminating=True)),
        eps("new", "svc", endpoint("10.0.0.1", ready=True)),
    ]
    assert build_snapshot(slices, {"qwen": "svc"}) == [
        DiscoveredEndpoint(url="http://10.0.0.1:8000", models=QWEN, ready=False, terminating=True)
    ]


def test_same_address_on_different_ports_are_different_endpoints() -> None:
    slices = [
        eps("a", "svc-a", endpoint("10.0.0.1")),
        eps("b", "svc-b", endpoint("10.0.0.1"), ports=[{"name": "http", "port": 8001}]),
    ]
    got = build_snapshot(slices, {"m1": "svc-a", "m2": "svc-b"})
    assert [(e.url, e.models) for e in got] == [
        ("http://10.0.0.1:8000", frozenset({"m1"})),
        ("http://10.0.0.1:8001", frozenset({"m2"})),
    ]


def pod_endpoint(address: str, pod: str, **conditions: bool | None) -> dict[str, Any]:
    ep = endpoint(address, **conditions)
    ep["targetRef"] = {"kind": "Pod", "namespace": "ai", "name": pod, "uid": f"uid-{pod}"}
    return ep


def test_a_dual_stack_pod_is_one_upstream_at_its_ipv4_address() -> None:
    # A dual-stack Service has one slice per address family, each listing every pod.
    slices = [
        eps("svc-v6", "svc", pod_endpoint("fd00::1", "w-0"), pod_endpoint("fd00::2", "w-1", ready=False),
            address_type="IPv6"),
        eps("svc-v4", "svc", pod_endpoint("10.0.0.1", "w-0"), pod_endpoint("10.0.0.2", "w-1")),
    ]  # fmt: skip
    assert build_snapshot(slices, {"qwen": "svc"}) == [
        DiscoveredEndpoint(url="http://10.0.0.1:8000", models=QWEN),
        # One slice says not ready: the pod is not ready (the conservative reading).
        DiscoveredEndpoint(url="http://10.0.0.2:8000", models=QWEN, ready=False),
    ]
    # An IPv6-only Service's pods keep their IPv6 address.
    only_v6 = [eps("svc-v6", "svc", pod_endpoint("fd00::1", "w-0"), address_type="IPv6")]
    assert [e.url for e in build_snapshot(only_v6, {"qwen": "svc"})] == ["http://[fd00::1]:8000"]


def test_pods_without_a_target_ref_are_told_apart_by_address() -> None:
    slices = [eps("s", "svc", endpoint("10.0.0.1"), endpoint("10.0.0.2"), pod_endpoint("10.0.0.1", "w-0"))]
    got = build_snapshot(slices, {"qwen": "svc"})
    assert [e.url for e in got] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


def test_empty_inputs_give_an_empty_snapshot() -> None:
    assert build_snapshot([], {"qwen": "svc"}) == []
    assert build_snapshot([eps("s", "svc")], {"qwen": "svc"}) == []


def test_label_selector_is_sorted_and_deduplicated() -> None:
    assert label_selector(["b", "a", "b"]) == "kubernetes.io/service-name in (a,b)"


def test_namespace_resolution(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert resolve_namespace("ai", sa) == "ai"
    assert resolve_namespace(None, sa) == "default"
    sa.write_text("serving\n")
    assert resolve_namespace(None, sa) == "serving"
    assert resolve_namespace("", sa) == "serving"


def test_from_settings() -> None:
    settings = GatewaySettings(
        discovery="kubernetes", services={"qwen": "workers"}, namespace="ai", resync_interval_s=7
    )
    source = KubernetesDiscovery.from_settings(settings)
    assert (source.services, source.namespace, source.resync_interval_s) == ({"qwen": "workers"}, "ai", 7)


def test_no_services_is_refused() -> None:
    with pytest.raises(ValueError, match="model -> Service"):
        KubernetesDiscovery({}, None, 30)
