"""The chart's alerts, evaluated by Prometheus' own ``promtool test rules``.

The rule file is the one the chart renders (Helm's engine), with its default thresholds.
Each alert gets input series shaped like the real ones (names, labels and bucket edges read
from the metric objects the code registers; see tests.support.alert_rules) and is checked
both ways: it fires, with the labels and annotations an on-call person reads, where it
should, and stays quiet on the healthy series beside it and before its ``for`` has passed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.alert_rules import (
    TARGET_LABELS,
    Series,
    alert_rules,
    bucket_edges,
    exported_series,
    rendered_rules,
)

MODEL = "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
NS = "team-a"
GW = {"namespace": NS, "job": "vgate-gateway", "pod": "gw-0", "instance": "10.244.0.9:8081"}
WORKER = {"namespace": NS, "job": "vgate-workers", "pod": "qwen-0", "instance": "10.244.0.5:8000"}


def _alert(rule: dict[str, Any], labels: dict[str, str], summary: str) -> dict[str, Any]:
    return {
        "exp_labels": {**labels, "severity": rule["labels"]["severity"]},
        "exp_annotations": {"summary": summary, "runbook": rule["annotations"]["runbook"]},
    }


def _case(series: Series, checks: list[tuple[str, str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": series.items,
        "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": e} for t, a, e in checks],
    }


def _gateway_cases(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    err, down = rules["VGateGatewayErrorRatioHigh"], rules["VGateModelUnavailable"]
    ok = {"endpoint": "/v1/chat/completions", "method": "POST", "status": "200"}
    failed = {**ok, "status": "503"}
    quiet = {**GW, "namespace": "team-b"}
    errors = (
        Series()
        .counter("vgate_requests_total", {**GW, **ok}, 54)
        .counter("vgate_requests_total", {**GW, **failed}, 6)  # 10 % > 5 %
        .counter("vgate_requests_total", {**quiet, **ok}, 99)
        .counter("vgate_requests_total", {**quiet, **failed}, 1)  # 1 %
        # Probes are not traffic: a storm of failing readiness probes alone fires nothing.
        .counter(
            "vgate_requests_total", {**quiet, "endpoint": "/ready", "method": "GET", "status": "503"}, 600
        )
    )
    fired = _alert(err, {"namespace": NS}, f"V-Gate answers 10% of requests with a 5xx in {NS}")
    other = "Other/Model"
    fleet = (
        Series()
        .gauge("vgate_model_healthy_upstreams", {**GW, "model": MODEL}, 0)
        .gauge("vgate_model_upstreams", {**GW, "model": MODEL}, 2)
        .gauge("vgate_model_healthy_upstreams", {**GW, "model": other}, 1)
        .gauge("vgate_model_upstreams", {**GW, "model": other}, 2)
    )
    gone = _alert(
        down,
        {"namespace": NS, "model": MODEL},
        f"Model {MODEL} has no healthy worker in {NS}: its requests get 503",
    )
    return [
        _case(errors, [("4m", err["alert"], []), ("10m", err["alert"], [fired])]),
        _case(fleet, [("1m", down["alert"], []), ("5m", down["alert"], [gone])]),
    ]


def _latency_cases(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ttft, queue = rules["VGateTimeToFirstTokenHigh"], rules["VGateQueueWaitHigh"]
    edges = bucket_edges("vgate_ttft_seconds")
    slow = (
        Series()
        .histogram("vgate_ttft_seconds", {**GW, "model": MODEL}, edges, 3.0, 60)  # p95 in (2.5, 5]
        .histogram("vgate_ttft_seconds", {**GW, "model": "fast"}, edges, 0.05, 60)
    )
    # The queue's own buckets are not in the code yet: the TTFT edges stand in for them.
    waiting = (
        Series()
        .histogram("vgate_queue_wait_seconds", {**GW, "model": MODEL}, edges, 8.0, 30)  # p95 in (5, 10]
        .histogram("vgate_queue_wait_seconds", {**GW, "model": "fast"}, edges, 0.5, 30)
        .gauge("vgate_queue_depth", {**GW, "model": MODEL}, 40)
    )
    labels = {"namespace": NS, "model": MODEL}
    slow_alert = _alert(ttft, labels, f"p95 time to first token of {MODEL} is 4.875s")
    wait_alert = _alert(queue, labels, f"Requests for {MODEL} wait 9.75s (p95) in the gateway queue")
    return [
        _case(slow, [("9m", ttft["alert"], []), ("20m", ttft["alert"], [slow_alert])]),
        _case(waiting, [("4m", queue["alert"], []), ("15m", queue["alert"], [wait_alert])]),
    ]


def _worker_cases(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out, ejections = rules["VGateWorkerOutOfRotation"], rules["VGateWorkerEjections"]
    kv = rules["VGateKVCacheNearFull"]
    bad, good = "http://10.244.0.5:8000", "http://10.244.0.6:8000"
    rotation = (
        Series()
        .gauge("vgate_upstream_healthy", {**GW, "upstream": bad}, 0)
        .gauge("vgate_upstream_healthy", {**GW, "upstream": good}, 1)
        .counter("vgate_upstream_ejections_total", GW, 1)  # 15 in 15 minutes > 3
        .counter("vgate_upstream_ejections_total", {**GW, "namespace": "team-b"}, 0.1)
    )
    out_alert = _alert(
        out,
        {"namespace": NS, "upstream": bad},
        f"Worker {bad} has failed the gateway's health checks for a while",
    )
    flap = _alert(ejections, {"namespace": NS}, f"15 worker ejections in 15 minutes in {NS}")
    cache = (
        Series()
        .gauge("vllm:kv_cache_usage_perc", {**WORKER, "model_name": MODEL}, 0.98)
        .gauge(
            "vllm:kv_cache_usage_perc",
            {**WORKER, "pod": "qwen-1", "instance": "10.244.0.6:8000", "model_name": MODEL},
            0.5,
        )
    )
    full = _alert(
        kv,
        {k: WORKER[k] for k in ("namespace", "pod", "instance")} | {"model_name": MODEL},
        f"vLLM worker {WORKER['instance']} ({MODEL}) uses 98% of its KV cache",
    )
    return [
        _case(rotation, [("4m", out["alert"], []), ("10m", out["alert"], [out_alert])]),
        _case(rotation, [("20m", ejections["alert"], [flap])]),
        _case(cache, [("9m", kv["alert"], []), ("15m", kv["alert"], [full])]),
    ]


def _control_cases(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    admit, redis = rules["VGateAdmissionRefusing"], rules["VGateRateLimitRedisDown"]
    operator = rules["VGateOperatorReconcileFailing"]
    refused = (
        Series()
        .counter("vgate_rejected_requests_total", GW, 60)
        .counter("vgate_rejected_requests_total", {**GW, "namespace": "team-b"}, 0)
    )
    refusing = _alert(admit, {"namespace": NS}, f"The gateway refuses 1 requests/s at admission in {NS}")
    other_gw = {**GW, "pod": "gw-1", "instance": "10.244.0.10:8081"}
    no_redis = {**GW, "pod": "gw-2", "instance": "10.244.0.11:8081"}
    limiter = (
        Series()
        .gauge("vgate_ratelimit_redis_up", GW, 0)
        .counter("vgate_ratelimit_decisions_total", {**GW, "result": "failed_open"}, 30)
        .gauge("vgate_ratelimit_redis_up", other_gw, 1)
        .counter("vgate_ratelimit_decisions_total", {**other_gw, "result": "allowed"}, 30)
        # A gateway without Redis reads 0 as well, and decides in process: no alert.
        .gauge("vgate_ratelimit_redis_up", no_redis, 0)
        .counter("vgate_ratelimit_decisions_total", {**no_redis, "result": "allowed"}, 30)
    )
    lost = _alert(
        redis,
        {k: GW[k] for k in ("namespace", "pod", "instance")},
        f"Gateway {GW['instance']} cannot reach the rate limiter's Redis",
    )
    op = {"namespace": "vgate-system", "job": "vgate-operator", "pod": "op-0", "instance": "10.244.0.2:8081"}
    reconciles = (
        Series()
        .counter("vgate_operator_reconciles_total", {**op, "result": "error"}, 4)  # kopf retries every 15 s
        .counter("vgate_operator_reconciles_total", {**op, "result": "ok"}, 0)
    )
    # One failed reconcile, then success: a blip, not an alert.
    blip = (
        Series()
        .once("vgate_operator_reconciles_total", {**op, "result": "error"}, 2)
        .counter("vgate_operator_reconciles_total", {**op, "result": "ok"}, 1)
    )
    failing = _alert(
        operator, {"namespace": "vgate-system"}, "The V-Gate operator keeps failing to reconcile"
    )
    return [
        _case(refused, [("3m", admit["alert"], []), ("10m", admit["alert"], [refusing])]),
        _case(limiter, [("30s", redis["alert"], []), ("5m", redis["alert"], [lost])]),
        _case(reconciles, [("10m", operator["alert"], []), ("30m", operator["alert"], [failing])]),
        _case(
            blip,
            [("5m", operator["alert"], []), ("20m", operator["alert"], []), ("35m", operator["alert"], [])],
        ),
    ]


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: `make test` installs Debian's prometheus package (mk/monitoring.mk)"
        )
    return binary


def test_every_alert_fires_and_stays_quiet_as_promtool_evaluates_it(tmp_path: Path) -> None:
    rules = alert_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
    tests = [*_gateway_cases(rules), *_latency_cases(rules), *_worker_cases(rules), *_control_cases(rules)]
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"]}
    assert tested == set(rules), f"alerts without a promtool test: {set(rules) - tested}"
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "30s", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run(
        [_promtool(), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
    done = subprocess.run(
        [_promtool(), "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


_SELECTOR = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$")


def test_input_series_are_the_ones_the_code_exports() -> None:
    """Every series fed to promtool above has a name and labels the code really exports."""
    rules = alert_rules()
    exported = exported_series()
    cases = [*_gateway_cases(rules), *_latency_cases(rules), *_worker_cases(rules), *_control_cases(rules)]
    for item in (s for case in cases for s in case["input_series"]):
        match = _SELECTOR.match(item["series"])
        assert match, item
        name, labels = match[1], {kv.split("=")[0] for kv in match[2].split(",")}
        assert name in exported, f"{name} is not exported by the gateway, the simulator or the operator"
        assert labels - TARGET_LABELS <= exported[name], f"{name}: labels {labels} vs {exported[name]}"
