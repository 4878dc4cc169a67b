"""The one level-based reconcile: read the spec, build every child, apply, report status.

Every trigger (create, update, resume, the resync timer) runs the same function, so a
missed or repeated event changes nothing: the outcome depends only on the spec and
the cluster as they are now.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from vgate_operator.autoscale.load import LOAD_PATH, gateway_urls
from vgate_operator.builders import Owner, build_all
from vgate_operator.builders.common import GROUP, KIND, Manifest
from vgate_operator.k8s import KubeApi
from vgate_operator.spec import InvalidSpecError, VGateDeploymentSpec, gateway_name, parse_spec
from vgate_operator.status import (
    adapter_status,
    failed_status,
    healthy_status,
    new_deprecation,
    now_iso,
    status_patch,
)

log = logging.getLogger(__name__)


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _write_status(patch: kopf.Patch, previous: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    changes = status_patch(previous, new, now_iso())
    for key, value in changes.items():
        patch.status[key] = value


async def reconcile(
    body: Mapping[str, Any],
    patch: kopf.Patch,
    api: KubeApi,
    *,
    retry_delay: float,
    refused_delay: float | None = None,
    timer: bool = False,
) -> int:
    """Converge one VGateDeployment; returns the number of writes to its children.

    Raises ``kopf.PermanentError`` for an invalid spec (after recording why in the
    Ready condition) so kopf does not retry until the spec changes, and
    ``kopf.TemporaryError`` when the API refuses or fails, so kopf backs off: after
    ``retry_delay`` when the server failed or was unreachable, after ``refused_delay``
    when it refused the request (a 4xx, which only a change of spec or cluster fixes) or
    when a foreign object holds a child's name. The resync timer records an invalid spec
    or a conflict but does not raise: it runs again anyway.
    """
    owner = owner_of(body)
    delays = (retry_delay, refused_delay if refused_delay is not None else retry_delay)
    async with api.exclusive(owner.uid):
        return await _reconcile(owner, body, patch, api, delays=delays, timer=timer)


async def _reconcile(
    owner: Owner,
    body: Mapping[str, Any],
    patch: kopf.Patch,
    api: KubeApi,
    *,
    delays: tuple[float, float],
    timer: bool,
) -> int:
    # Read the body only now: a timer's body is live and may have moved on while waiting.
    generation = int(body["metadata"].get("generation") or 0)
    previous = dict(body.get("status") or {})
    refused = api.refused_until.get(owner.uid)
    if timer and refused is not None and refused[0] == generation and time.monotonic() < refused[1]:
        return 0  # refused recently: the same request would be refused again
    api.refused_until.pop(owner.uid, None)
    try:
        spec = parse_spec(owner.name, body.get("spec") or {})
    except InvalidSpecError as exc:
        _write_status(patch, previous, failed_status(previous, "InvalidSpec", str(exc), generation))
        if timer:
            return 0
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    try:
        result = await api.apply_all(owner, build_all(owner, spec))
    except (ApiException, aiohttp.ClientError) as exc:
        message = _describe(exc)
        _write_status(patch, previous, failed_status(previous, "ApplyFailed", message, generation))
        if _refused(exc):
            api.refused_until[owner.uid] = (generation, time.monotonic() + delays[1])
        raise kopf.TemporaryError(message, delay=delays[_refused(exc)]) from exc
    if result.conflicts:
        message = "; ".join(result.conflicts) + ": rename or delete it, the operator does not adopt objects"
        _write_status(patch, previous, failed_status(previous, "ForeignObject", message, generation))
        if timer:
            return result.writes
        raise kopf.TemporaryError(message, delay=delays[1])
    status = healthy_status(owner, spec, generation, result.live)
    status["adapters"] = await _adapters(api, owner, spec)
    deprecated = new_deprecation(previous, status)
    if deprecated is not None:
        log.warning("%s/%s: %s", owner.namespace, owner.name, deprecated)
    _write_status(patch, previous, status)
    if result.writes:
        log.info("%s/%s: %d child object(s) written", owner.namespace, owner.name, result.writes)
    return result.writes


#: How long the operator waits for a gateway's /stats (adapter counts) before leaving it out.
STATS_TIMEOUT_S = 2.0


async def _adapters(api: KubeApi, owner: Owner, spec: VGateDeploymentSpec) -> list[dict[str, Any]]:
    """Where each declared adapter is loaded, read from the gateway pods' internal ``/stats``.

    The gateways learn it from every worker's ``/v1/models``. They are found as the
    autoscaler finds them, through their Service's EndpointSlices: no permission beyond
    what the operator holds already. The most workers any gateway saw wins (a gateway
    that started a moment ago may not have seen a load yet); none answering leaves the
    counts out.
    """
    if not any(m.adapters for m in spec.models):
        return []
    service = gateway_name(owner.name)
    try:
        slices = await api.select("EndpointSlice", owner.namespace, f"kubernetes.io/service-name={service}")
    except (ApiException, aiohttp.ClientError) as exc:
        log.debug("%s/%s: gateway endpoints not readable: %s", owner.namespace, owner.name, exc)
        slices = []
    urls = [url.removesuffix(LOAD_PATH) + "/stats" for url in gateway_urls(slices)]
    seen: list[Mapping[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=STATS_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url) as resp:
                    body = await resp.json(content_type=None) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("%s/%s: %s not readable: %s", owner.namespace, owner.name, url, exc)
                continue
            if isinstance(body, dict) and isinstance(body.get("adapters"), dict):
                seen.append(body["adapters"])
    return adapter_status(spec, seen or None)


async def refresh_status(api: KubeApi, namespace: str, name: str, uid: str) -> bool:
    """Recompute replica counts and conditions after a child Deployment changed.

    ``name`` and ``uid`` identify the controlling VGateDeployment (see :func:`controller_of`).
    Only for a resource whose current generation has been applied (otherwise the
    reconcile in progress reports it); writes only what changed. Returns whether it wrote.
    """
    async with api.exclusive(uid):
        body = await api.get("VGateDeployment", namespace, name)  # read once no pass runs
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("uid") != uid or meta.get("deletionTimestamp"):
            return False  # gone, being deleted, or re-created under the same name
        owner = owner_of(body)
        generation = int(meta.get("generation") or 0)
        previous = dict(body.get("status") or {})
        if previous.get("observedGeneration") != generation:
            return False
        try:
            spec = parse_spec(owner.name, body.get("spec") or {})
        except InvalidSpecError:
            return False
        live: dict[tuple[str, str], Manifest | None] = {}
        for manifest in build_all(owner, spec):
            if manifest["kind"] == "Deployment":
                key = (manifest["kind"], manifest["metadata"]["name"])
                live[key] = await api.get("Deployment", namespace, key[1])
        new = healthy_status(owner, spec, generation, live)
        new["adapters"] = previous.get("adapters") or []  # the resync reads them again
        changes = status_patch(previous, new, now_iso())
        return bool(changes) and await api.patch_status(namespace, name, changes)


def controller_of(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the VGateDeployment controlling ``child``, if any."""
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("kind") == KIND
            and ref.get("apiVersion", "").startswith(f"{GROUP}/")
            and ref.get("controller")
        ):
            return str(ref["name"]), str(ref["uid"])
    return None


def _refused(exc: Exception) -> bool:
    """A 4xx the server will answer again until something changes (not 409 or 429: those pass)."""
    return isinstance(exc, ApiException) and 400 <= (exc.status or 0) < 500 and exc.status not in (409, 429)


def _describe(exc: Exception) -> str:
    """The API server's own words: ``Kubernetes API error 422 Unprocessable Entity: <message>``."""
    if isinstance(exc, ApiException):
        head = f"Kubernetes API error {exc.status} {exc.reason or ''}".strip()
        message = api_message(exc.body)
        return f"{head}: {message}" if message else head
    return f"Kubernetes API unreachable: {exc}"


def api_message(body: Any) -> str:
    """The ``message`` of a Kubernetes ``Status`` body (bytes, text or parsed), else ``""``."""
    if isinstance(body, bytes | bytearray):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return text.strip()[:500]
    return str(body.get("message") or "") if isinstance(body, Mapping) else ""
