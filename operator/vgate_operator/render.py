"""``vgate render -f CR.yaml``: print the objects the operator would apply, as multi-document YAML.

Uses the same validation and builders as the operator. The resource needs no ``uid``
(it may not exist yet): owner references then carry a placeholder that the API server
would reject, which is fine for review and diffing but not for ``kubectl apply``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vgate_operator.builders import Owner, build_all
from vgate_operator.builders.common import GROUP, KIND
from vgate_operator.spec import InvalidSpecError, parse_spec

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def render(resource: dict[str, Any], namespace: str | None = None) -> list[dict[str, Any]]:
    """Children of one VGateDeployment dict; raises InvalidSpecError for an unusable resource."""
    if not isinstance(resource, dict):
        raise InvalidSpecError("each YAML document must be a mapping")
    if resource.get("kind") != KIND or not str(resource.get("apiVersion", "")).startswith(f"{GROUP}/"):
        raise InvalidSpecError(
            f"expected a {GROUP} {KIND}, got {resource.get('apiVersion')} {resource.get('kind')}"
        )
    meta = resource.get("metadata") or {}
    if not meta.get("name"):
        raise InvalidSpecError("metadata.name is required")
    owner = Owner(
        name=meta["name"],
        namespace=namespace or meta.get("namespace") or "default",
        uid=meta.get("uid") or PLACEHOLDER_UID,
    )
    return build_all(owner, parse_spec(owner.name, resource.get("spec") or {}))


def main(argv: Sequence[str]) -> int:
    """Render every VGateDeployment in the file (``-`` reads stdin); exit 1 on an invalid one."""
    parser = argparse.ArgumentParser(
        prog="vgate render",
        description="Print, as multi-document YAML, the objects the operator would apply for VGateDeployments.",
    )
    parser.add_argument("-f", "--filename", required=True, help="VGateDeployment YAML file, or - for stdin")
    parser.add_argument(
        "-n", "--namespace", help="namespace to render into (default: the resource's, or default)"
    )
    args = parser.parse_args(list(argv))
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        print(f"vgate render: cannot read {args.filename}: {exc}", file=sys.stderr)
        return 1
    objects: list[dict[str, Any]] = []
    for doc in documents:
        try:
            objects += render(doc, args.namespace)
        except InvalidSpecError as exc:
            name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
            print(f"vgate render: {name}: invalid spec: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0
