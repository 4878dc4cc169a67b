"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK).

Every rendered object is validated against the Kubernetes OpenAPI schemas; the RBAC, the
operator's command line, peering, the optional objects and the values schema are checked
as the Kubernetes objects a cluster would receive.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from hack.chart_lint import ALL_ON, lint
from tests.support.chart import CHART, NAMESPACE, RELEASE, ROOT, by_kind, render
from vgate_operator.builders.common import HTTP_PORT
from vgate_operator.builders.gateway import INTERNAL_PORT

K8S_VERSION = kubernetes_validate.latest_version()
# Kinds whose schema is not part of Kubernetes itself.
CUSTOM_KINDS = {
    "VGateDeployment",
    "ClusterKopfPeering",
    "KopfPeering",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}
READ = {"get", "list", "watch"}
PRUNED = {"get", "list", "create", "patch", "delete"}  # kinds that come and go
KEPT = {"get", "create", "patch"}  # kinds deleted only by garbage collection
# The operator's permissions, exactly: (apiGroup, resource) -> verbs. Nothing is PUT.
OPERATOR_RULES: dict[tuple[str, str], set[str]] = {
    ("vgate.io", "vgatedeployments"): {"get", "list", "watch", "patch", "delete"},
    ("vgate.io", "vgatedeployments/status"): {"patch"},
    ("apps", "deployments"): PRUNED | {"watch"},
    ("", "services"): PRUNED,
    ("networking.k8s.io", "ingresses"): PRUNED,
    ("", "configmaps"): KEPT,
    ("", "serviceaccounts"): KEPT,
    ("rbac.authorization.k8s.io", "roles"): KEPT,
    ("rbac.authorization.k8s.io", "rolebindings"): KEPT,
    ("policy", "poddisruptionbudgets"): KEPT,
    ("discovery.k8s.io", "endpointslices"): READ,
    ("", "events"): {"create"},
    ("keda.sh", "scaledobjects"): PRUNED,  # autoscaling.engine: keda
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("", "namespaces"): READ,
    ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
}
CLUSTER_SCOPED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
METRICS = [
    "vgate_requests_total",
    "vgate_request_latency_seconds",
    "vgate_ttft_seconds",
    "vgate_tpot_seconds",
    "vgate_tokens_generated_total",
    "vgate_upstream_requests_total",
    "vgate_inflight_requests",
    "vgate_upstream_healthy",
    "vgate_cache_hits_total",
    "vgate_cache_misses_total",
    "vgate_deduplicated_requests_total",
    "vgate_batch_size",
    "vgate_model_healthy_upstreams",
    "vgate_rejected_requests_total",
    "vgate_upstream_ejections_total",
    "vgate_ratelimit_decisions_total",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_waiting",
    "vllm:generation_tokens_total",
    "vgate_queue_depth",
    "vgate_queue_wait_seconds",
]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def rule_map(roles: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs granted by ``roles`` together."""
    granted: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    deployment = one(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        ALL_ON,
        {**ALL_ON, "watchNamespaces": ["team-a", "team-b"]},
        {**ALL_ON, "clusterWide": True},
        {"operator": {"replicas": 1, "peering": {"enabled": False}}},
    ],
    ids=["defaults", "all-on", "two-namespaces", "cluster-wide", "standalone"],
)
def test_every_builtin_object_validates_against_kubernetes_schemas(values: dict[str, Any]) -> None:
    docs = render(values)
    builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert builtin
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_object_carries_the_standard_labels() -> None:
    for doc in render(ALL_ON):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "vgate", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "vgate-0.1.0"


def test_all_namespaces_grants_exactly_the_operator_rules_cluster_wide() -> None:
    docs = render({"clusterWide": True})
    assert not by_kind(docs, "Role")
    role = one(docs, "ClusterRole")
    assert rule_map([role]) == OPERATOR_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_one_namespace_gets_a_role_there_and_only_cluster_reads() -> None:
    docs = render({"watchNamespaces": ["team-a"]})
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == "team-a"
    namespaced = {k: v for k, v in OPERATOR_RULES.items() if k not in CLUSTER_SCOPED}
    del namespaced[("kopf.dev", "clusterkopfpeerings")]
    assert rule_map([role]) == namespaced
    cluster_role = one(docs, "ClusterRole")
    assert rule_map([cluster_role]) == {k: OPERATOR_RULES[k] for k in CLUSTER_SCOPED}
    assert one(docs, "RoleBinding")["metadata"]["namespace"] == "team-a"
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
    args = operator_args(docs)
    assert args[args.index("--namespace") + 1] == "team-a"


def test_replicas_are_peered_through_the_peering_object_the_chart_creates() -> None:
    docs = render({"clusterWide": True})
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    args = operator_args(docs)
    assert args[0] == "operator"
    assert "--namespace" not in args  # all namespaces
    assert args[args.index("--peering") + 1] == peering["metadata"]["name"]
    assert "--standalone" not in args
    # kopf's peer identity is read from POD_ID: each replica is named by its pod.
    env = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env
    liveness = args[args.index("--liveness") + 1]
    probe = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert liveness == "http://0.0.0.0:8080/healthz"
    assert probe["httpGet"]["path"] == "/healthz"


def test_one_namespace_peers_through_a_namespaced_kopfpeering() -> None:
    docs = render({"watchNamespaces": ["team-a"], "operator": {"peering": {"name": "llm"}}})
    peering = one(docs, "KopfPeering")
    assert peering["metadata"] == {**peering["metadata"], "name": "llm", "namespace": "team-a"}
    assert not by_kind(docs, "ClusterKopfPeering")
    args = operator_args(docs)
    assert args[args.index("--peering") + 1] == "llm"


def test_a_single_unpeered_operator_runs_standalone() -> None:
    docs = render({"operator": {"replicas": 1, "peering": {"enabled": False}}})
    assert "--standalone" in operator_args(docs)
    assert "--peering" not in operator_args(docs)
    assert not by_kind(docs, "ClusterKopfPeering")


def test_several_unpeered_operators_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="peering"):
        render({"operator": {"replicas": 2, "peering": {"enabled": False}}})


def test_operator_image_defaults_to_the_app_version_and_can_be_overridden() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/vgate/gateway:0.1.0"
    docs = render({"image": {"registry": "", "repository": "local/vgate", "tag": "dev"}})
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == "local/vgate:dev"


def test_pods_meet_pod_security_restricted() -> None:
    docs = render(ALL_ON)
    pods = [one(docs, "Deployment")["spec"]["template"]["spec"], one(docs, "Pod")["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "bogus"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"operator": {"replicas": -1}}, "replicas"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"deployment": {"enabled": True, "spec": {"models": []}}}, "models"),
        ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "interval"),
        ({"metrics": {"prometheusRule": {"alerts": {"kvCacheNearFull": {"threshold": 95}}}}}, "threshold"),
        ({"metrics": {"prometheusRule": {"alerts": {"queueWait": {"for": "a while"}}}}}, "for"),
        ({"operator": {"metricsPort": 0}}, "metricsPort"),
    ],
)
def test_values_schema_rejects_bad_values_with_a_message_naming_them(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


def test_default_values_file_satisfies_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)


def test_lint_is_clean_with_defaults_and_with_every_optional_object() -> None:
    assert lint(str(CHART)) == 0  # the findings are printed: pytest shows them on failure


def test_service_monitor_scrapes_the_gateways_the_operator_creates() -> None:
    monitor = one(render(ALL_ON), "ServiceMonitor")
    # The operator labels each gateway Service part-of=vgate, component=gateway; port "http".
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "vgate",
        "app.kubernetes.io/component": "gateway",
    }
    assert monitor["spec"]["endpoints"][0]["port"] == "internal"  # /metrics is not on the public port
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    scoped = one(render({**ALL_ON, "watchNamespaces": ["team-a", "team-b"]}), "ServiceMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    wide = one(render({**ALL_ON, "clusterWide": True}), "ServiceMonitor")
    assert wide["spec"]["namespaceSelector"] == {"any": True}


def workers_monitor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (monitor,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-workers")]
    return monitor


def test_pod_monitor_scrapes_vllm_metrics_on_every_worker_pod() -> None:
    monitor = workers_monitor(render(ALL_ON))
    # The operator labels each worker pod part-of=vgate, component=worker; port "http".
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "vgate",
        "app.kubernetes.io/component": "worker",
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    scoped = workers_monitor(render({**ALL_ON, "watchNamespaces": ["team-a"]}))
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    wide = workers_monitor(render({**ALL_ON, "clusterWide": True}))
    assert wide["spec"]["namespaceSelector"] == {"any": True}


def test_uninstall_deletes_the_resources_first_while_the_operator_runs() -> None:
    docs = render()
    job = one(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = job["spec"]["template"]["spec"]
    operator_pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == operator_pod["serviceAccountName"]
    assert pod["containers"][0]["image"] == operator_pod["containers"][0]["image"]
    assert pod["containers"][0]["args"] == [
        "operator",
        "--namespace",
        NAMESPACE,
        "--uninstall",
        "--timeout",
        "300",
    ]
    wide = one(render({"clusterWide": True}), "Job")["spec"]["template"]["spec"]
    assert wide["containers"][0]["args"] == ["operator", "--uninstall", "--timeout", "300"]
    scoped = one(render({"watchNamespaces": ["team-a"]}), "Job")["spec"]["template"]["spec"]
    assert scoped["containers"][0]["args"][:3] == ["operator", "--namespace", "team-a"]
    assert not by_kind(render({"uninstall": {"deleteResources": False}}), "Job")


def test_the_chart_needs_the_kubernetes_version_its_pods_need() -> None:
    # preStop "sleep" (gateway and workers) is on by default from Kubernetes 1.30.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_dashboard_configmap_is_picked_up_by_grafana_and_charts_every_metric() -> None:
    config_map = next(
        d for d in by_kind(render(ALL_ON), "ConfigMap") if d["metadata"]["name"].endswith("dashboard")
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["vgate.json"])
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    missing = [m for m in METRICS if m not in queries]
    assert not missing, f"no panel for {missing}"


def test_optional_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert kinds == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",  # the cluster-scoped reads kopf needs, nothing more
        "ClusterRoleBinding",
        "Deployment",
        "KopfPeering",
        "Job",  # the uninstall hook
    }


def test_chart_deploys_the_version_being_released() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert chart["version"] == version


def test_by_default_the_operator_watches_only_its_release_namespace() -> None:
    docs = render()
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == [f"{RELEASE}-vgate-cluster-read"]
    args = operator_args(docs)
    assert args[args.index("--namespace") + 1] == NAMESPACE
    assert one(docs, "KopfPeering")["metadata"]["namespace"] == NAMESPACE
    assert not by_kind(docs, "ClusterKopfPeering")


def test_several_namespaces_get_a_role_and_a_peering_each() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    args = operator_args(docs)
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]


def test_the_helm_test_pod_mounts_no_token() -> None:
    pod = one(render({"deployment": {"enabled": True}}), "Pod")
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_the_network_policy_lets_only_gateways_reach_the_workers() -> None:
    assert not by_kind(render(), "NetworkPolicy")
    policies = by_kind(
        render({"networkPolicy": {"enabled": True}, "watchNamespaces": ["a", "b"]}), "NetworkPolicy"
    )
    workers = [p for p in policies if p["metadata"]["name"].endswith("-workers")]
    assert sorted(p["metadata"]["namespace"] for p in workers) == ["a", "b"]
    spec = workers[0]["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/part-of": "vgate",
                    "app.kubernetes.io/component": "gateway",
                }
            }
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_the_network_policy_opens_the_gateways_internal_port_only_to_the_operator() -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    values = {"networkPolicy": {"enabled": True, "internalFrom": [prometheus]}, "watchNamespaces": ["a", "b"]}
    gateways = [
        p for p in by_kind(render(values), "NetworkPolicy") if p["metadata"]["name"].endswith("-gateways")
    ]
    assert sorted(p["metadata"]["namespace"] for p in gateways) == ["a", "b"]
    spec = gateways[0]["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    public, internal = spec["ingress"]
    assert public == {"ports": [{"protocol": "TCP", "port": HTTP_PORT}]}  # clients, from anywhere
    assert internal["ports"] == [{"protocol": "TCP", "port": INTERNAL_PORT}]
    operator = internal["from"][0]
    assert operator["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    # The operator pods carry exactly the labels the policy selects.
    deployment = one(render(values), "Deployment")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert operator["podSelector"]["matchLabels"].items() <= template_labels.items()
    assert internal["from"][1:] == [prometheus]
