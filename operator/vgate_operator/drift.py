"""Pure comparison of desired and live child objects, and the JSON patch that repairs drift.

The API server adds defaults (``imagePullPolicy``, ``protocol``, ``clusterIP`` ...) and
may rewrite quantities into canonical form (``0.5`` -> ``500m``), so live objects are
never equal to what was sent. A live object *covers* the desired one when every value
we set is present and equal; extra keys are the server's and are left alone.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from vgate_operator.builders.common import MANAGED_ANNOTATIONS, SPEC_HASH, Manifest

#: Top-level fields the operator owns on each kind; everything else is left to the server.
OWNED_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec",),),
    "Service": (("spec", "type"), ("spec", "selector"), ("spec", "ports")),
    "ConfigMap": (("data",),),
    "ServiceAccount": (("automountServiceAccountToken",),),
    "Role": (("rules",),),
    # roleRef is immutable and derived from the name, so only subjects can drift.
    "RoleBinding": (("subjects",),),
    "PodDisruptionBudget": (("spec",),),
    "Ingress": (("spec",),),
}

_SUFFIXES = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None when ``value`` is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    match = _QUANTITY.match(str(value))
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2) or ""])
    except InvalidOperation:
        return None


def covers(live: Any, desired: Any) -> bool:
    """True when ``live`` holds every value of ``desired`` (recursively; lists element-wise)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and covers(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(covers, live, desired))
    if isinstance(live, bool) or isinstance(desired, bool):
        return live is desired
    if live == desired:
        return True
    # Quantities come back in canonical form and as strings: compare their values.
    left = parse_quantity(live)
    return left is not None and left == parse_quantity(desired)


def _get(obj: Manifest, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def in_sync(desired: Manifest, live: Manifest) -> bool:
    """Whether ``live`` needs no write: same spec hash, our metadata and owned fields intact."""
    live_meta = live.get("metadata", {})
    want_meta = desired["metadata"]
    if (live_meta.get("annotations") or {}).get(SPEC_HASH) != want_meta["annotations"][SPEC_HASH]:
        return False
    if not covers(live_meta.get("labels") or {}, want_meta["labels"]):
        return False
    if not covers(live_meta.get("annotations") or {}, want_meta["annotations"]):
        return False
    live_refs = live_meta.get("ownerReferences") or []
    # Others may reference the child too (non-controller owners): ours must be among them.
    if not all(any(covers(ref, want) for ref in live_refs) for want in want_meta["ownerReferences"]):
        return False
    return all(covers(_get(live, path), _get(desired, path)) for path in OWNED_PATHS[desired["kind"]])


def repair_ops(desired: Manifest, live: Manifest) -> list[dict[str, Any]]:
    """A JSON patch (RFC 6902) that puts our metadata and owned fields back, keeping the rest."""
    live_meta = live.get("metadata", {})
    want_meta = desired["metadata"]
    ours = {ref["uid"] for ref in want_meta["ownerReferences"]}
    others = [ref for ref in live_meta.get("ownerReferences") or [] if ref.get("uid") not in ours]
    live_annotations = live_meta.get("annotations") or {}
    # Keys we copied earlier but no longer want (removed from the resource) go; others' stay.
    listed = {*live_annotations.get(MANAGED_ANNOTATIONS, "").split(","), MANAGED_ANNOTATIONS}
    stale = listed - set(want_meta["annotations"])
    annotations = {k: v for k, v in live_annotations.items() if k not in stale}
    ops: list[dict[str, Any]] = [
        {
            "op": "add",
            "path": "/metadata/labels",
            "value": {**(live_meta.get("labels") or {}), **want_meta["labels"]},
        },
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {**annotations, **want_meta["annotations"]},
        },
        {"op": "add", "path": "/metadata/ownerReferences", "value": [*others, *want_meta["ownerReferences"]]},
    ]
    for path in OWNED_PATHS[desired["kind"]]:
        value = _get(desired, path)
        pointer = "/" + "/".join(path)
        if value is not None:
            ops.append({"op": "add", "path": pointer, "value": value})
        elif _get(live, path) is not None:
            ops.append({"op": "remove", "path": pointer})
    return ops
