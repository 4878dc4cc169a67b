"""Pure comparison of desired and live child objects: does a child need a write?

The API server adds defaults (``imagePullPolicy``, ``protocol``, ``clusterIP`` ...),
rewrites quantities into canonical form (``0.5`` -> ``500m``) and, like Go's
``omitempty``, leaves empty values out of what it returns (``env: []``, ``value: ""``,
``false``, ``0``), so live objects are never equal to what was sent. A live object
*covers* the desired one when every value we set is present and equal, an empty value
also by its absence; extra keys are the server's or other field managers' and are left
alone. The write itself is a server-side apply (see :mod:`vgate_operator.k8s`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from vgate_operator.builders.common import SPEC_HASH, Manifest

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
    "ScaledObject": (("spec",),),
}

_SUFFIXES: dict[str, int | Decimal] = {
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


def is_empty(value: Any) -> bool:
    """What the API server may omit on output: ``None``, ``""``, ``[]``, ``false``, ``0``, or a
    map of nothing but such values."""
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    return value is None or value is False or (not isinstance(value, bool) and not value)


def covers(live: Any, desired: Any) -> bool:
    """True when ``live`` holds every value of ``desired`` (recursively; lists element-wise).

    A key whose desired value is empty is covered by its absence (the server omits it).
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            covers(live[k], v) if k in live else is_empty(v) for k, v in desired.items()
        )
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
    """Whether ``live`` needs no write: same spec hash, our metadata and owned fields intact.

    The spec hash changes with anything we stop setting too, so a removed label or
    annotation leads to an apply, which removes it (fields no other manager owns).
    """
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
