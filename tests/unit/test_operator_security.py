"""What the operator builds so a VGateDeployment is safe on the Internet: keys, limits, ports, Ingress."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_operator_builders import DRY_SPEC, objects
from vgate_gateway.settings import GatewaySettings
from vgate_operator.builders.common import HTTP_PORT
from vgate_operator.builders.gateway import INTERNAL_PORT
from vgate_operator.spec import ALLOWED_INGRESS_ANNOTATIONS, InvalidSpecError, parse_spec

CRD = Path(__file__).parents[2] / "crds" / "vgate.io_vgatedeployments.yaml"
SECURED: dict[str, Any] = {
    **copy.deepcopy(DRY_SPEC),
    "gateway": {
        "apiKeysSecretRef": {"name": "api-keys"},
        "rateLimit": {"requestsPerMinute": 600, "burst": 50, "tokensPerMinute": 100000},
        "redis": {"urlSecretRef": {"name": "redis", "key": "uri"}, "failureMode": "closed"},
    },
}


def _gateway(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    objs = objects(raw)
    deployment = objs[("Deployment", "demo-gateway")]["spec"]["template"]["spec"]
    config = yaml.safe_load(objs[("ConfigMap", "demo-gateway")]["data"]["gateway.yaml"])
    return deployment, deployment["containers"][0], config


def test_the_api_keys_secret_is_mounted_whole_and_named_in_the_settings(tmp_path: Path) -> None:
    pod, container, config = _gateway(SECURED)
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {"secretName": "api-keys", "items": [{"key": "keys", "path": "keys"}]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert "subPath" not in mount  # a subPath mount would never see Secret updates
    assert f"{mount['mountPath']}/keys" == config["api_keys_file"]
    keys = tmp_path / "keys"
    keys.write_text("sk-x\n")
    settings = GatewaySettings(**{**config, "api_keys_file": keys})
    assert (settings.rate_limit_rpm, settings.rate_limit_rpm_burst, settings.rate_limit_tpm) == (
        600,
        50,
        100000,
    )
    assert settings.redis_failure_mode == "closed"
    assert settings.redis_prefix == "vgate:llm/demo:"


def test_the_redis_url_comes_from_its_secret_never_the_configmap() -> None:
    _, container, config = _gateway(SECURED)
    assert {
        "name": "VGATE_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis", "key": "uri"}},
    } in container["env"]
    assert "redis_url" not in config


def test_without_security_settings_nothing_extra_is_mounted() -> None:
    pod, container, config = _gateway(DRY_SPEC)
    assert [v["name"] for v in pod["volumes"]] == ["config", "tmp"]
    assert "env" not in container  # no Secret to pass: every setting is in the ConfigMap
    assert not {"api_keys_file", "rate_limit_rpm", "redis_failure_mode"} & set(config)


def test_internal_endpoints_have_their_own_port_and_the_ingress_routes_only_v1() -> None:
    objs = objects(DRY_SPEC)
    ports = {p["name"]: p["port"] for p in objs[("Service", "demo-gateway")]["spec"]["ports"]}
    assert ports == {"http": HTTP_PORT, "internal": INTERNAL_PORT}
    config = yaml.safe_load(objs[("ConfigMap", "demo-gateway")]["data"]["gateway.yaml"])
    assert config["internal_port"] == INTERNAL_PORT
    (path,) = objs[("Ingress", "demo-gateway")]["spec"]["rules"][0]["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
    assert path["backend"]["service"]["port"] == {"name": "http"}


@pytest.mark.parametrize(
    "annotation",
    [
        "nginx.ingress.kubernetes.io/configuration-snippet",
        "nginx.ingress.kubernetes.io/server-snippet",
        "nginx.ingress.kubernetes.io/auth-url",
        "nginx.ingress.kubernetes.io/rewrite-target",
    ],
)
def test_ingress_annotations_outside_the_allow_list_are_refused(annotation: str) -> None:
    raw = copy.deepcopy(DRY_SPEC)
    raw["ingress"]["annotations"] = {annotation: "x", "cert-manager.io/cluster-issuer": "le"}
    with pytest.raises(InvalidSpecError, match=annotation):
        parse_spec("demo", raw)


def test_allowed_ingress_annotations_pass_through() -> None:
    raw = copy.deepcopy(DRY_SPEC)
    raw["ingress"]["annotations"] = dict.fromkeys(sorted(ALLOWED_INGRESS_ANNOTATIONS)[:3], "1")
    ingress = objects(raw)[("Ingress", "demo-gateway")]
    assert set(raw["ingress"]["annotations"]) <= set(ingress["metadata"]["annotations"])


def test_the_crd_reserves_nothing() -> None:
    assert "reserved" not in CRD.read_text().lower()
