"""A KMock Kubernetes emulator that behaves closer to a real API server.

Plain ``kmock.KubernetesEmulator`` stores bodies as sent. This subclass adds what
clients such as kopf and ``kubernetes_asyncio`` rely on:

* ``metadata.uid``, ``resourceVersion``, ``generation`` and ``creationTimestamp`` on
  create; a new ``resourceVersion`` on every update, and a new ``generation`` only
  when something other than metadata and status changes (never through ``/status``);
* a new ``resourceVersion`` when a DELETE only marks an object with finalizers;
* HTTP 422 rather than 500 when a JSON patch's ``test`` operation fails, so clients
  that patch with optimistic concurrency (kopf) re-read instead of retrying blindly;
* ``GET /api/v1/namespaces[/NAME]`` (list, fetch and watch), which KMock parses as a
  namespaced path and answers with HTTP 500;
* ``watch=True`` read as a watch: the API server parses query booleans like Go's
  ``ParseBool``, and the Python client sends ``True``, while KMock only knows ``true``;
* the rules of the real server that hid bugs from this tier before:
  - empty strings and lists are dropped from built-in kinds, as Go's ``omitempty`` drops
    them from what the server returns (``env: []`` and ``value: ""`` come back absent);
    custom resources are stored as sent;
  - with a ``status`` subresource, a create or a main-resource write ignores ``status``
    and a ``/status`` write changes nothing but ``status``;
  - server-side apply (``application/apply-patch+yaml``) creates an absent object and
    merges into an existing one, refusing with 409 when a ``resourceVersion`` it carries
    is not the current one. Field ownership is not modelled (the merge is a plain JSON
    merge): removal of fields a manager stopped applying is for the real control-plane tier.

:class:`SliceAPI` adds EndpointSlices written as the EndpointSlice controller writes them,
and the failures a real API server shows: watches that expire (410 Gone) or drop,
events that never arrive, and an API that answers 503 for a while.

Label selectors, garbage collection, defaulting, RBAC and schema validation are still
absent: test those against pure builders or on the real control-plane tier (tests/cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal.dicts import patch_dict

from tests.support.waiting import eventually

_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")

#: Built-in kinds an operator typically touches: (api group/version, plural, kind, namespaced).
BUILTIN_RESOURCES: tuple[tuple[str, str, str, bool], ...] = (
    # kopf waits for namespaces to be discoverable before it watches anything namespaced.
    ("v1", "namespaces", "Namespace", False),
    ("v1", "services", "Service", True),
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "serviceaccounts", "ServiceAccount", True),
    ("v1", "secrets", "Secret", True),
    ("v1", "events", "Event", True),
    ("apps/v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("networking.k8s.io/v1", "ingresses", "Ingress", True),
    ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False),
)
ALL_VERBS = ("get", "list", "watch", "create", "patch", "update", "delete")


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for an API server at ``server`` (plain HTTP, no credentials)."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(cfg))
    return path


APPLY = "application/apply-patch+yaml"


def _content_type(request: kmock.Request) -> str:
    for key, value in (request.headers or {}).items():
        if key.lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return ""


def _builtin(resource: Any) -> bool:
    """A Kubernetes kind (Go structs: ``omitempty`` applies), not a custom resource (stored as sent)."""
    group = resource.group or ""
    return "." not in group or group.endswith(".k8s.io")


def omit_empty(value: Any) -> Any:
    """``value`` without empty strings and lists, as the API server returns what it stored.

    Maps are kept even when empty (``emptyDir: {}`` is a pointer to an empty struct in Go,
    which ``omitempty`` keeps); ``None`` stays, as in a merge patch it deletes a key.
    """
    if isinstance(value, dict):
        return {k: omit_empty(v) for k, v in value.items() if v != "" and v != []}
    if isinstance(value, list):
        return [omit_empty(v) for v in value]
    return value


def _strip(obj: Any) -> Any:
    """What ``generation`` tracks: everything but metadata and status."""
    if not isinstance(obj, dict):
        return obj
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@attrs.define(kw_only=True)
class KubeCluster(kmock.KubernetesEmulator):
    """KMock emulator with server-set metadata and the core namespaces endpoints."""

    namespaces: set[str] = attrs.field(factory=lambda: {"default"})
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)

    def declare(
        self, api_version: str, plural: str, kind: str, *, namespaced: bool = True, status: bool = False
    ) -> None:
        """Make a resource discoverable (kopf and dynamic clients look it up first)."""
        self.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            verbs=set(ALL_VERBS),
            subresources={"status"} if status else set(),
        )

    def declare_builtins(self, only: Iterable[str] | None = None) -> None:
        """Declare the common built-in kinds (optionally only these plurals)."""
        wanted = set(only) if only is not None else None
        for api_version, plural, kind, namespaced in BUILTIN_RESOURCES:
            if wanted is None or plural in wanted:
                self.declare(api_version, plural, kind, namespaced=namespaced)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing at this emulator (plain HTTP on loopback, no credentials)."""
        return write_kubeconfig(path, str(self.url).rstrip("/"))

    def writes(self, *plurals: str, namespace: str | None = None) -> list[kmock.Request]:
        """Create/update/delete requests served so far, optionally for some plurals or a namespace."""
        found = []
        for request in list(self._requests):
            if request.action not in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
                continue
            if request.resource is None or (plurals and request.resource.plural not in plurals):
                continue
            if namespace is not None and request.namespace != namespace:
                continue
            found.append(request)
        return found

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match is None or raw_request.method != "GET":
            return await super().__call__(raw_request)
        return await self._serve_namespaces(raw_request, match.group("name"))

    def _namespace(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
            "status": {"phase": "Active"},
        }

    async def _serve_namespaces(
        self, raw: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        known = self.namespaces | {ns for _, ns, _ in self.objects if ns}
        if name is not None:
            if name not in known:
                return aiohttp.web.json_response(
                    {"kind": "Status", "code": 404, "reason": "NotFound"}, status=404
                )
            return aiohttp.web.json_response(self._namespace(name))
        if raw.query.get("watch") != "true":
            items = [self._namespace(ns) for ns in sorted(known)]
            return aiohttp.web.json_response(
                {"kind": "NamespaceList", "metadata": {"resourceVersion": "1"}, "items": items}
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw)
        for ns in sorted(known):
            await response.write(
                json.dumps({"type": "ADDED", "object": self._namespace(ns)}).encode() + b"\n"
            )
        # Namespaces are static here: hold the watch open until the client or server leaves.
        await asyncio.Event().wait()
        return response  # pragma: no cover

    def _has_status(self, resource: Any) -> bool:
        for key, info in self.resources.items():
            if getattr(key, "plural", None) == resource.plural and "status" in (info.subresources or ()):
                return True
        return False

    def _server_rules(self, request: kmock.Request) -> None:
        """Rewrite a write as the real API server would take it (see the module docstring)."""
        data = request.data
        if request.resource is None or not isinstance(data, dict):
            return
        if request.action == kmock.action.UPDATE and _content_type(request) == APPLY:
            key = (request.resource, request.namespace, request.name)
            exists = key in self.objects and not self.objects[key].deleted
            data = copy.deepcopy(data)
            wanted = (data.get("metadata") or {}).pop("resourceVersion", None)
            current = (self.objects[key].raw.get("metadata") or {}).get("resourceVersion") if exists else None
            if wanted is not None and wanted != current:
                raise kmock.KubernetesError(
                    status=409, reason="Conflict", message="the object has been modified; apply again"
                )
            if not exists:
                object.__setattr__(request, "action", kmock.action.CREATE)
        if request.action in (kmock.action.CREATE, kmock.action.UPDATE) and self._has_status(
            request.resource
        ):
            if request.subresource == "status":
                data = {"status": data.get("status") or {}}
            else:
                data = {k: v for k, v in data.items() if k != "status"}
        object.__setattr__(request, "data", omit_empty(data) if _builtin(request.resource) else data)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.LIST and request.params.get("watch", "").lower() in ("true", "1"):
            object.__setattr__(request, "action", kmock.action.WATCH)
        self._server_rules(request)
        if request.resource is not None and isinstance(request.data, dict | list):
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._stamp_create(request.data)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._stamp_update(request)
        if (
            request.resource is not None
            and request.action == kmock.action.DELETE
            and request.name is not None
        ):
            self._stamp_delete(request)
        return await super()._handle(request)

    def _stamp_delete(self, request: kmock.Request) -> None:
        # Marking an object with finalizers as deleting is an update: it gets a new
        # resourceVersion, or watchers that track versions (kopf) may ignore the event.
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            self.objects[key].patch({"metadata": {"resourceVersion": str(next(self._versions))}})

    def _stamp_create(self, body: dict[str, Any]) -> None:
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        meta.setdefault(
            "creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )

    def _stamp_update(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator answers 404 itself
        current = self.objects[key].raw
        meta = dict(current.get("metadata") or {})
        changes = {"resourceVersion": str(next(self._versions))}
        try:
            after = patch_dict(current, request.data)
        except jsonpatch.JsonPatchException as exc:
            # A failed "test" operation (optimistic concurrency) is a 422, as from a real server.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        if request.subresource != "status" and _strip(after) != _strip(current):
            changes["generation"] = int(meta.get("generation") or 0) + 1
        if isinstance(request.data, dict):
            request.data.setdefault("metadata", {}).update(changes)
        else:
            request.data.extend(
                {"op": "add", "path": f"/metadata/{field}", "value": value}
                for field, value in changes.items()
            )


# -- EndpointSlices ----------------------------------------------------------------------------

SLICES_NAMESPACE = "ai"
SLICES = "discovery.k8s.io/v1/endpointslices"
_SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{SLICES_NAMESPACE}/endpointslices"


def endpoint(address: str, *, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    """One endpoint of an EndpointSlice, with the conditions the controller sets."""
    conditions = {"ready": ready, "serving": ready or terminating, "terminating": terminating}
    return {"addresses": [address], "conditions": conditions}


def endpoint_slice(name: str, service: str, *endpoints: dict[str, Any], port: int = 8000) -> dict[str, Any]:
    """An EndpointSlice of ``service`` as the EndpointSlice controller writes it."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": SLICES_NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}  # fmt: skip


@attrs.define(kw_only=True)
class SliceAPI(KubeCluster):
    """EndpointSlices in ``SLICES_NAMESPACE``, with the failure modes a test switches on."""

    #: Answer lists and new watches with 503, as an unreachable control plane would.
    down: bool = False
    #: Keep open watches open but deliver none of their events (a stuck or lagging watch).
    deaf: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.declare_builtins(only=["endpointslices"])

    async def _serve_list(self, request: kmock.Request) -> Any:
        if self.down:
            raise kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="API down")
        return await super()._serve_list(request)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        if self.down:
            raise kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="API down")
        # aclosing: a stream this ends unsubscribes at once, so watching() sees only live watches.
        async with contextlib.aclosing(super()._serve_watch(request)) as events:
            async for event in events:
                kind = event.get("type") if isinstance(event, dict) else None
                if kind == "test:drop":
                    return  # the server closes the stream
                if kind == "test:expire":
                    yield {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
                    return
                if not (self.deaf and kind):
                    yield event

    async def watching(self) -> None:
        """Wait until a watch is subscribed to changes.

        KMock ignores resourceVersion: a change made between a list and the watch that
        follows it is never delivered (a real API server replays it). Tests that change
        slices under a running source wait for this first.
        """
        await eventually(lambda: self._buses[kmock.resource(SLICES)].consumer_count > 0, interval=0.01)

    async def drop_watches(self) -> None:
        await self._signal_watches("test:drop")

    async def expire_watches(self) -> None:
        await self._signal_watches("test:expire")

    async def _signal_watches(self, kind: str) -> None:
        # Open watches filter bus events by namespace, so the signal carries one.
        event = {"type": kind, "object": {"metadata": {"namespace": SLICES_NAMESPACE}}}
        await self._buses[kmock.resource(SLICES)].put(event)

    def count(self, action: kmock.action) -> int:
        """Requests for EndpointSlices with ``action`` served so far."""
        return sum(1 for r in self if r.action == action and r.resource == kmock.resource(SLICES))

    def has_slice(self, name: str) -> bool:
        return (kmock.resource(SLICES), SLICES_NAMESPACE, name) in self.objects

    # -- what the EndpointSlice controller does, through the API
    async def create(self, obj: Mapping[str, Any]) -> None:
        async with self.post(_SLICES_PATH, json=obj) as resp:
            assert resp.status == 200, await resp.text()

    async def patch_slice(self, name: str, patch: Mapping[str, Any]) -> None:
        async with self.patch(f"{_SLICES_PATH}/{name}", json=patch) as resp:
            assert resp.status == 200, await resp.text()

    async def remove(self, name: str) -> None:
        async with self.delete(f"{_SLICES_PATH}/{name}") as resp:
            assert resp.status == 200, await resp.text()
