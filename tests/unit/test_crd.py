"""The CRD: generated from the models, a structural schema with defaults; the examples validate against it."""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from vgate_gateway.upstream.routing import STRATEGIES
from vgate_operator.crd import FILE_NAME, render, type_schema
from vgate_operator.spec import QUANTITY, GatewaySpec, ModelSpec, Quantization, parse_spec
from vgate_operator.status import OWNED_KEYS

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "vgate.io_vgatedeployments.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in (node.get("properties") or {}).items():
        found += walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def validator() -> jsonschema.Validator:
    # The CRD dialect is OpenAPI 3.0 (boolean exclusiveMinimum), closest to JSON Schema draft 4.
    return jsonschema.Draft4Validator(SCHEMA)


def test_identity() -> None:
    assert CRD["metadata"]["name"] == "vgatedeployments.vgate.io"
    spec = CRD["spec"]
    assert spec["group"] == "vgate.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VGateDeployment"
    assert spec["names"]["shortNames"] == ["vgd"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"]
    assert VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(CRD, "1.34", strict=True)


def test_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string); only status.kopf keeps unknown fields."""
    for path, node in walk(SCHEMA):
        if path == ".metadata":
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".status.kopf", path
        if node.get("type") == "object" and path.startswith(".spec") and "properties" not in node:
            assert "additionalProperties" in node, f"{path} is an untyped free-form object"


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Workers"]["jsonPath"] == ".status.readyWorkers"
    assert columns["Gateway"]["jsonPath"] == ".status.readyGateways"
    assert columns["Age"]["type"] == "date"


def test_the_committed_crd_is_the_one_the_models_generate() -> None:
    """crds/ and the chart hold what ``make crds`` renders from spec.py and status.py."""
    for path in (ROOT / "crds" / FILE_NAME, ROOT / "charts" / "vgate" / "crds" / FILE_NAME):
        assert path.read_text() == render(), f"{path.relative_to(ROOT)} is stale: run make crds"


def test_every_spec_field_is_a_property_with_its_bounds_default_and_description() -> None:
    spec = SCHEMA["properties"]["spec"]
    model = spec["properties"]["models"]["items"]
    assert spec["required"] == ["models"]
    assert model["required"] == ["name"]
    assert set(model["properties"]) == {f.alias for f in ModelSpec.model_fields.values()}
    assert model["properties"]["replicas"] == {
        "type": "integer", "format": "int32", "minimum": 0, "maximum": 100, "default": 1,
    }  # fmt: skip
    utilization = model["properties"]["gpuMemoryUtilization"]
    assert (utilization["minimum"], utilization["exclusiveMinimum"], utilization["maximum"]) == (0, True, 1)
    assert model["properties"]["quantization"]["enum"] == list(typing.get_args(Quantization))
    assert model["properties"]["quantization"]["description"].startswith(
        "Quantization method passed to vLLM."
    )
    assert spec["properties"]["models"]["x-kubernetes-list-map-keys"] == ["name"]
    assert (spec["properties"]["models"]["minItems"], spec["properties"]["models"]["maxItems"]) == (1, 32)
    gateway = spec["properties"]["gateway"]
    assert gateway["default"] == {}  # filled in by the nested defaults
    assert gateway["properties"]["terminationGracePeriodSeconds"]["format"] == "int64"
    # The gateway's resources default is the operator's (one core per process unless set).
    assert GatewaySpec().resources.requests["cpu"] == "250m"
    assert "default" not in gateway["properties"]["resources"]


def test_defaults_the_operator_applies_stay_out_of_the_schema() -> None:
    gateway = SCHEMA["properties"]["spec"]["properties"]["gateway"]["properties"]
    # A default beside the deprecated name would read as both being set.
    assert "default" not in gateway["processes"]
    assert GatewaySpec().processes == 1
    # A GPU count default would contradict worker.dryRun.
    model = SCHEMA["properties"]["spec"]["properties"]["models"]["items"]["properties"]
    assert "default" not in model["resources"]["properties"]["gpus"]


def test_quantities_are_int_or_string_with_the_quantity_pattern() -> None:
    found = [(path, node) for path, node in walk(SCHEMA) if node.get("x-kubernetes-int-or-string")]
    assert {path for path, _ in found} >= {".spec.models[].resources.cpu", ".spec.worker.shmSize"}
    assert all(node["pattern"] == QUANTITY for _, node in found)


def test_the_status_schema_holds_what_the_operator_writes() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    assert set(status) == {*OWNED_KEYS, "kopf"}
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    condition = status["conditions"]["items"]
    assert condition["required"] == ["type", "status"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_a_type_the_crd_cannot_express_is_refused() -> None:
    with pytest.raises(TypeError, match="no union"):
        type_schema(int | float)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_schema(path: Path) -> None:
    resource = yaml.safe_load(path.read_text())
    assert resource["apiVersion"] == "vgate.io/v1alpha1"
    assert resource["kind"] == "VGateDeployment"
    validator().validate(resource)
    parse_spec(resource["metadata"]["name"], resource["spec"])


def test_examples_cover_gpu_and_dry_run() -> None:
    assert {p.name for p in EXAMPLES} >= {"qwen-awq-gpu.yaml", "dry-run.yaml"}
    dry = yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text())["spec"]
    assert dry["worker"]["dryRun"] is True
    assert dry["models"][0]["replicas"] == 2
    assert dry["ingress"]["enabled"] is True
    assert dry["ingress"]["className"] == "nginx"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["models"][0].update(name="Not_A_Label"), "name"),
        (lambda s: s["models"][0].update(quantization="int4"), "quantization"),
        (lambda s: s["models"][0].update(gpuMemoryUtilization=0), "gpuMemoryUtilization"),
        (lambda s: s["models"][0]["resources"].update(memory="lots"), "memory"),
        (lambda s: s["gateway"].update(routing="random"), "routing"),
        (lambda s: s.update(models=[]), "models"),
    ],
)
def test_schema_rejects_bad_values(mutate: Any, field: str) -> None:
    resource = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text()))
    mutate(resource["spec"])
    errors = list(validator().iter_errors(resource))
    assert errors
    assert any(field in "/".join(map(str, e.absolute_path)) or field in e.message for e in errors)


def test_every_routing_strategy_offered_exists_in_the_gateway() -> None:
    gateway = SCHEMA["properties"]["spec"]["properties"]["gateway"]["properties"]
    model = SCHEMA["properties"]["spec"]["properties"]["models"]["items"]["properties"]
    assert set(gateway["routing"]["enum"]) <= set(STRATEGIES)
    assert set(model["routing"]["enum"]) <= set(STRATEGIES)
