"""``vgate operator --uninstall``: delete every VGateDeployment the operator serves, and wait.

The Helm chart runs this as a pre-delete hook, while the operator is still running: each
resource carries kopf's finalizer, which only a running operator removes, so deleting the
operator first would leave the resources Terminating and their GPU pods running. Deleting a
resource garbage-collects its children.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

from vgate_operator.k8s import KINDS, KubeApi, connect

log = logging.getLogger(__name__)
_POLL_S = 1.0


async def _remaining(api: KubeApi, namespaces: Sequence[str]) -> list[tuple[str, str]]:
    prefix, plural = KINDS["VGateDeployment"]
    # Named namespaces are listed one by one: a namespaced operator may not list cluster-wide.
    exact = [ns for ns in namespaces if not any(c in ns for c in "*?[")]
    if namespaces and len(exact) == len(namespaces):
        paths = [f"{prefix}/namespaces/{ns}/{plural}" for ns in exact]
    else:
        paths = [f"{prefix}/{plural}"]
    items: list[dict[str, Any]] = []
    for path in paths:
        items += (await api.call("GET", path)).get("items") or []
    left = []
    for item in items:
        meta = item.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        if not namespaces or any(fnmatch(ns, pattern) for pattern in namespaces):
            left.append((ns, str(meta.get("name"))))
    return sorted(left)


async def uninstall(namespaces: Sequence[str], timeout_s: float) -> int:
    """Delete the resources in ``namespaces`` (all if empty; globs allowed); 0 once all are gone."""
    api = KubeApi(await connect())
    try:
        deadline = time.monotonic() + timeout_s
        left = await _remaining(api, namespaces)
        for ns, name in left:
            await api.delete("VGateDeployment", ns, name)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
            left = await _remaining(api, namespaces)
        if left:
            names = ", ".join(f"{ns}/{name}" for ns, name in left)
            log.error("still present after %.0fs (is the operator running?): %s", timeout_s, names)
            return 1
        log.info("no VGateDeployment left")
        return 0
    finally:
        await api.close()
