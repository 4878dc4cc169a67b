"""The end-to-end suite's own machinery: which cluster it may touch, waiting, and URLs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.kube import (
    IngressTarget,
    current_context,
    decide,
    ingress_target,
    is_condition,
    kubeconfig_paths,
    wait_for,
)
from tests.support.waiting import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def kubeconfig(tmp_path: Path, name: str, context: str | None) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": context}))
    return path


# -- the context guard


def test_no_cluster_configured_skips_quietly() -> None:
    guard = decide({}, None)
    assert (guard.run, guard.error) == (False, False)
    assert "no Kubernetes cluster" in guard.reason


def test_a_non_kind_context_is_refused_and_named() -> None:
    guard = decide({}, "prod-eu-west")
    assert (guard.run, guard.error) == (False, False)
    assert "prod-eu-west" in guard.reason


def test_a_non_kind_context_is_an_error_when_the_suite_is_requested() -> None:
    guard = decide({"VGATE_E2E": "1"}, "gke_acme_prod")
    assert (guard.run, guard.error) == (False, True)
    assert "gke_acme_prod" in guard.reason


def test_requesting_the_suite_without_any_cluster_is_an_error() -> None:
    assert decide({"VGATE_E2E": "1"}, None).error


def test_a_kind_context_runs_only_when_requested() -> None:
    assert not decide({}, "kind-vgate").run
    guard = decide({"VGATE_E2E": "true"}, "kind-vgate")
    assert (guard.run, guard.error, guard.context) == (True, False, "kind-vgate")


def test_an_explicit_context_overrides_the_kubeconfig() -> None:
    assert decide({"VGATE_E2E": "1", "VGATE_E2E_CONTEXT": "kind-ci"}, "prod").context == "kind-ci"
    assert decide({"VGATE_E2E": "1", "VGATE_E2E_CONTEXT": "prod"}, "kind-ci").error


def test_kubeconfig_path_list_is_read_in_order(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path, "a", None)
    second = kubeconfig(tmp_path, "b", "kind-second")
    third = kubeconfig(tmp_path, "c", "prod")
    paths = kubeconfig_paths({"KUBECONFIG": f"{first}:{second}:{third}"})
    assert paths == [first, second, third]
    assert current_context(paths) == "kind-second"


def test_default_kubeconfig_and_unreadable_files(tmp_path: Path) -> None:
    assert kubeconfig_paths({"HOME": str(tmp_path)}) == [tmp_path / ".kube" / "config"]
    broken = tmp_path / "broken"
    broken.write_text("{not: yaml: at all")
    assert current_context([tmp_path / "missing", broken]) is None


# -- conditions and waiting


def resource(conditions: list[dict[str, object]], generation: int = 1) -> dict[str, object]:
    return {"metadata": {"generation": generation}, "status": {"conditions": conditions}}


def test_condition_must_match_type_status_and_generation() -> None:
    ready = {"type": "Ready", "status": "True", "observedGeneration": 2}
    assert is_condition(resource([ready], generation=2), "Ready")
    assert not is_condition(resource([ready], generation=3), "Ready")  # stale: spec changed since
    assert not is_condition(resource([{**ready, "status": "False"}], generation=2), "Ready")
    assert not is_condition(resource([ready], generation=2), "Degraded")
    assert not is_condition({"metadata": {}}, "Ready")
    assert is_condition(resource([{**ready, "status": "False"}], generation=2), "Ready", status="False")


def test_wait_for_returns_the_first_truthy_result() -> None:
    clock, answers = FakeClock(), iter([None, False, {"ok": 1}])
    result = wait_for(lambda: next(answers), timeout=10, what="x", interval=2, clock=clock, sleep=clock.sleep)
    assert result == {"ok": 1}
    assert clock.sleeps == [2, 2]


def test_wait_for_times_out_naming_what_and_the_last_error() -> None:
    clock = FakeClock()

    def probe() -> None:
        raise subprocess.CalledProcessError(1, ["kubectl"], "", "NotFound")

    with pytest.raises(TimeoutError, match=r"waiting for VGateDeployment x Ready.*CalledProcessError"):
        wait_for(probe, timeout=5, what="VGateDeployment x Ready", interval=1, clock=clock, sleep=clock.sleep)
    assert clock.now == 5


def test_wait_for_lets_unexpected_errors_through() -> None:
    clock = FakeClock()
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5, what="x", clock=clock, sleep=clock.sleep)


# -- reaching the gateway through the Ingress


def test_ingress_target_builds_the_openai_base_url_and_host_header() -> None:
    example = yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text())
    target = ingress_target(example)
    assert target.api_base == "http://localhost/v1"
    assert target.headers == {"Host": example["spec"]["ingress"]["host"]}
    assert target.url("stats") == "http://localhost/stats"


def test_ingress_target_with_another_base_and_no_host() -> None:
    target = ingress_target(
        {"metadata": {"name": "x"}, "spec": {"ingress": {"enabled": True}}}, "http://127.0.0.1:8080/"
    )
    assert target == IngressTarget("http://127.0.0.1:8080/", None)
    assert target.api_base == "http://127.0.0.1:8080/v1"
    assert target.headers == {}


def test_ingress_target_needs_an_enabled_ingress() -> None:
    with pytest.raises(ValueError, match=r"spec\.ingress\.enabled"):
        ingress_target({"metadata": {"name": "x"}, "spec": {}})
