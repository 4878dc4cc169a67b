"""The only module that writes to the Kubernetes API.

Objects are read and written as plain JSON through ``kubernetes_asyncio``'s ApiClient,
so every kind goes through the same few calls. Every write of a child is a server-side
apply of its complete desired manifest under one field manager (``vgate-operator``): the
server merges it, defaults it, removes what this manager set before and no longer sets,
and keeps every other manager's fields (``kubectl rollout restart``'s annotation, a
defaulted ``ingressClassName``). A child is only applied when a read shows it differs
(:func:`~vgate_operator.drift.in_sync`), so a pass with nothing to change writes nothing.

An existing object with a child's name that this resource does not control is never
taken over: it is reported as a conflict and left alone. Deletion tolerates 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from vgate_operator.builders.common import MANAGED_BY, Manifest, Owner
from vgate_operator.drift import in_sync

log = logging.getLogger(__name__)

#: kind -> (API prefix, plural)
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
    "VGateDeployment": ("/apis/vgate.io/v1alpha1", "vgatedeployments"),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
    "Event": ("/api/v1", "events"),
}
_JSON = {200: "object", 201: "object"}
#: The field manager of every server-side apply; its fields are the operator's.
FIELD_MANAGER = "vgate-operator"
#: The field manager of a worker Deployment's ``spec.replicas`` once autoscaling owns it.
AUTOSCALER_MANAGER = "vgate-autoscaler"
APPLY = "application/apply-patch+yaml"


@dataclass
class ApplyResult:
    """What one apply pass saw and did."""

    live: dict[tuple[str, str], Manifest]
    writes: int = 0
    #: Objects that exist under a child's name but belong to someone else (not applied).
    conflicts: list[str] = field(default_factory=list)


async def connect() -> client.ApiClient:
    """An API client configured in-cluster, else from KUBECONFIG / ~/.kube/config."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        await config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


class KubeApi:
    """Create/patch/delete children as JSON; 404- and 409-tolerant where that is safe."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._passes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        # One pass at a time per resource: the resync timer and an update handler must not
        # interleave writes from two generations. Unused locks are dropped with their last user.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        #: uid -> (generation, monotonic time): a refused pass is not retried by the resync
        #: timer before then, unless the resource's generation moved on.
        self.refused_until: dict[str, tuple[int, float]] = {}

    @contextlib.asynccontextmanager
    async def exclusive(self, uid: str) -> AsyncIterator[None]:
        """Serialize passes over one resource; :meth:`close` waits for passes in flight."""
        lock = self._locks.get(uid)
        if lock is None:
            lock = self._locks[uid] = asyncio.Lock()
        self._passes += 1
        self._idle.clear()
        try:
            async with lock:
                yield
        finally:
            self._passes -= 1
            if not self._passes:
                self._idle.set()

    async def close(self, grace: float = 10.0) -> None:
        """Let passes in flight finish (kopf does not cancel timers on exit), then close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        self.closed = True
        await self._api.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> Manifest:
        """One request; the answer is the JSON object the server sent (every call asks for one)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        answer: Manifest = await self._api.call_api(
            path,
            method,
            query_params=query,
            header_params=headers,
            body=body,
            response_types_map=_JSON,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return answer

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    async def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        """One object as JSON, or None if it does not exist."""
        try:
            return await self.call("GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_owned(self, kind: str, owner: Owner) -> list[Manifest]:
        """Objects of ``kind`` controlled by ``owner`` (by label and ownerReference uid)."""
        selector = f"app.kubernetes.io/instance={owner.name},app.kubernetes.io/managed-by={MANAGED_BY}"
        found = await self.call("GET", self._path(kind, owner.namespace), query=[("labelSelector", selector)])
        items = found.get("items") or []
        return [obj for obj in items if _controlled_by(obj, owner)]

    async def apply(self, owner: Owner, desired: Manifest) -> tuple[Manifest, bool, str | None]:
        """Make one child match ``desired``: (live object, whether it wrote, conflict or None)."""
        kind, meta = desired["kind"], desired["metadata"]
        live = await self.get(kind, meta["namespace"], meta["name"])
        body = desired
        if live is not None:
            if not _controlled_by(live, owner):
                return live, False, _foreign(kind, live)
            if in_sync(desired, live):
                return live, False, None
            await self._hand_over_replicas(desired, live)
            # The resourceVersion we checked: if the object changed hands since, the server
            # answers 409 and the next pass looks again, rather than applying over it.
            version = (live.get("metadata") or {}).get("resourceVersion")
            body = {**desired, "metadata": {**meta, "resourceVersion": version}} if version else desired
        path = self._path(kind, meta["namespace"], meta["name"])
        applied = await self.call(
            "PATCH", path, body, APPLY, query=[("fieldManager", FIELD_MANAGER), ("force", "true")]
        )
        log.info(
            "%s %s %s/%s", "created" if live is None else "updated", kind, meta["namespace"], meta["name"]
        )
        return applied, True, None

    async def _hand_over_replicas(self, desired: Manifest, live: Manifest) -> None:
        """Before an apply stops sending a Deployment's replicas, give them to the autoscaler.

        Server-side apply resets a field its only manager stops sending (to 1, for replicas):
        the autoscaler's manager first applies the live count, so the operator's next apply
        leaves it where it is (Kubernetes' documented hand-over of ``replicas`` to an HPA).
        """
        if desired["kind"] != "Deployment" or "replicas" in desired["spec"]:
            return
        if not _owns_replicas(live, FIELD_MANAGER):
            return
        meta = desired["metadata"]
        replicas = int((live.get("spec") or {}).get("replicas", 1))
        await self.scale(meta["namespace"], meta["name"], replicas)
        log.info(
            "%s/%s: replicas (%d) handed over to %s",
            meta["namespace"],
            meta["name"],
            replicas,
            AUTOSCALER_MANAGER,
        )

    async def scale(self, namespace: str, name: str, replicas: int) -> Manifest:
        """Set a Deployment's replicas as the autoscaler (its own field manager, nothing else)."""
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        }
        path = self._path("Deployment", namespace, name)
        return await self.call(
            "PATCH", path, body, APPLY, query=[("fieldManager", AUTOSCALER_MANAGER), ("force", "true")]
        )

    async def select(self, kind: str, namespace: str, selector: str) -> list[Manifest]:
        """Objects of ``kind`` matching a label selector."""
        found = await self.call("GET", self._path(kind, namespace), query=[("labelSelector", selector)])
        return list(found.get("items") or [])

    async def post_event(self, involved: Manifest, reason: str, message: str, kind: str = "Normal") -> None:
        """A Kubernetes Event about ``involved`` (what ``kubectl describe`` shows)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.call("POST", self._path("Event", meta["namespace"]), body, "application/json")

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge ``status`` into a VGateDeployment's status; False if the resource is gone."""
        path = self._path("VGateDeployment", namespace, name) + "/status"
        try:
            await self.call("PATCH", path, {"status": status}, "application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one object; False if it was already gone."""
        try:
            await self.call("DELETE", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        log.info("deleted %s %s/%s", kind, namespace, name)
        return True

    async def apply_all(self, owner: Owner, desired: list[Manifest]) -> ApplyResult:
        """Apply every desired child, then delete owned children no longer desired."""
        result = ApplyResult(live={})
        for manifest in desired:
            live, wrote, conflict = await self.apply(owner, manifest)
            if conflict:
                result.conflicts.append(conflict)
                continue
            result.live[(manifest["kind"], manifest["metadata"]["name"])] = live
            result.writes += wrote
        result.writes += await self.prune(owner, desired)
        return result

    async def prune(self, owner: Owner, desired: list[Manifest]) -> int:
        """Delete children of kinds that come and go (removed models, a disabled Ingress)."""
        wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
        deleted = 0
        for kind in ("Deployment", "Service", "Ingress", "ScaledObject"):
            for obj in await self._owned_or_none(kind, owner, wanted):
                name = obj["metadata"]["name"]
                if (kind, name) not in wanted:
                    deleted += await self.delete(kind, owner.namespace, name)
        return deleted

    async def _owned_or_none(self, kind: str, owner: Owner, wanted: set[tuple[str, str]]) -> list[Manifest]:
        # KEDA may not be installed: without its CRD there is no ScaledObject to prune.
        try:
            return await self.list_owned(kind, owner)
        except ApiException as exc:
            if exc.status == 404 and kind == "ScaledObject" and not any(k == kind for k, _ in wanted):
                return []
            raise


def _owns_replicas(live: Manifest, manager: str) -> bool:
    """Whether ``manager``'s apply owns the object's ``spec.replicas`` (its managedFields say)."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and "f:replicas" in spec:
            return True
    return False


def _foreign(kind: str, live: Manifest) -> str:
    meta = live.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    whose = f"controlled by {refs[0].get('kind')} {refs[0].get('name')}" if refs else "not controlled by it"
    return f"{kind} {meta.get('name')} already exists and is {whose}"


def _controlled_by(obj: Manifest, owner: Owner) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in refs)
