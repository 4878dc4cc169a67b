"""The CRD: a structural schema with defaults, and the examples validate against it."""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vgate_gateway.routing import STRATEGIES
from vgate_operator.spec import VGateDeploymentSpec, no_schema_default, parse_spec

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


def _scalar_equal(a: Any, b: Any) -> bool:
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)  # True == 1 in Python


def _default_drift(field: FieldInfo, node: dict[str, Any], path: str) -> list[str]:
    default = field.get_default(call_default_factory=True)
    if field.json_schema_extra is no_schema_default:
        default = None  # the operator applies it, the API server must not
    if default is None or default is PydanticUndefined:
        return [f"{path}: CRD default {node['default']!r}, spec has none"] if "default" in node else []
    if isinstance(default, BaseModel):
        # `{}` is filled in by the nested defaults, so it stands only for an all-default object.
        if "default" in node and (node["default"] != {} or default != type(default)()):
            return [f"{path}: CRD default {node['default']!r}, spec {default!r}"]
        return []
    if isinstance(default, list | dict):
        if "default" in node and node["default"] != default:
            return [f"{path}: CRD default {node['default']!r}, spec {default!r}"]
        return []
    if "default" not in node or not _scalar_equal(node["default"], default):
        return [f"{path}: CRD default {node.get('default')!r}, spec {default!r}"]
    return []


def _type_drift(annotation: Any, node: dict[str, Any], path: str) -> list[str]:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = [a for a in (typing.get_args(annotation) if union else (annotation,)) if a is not type(None)]
    if set(args) == {int, str}:  # a Quantity
        ok = node.get("x-kubernetes-int-or-string") is True
        return [] if ok else [f"{path}: spec int | str, CRD {node.get('type')}"]
    (kind,) = args
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        if node.get("type") != "string" or node.get("enum") != list(typing.get_args(kind)):
            return [f"{path}: CRD enum {node.get('enum')}, spec {list(typing.get_args(kind))}"]
        return []
    if "enum" in node:
        return [f"{path}: CRD enum {node['enum']}, spec {kind}"]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return [f"{path}: not an object"] if node.get("type") != "object" else drift(kind, node, path)
    if origin is list:
        if node.get("type") != "array":
            return [f"{path}: not an array"]
        return _type_drift(typing.get_args(kind)[0], node["items"], f"{path}[]")
    if origin is dict:
        if node.get("type") != "object" or "additionalProperties" not in node:
            return [f"{path}: not a map"]
        return _type_drift(typing.get_args(kind)[1], node["additionalProperties"], f"{path}{{}}")
    want = {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]
    return [] if node.get("type") == want else [f"{path}: CRD {node.get('type')}, spec {want}"]


def drift(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    """Every difference between ``model`` and the schema ``node`` of the object it parses."""
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    properties = node.get("properties") or {}
    problems = []
    if set(properties) != set(fields):
        problems.append(f"{path}: CRD properties {sorted(properties)}, spec fields {sorted(fields)}")
    required = sorted(alias for alias, field in fields.items() if field.is_required())
    if sorted(node.get("required") or []) != required:
        problems.append(f"{path}: CRD requires {node.get('required')}, spec {required}")
    for alias in sorted(set(properties) & set(fields)):
        problems += _default_drift(fields[alias], properties[alias], f"{path}.{alias}")
        problems += _type_drift(fields[alias].annotation, properties[alias], f"{path}.{alias}")
    return problems


def test_every_crd_property_type_enum_and_default_matches_the_spec_models() -> None:
    spec = SCHEMA["properties"]["spec"]
    assert drift(VGateDeploymentSpec, spec, ".spec") == []
    # The GPU count has no schema default: a default would contradict worker.dryRun.
    assert (
        "default"
        not in spec["properties"]["models"]["items"]["properties"]["resources"]["properties"]["gpus"]
    )


def test_the_drift_check_sees_a_changed_default_and_a_missing_enum_value() -> None:
    spec = copy.deepcopy(SCHEMA["properties"]["spec"])
    model = spec["properties"]["models"]["items"]["properties"]
    model["replicas"]["default"] = 2
    model["quantization"]["enum"].pop()
    del spec["properties"]["gateway"]["properties"]["dedup"]
    assert drift(VGateDeploymentSpec, spec, ".spec") == [
        ".spec.gateway: CRD properties "
        + str(sorted(set(spec["properties"]["gateway"]["properties"])))
        + ", spec fields "
        + str(sorted({*spec["properties"]["gateway"]["properties"], "dedup"})),
        ".spec.models[].quantization: CRD enum ['auto', 'awq', 'awq_marlin', 'gptq', 'fp8'], "
        "spec ['auto', 'awq', 'awq_marlin', 'gptq', 'fp8', 'none']",
        ".spec.models[].replicas: CRD default 2, spec 1",
    ]


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
