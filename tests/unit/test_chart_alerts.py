"""The chart's PrometheusRule and the operator's metrics endpoint, as rendered by Helm.

What the alerts do is proven by promtool (tests/integration/test_alert_rules.py); here, that
the values reach the rules and that the operator's metrics are scraped where they are served.
"""

from __future__ import annotations

from typing import Any

from hack.chart_lint import ALL_ON
from tests.support.alert_rules import alert_rules
from tests.support.chart import by_kind, render
from vgate.monitoring import METRICS_PATH, Targets, scrape_config

ALERTS = {
    "VGateGatewayErrorRatioHigh",
    "VGateModelUnavailable",
    "VGateTimeToFirstTokenHigh",
    "VGateQueueWaitHigh",
    "VGateWorkerOutOfRotation",
    "VGateWorkerEjections",
    "VGateAdmissionRefusing",
    "VGateKVCacheNearFull",
    "VGateRateLimitRedisDown",
    "VGateOperatorReconcileFailing",
}


def test_the_rule_is_off_by_default_and_carries_the_selection_labels() -> None:
    assert not by_kind(render(), "PrometheusRule")
    (rule,) = by_kind(
        render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}}),
        "PrometheusRule",
    )
    assert rule["metadata"]["labels"]["release"] == "kps"


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    rules = alert_rules()
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["runbook"]) > 80, f"{name}: the runbook should say what to check"


def test_thresholds_and_durations_come_from_the_values() -> None:
    values: dict[str, Any] = {
        "alerts": {
            "timeToFirstToken": {"threshold": 0.75, "for": "3m", "severity": "critical"},
            "kvCacheNearFull": {"threshold": 0.8, "for": "1m", "severity": "warning"},
        }
    }
    rules = alert_rules(values)
    ttft = rules["VGateTimeToFirstTokenHigh"]
    assert ttft["expr"].rstrip().endswith("> 0.75")
    assert (ttft["for"], ttft["labels"]["severity"]) == ("3m", "critical")
    assert rules["VGateKVCacheNearFull"]["expr"].rstrip().endswith("> 0.8")
    # The others keep their defaults.
    assert rules["VGateQueueWaitHigh"]["expr"].rstrip().endswith("> 5")


def test_the_operator_serves_its_metrics_where_its_pod_monitor_scrapes() -> None:
    docs = render(ALL_ON)
    operator = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-operator"))
    container = operator["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    host, port_text = args[args.index("--metrics") + 1].rsplit(":", 1)
    port = int(port_text)
    assert host == "0.0.0.0"  # the PodMonitor reaches it on the pod's address
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    (monitor,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-operator")]
    assert (
        monitor["spec"]["podMetricsEndpoints"][0] | {"port": "metrics", "path": "/metrics"}
        == monitor["spec"]["podMetricsEndpoints"][0]
    )
    labels = operator["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_local_prometheus_scrapes_what_the_chart_monitors_scrape() -> None:
    """``vgate dev --monitoring`` and the dashboard tests read what a cluster's Prometheus reads."""
    docs = render(ALL_ON)
    (gateways,) = by_kind(docs, "ServiceMonitor")
    (workers,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-workers")]
    assert gateways["spec"]["endpoints"][0]["port"] == "internal"  # Targets.gateway: the internal port
    assert workers["spec"]["podMetricsEndpoints"][0]["port"] == "http"  # Targets.workers: the serving port
    assert gateways["spec"]["endpoints"][0]["path"] == METRICS_PATH
    assert workers["spec"]["podMetricsEndpoints"][0]["path"] == METRICS_PATH
    config = scrape_config(Targets("127.0.0.1:9", ["127.0.0.1:10"]))
    assert {job["metrics_path"] for job in config["scrape_configs"]} == {METRICS_PATH}
