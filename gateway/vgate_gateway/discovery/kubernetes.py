"""Kubernetes discovery: worker endpoints from the EndpointSlices of their Services.

Level-based, like a controller: the source keeps every relevant EndpointSlice by
name, and after each change it recomputes and publishes the *complete* snapshot.
It lists, then watches from the list's resourceVersion; when the watch expires
(410 Gone), drops, or fails, it lists again; and it re-lists at least every
``resync_interval_s`` whatever the watch says, so a slice whose deletion event was
missed cannot keep a dead pod in the pool. An empty snapshot is only ever
published from a successful list: while the API server is unreachable the pool
keeps the last good view.

The conversion from EndpointSlice objects (plain JSON dicts, as the API serves
them) to :class:`DiscoveredEndpoint` is pure and lives in module-level functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from vgate_gateway.discovery import Publish
from vgate_gateway.upstream.pool import DiscoveredEndpoint

if TYPE_CHECKING:
    from vgate_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: The port of a slice that carries the OpenAI API, by name; else its first port.
HTTP_PORT_NAME = "http"

_LIST_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
#: A watch shorter than this counts as a failure for the backoff, so a server that
#: closes every stream at once does not make the source spin.
_MIN_HEALTHY_WATCH_S = 1.0
_BACKOFF_BASE_S = 0.2
_BACKOFF_MAX_S = 10.0

Slice = Mapping[str, Any]


# -- pure conversion ---------------------------------------------------------------------------


def label_selector(services: Iterable[str]) -> str:
    """The set-based selector for the EndpointSlices of ``services``."""
    return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(set(services)))})"


def models_by_service(services: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """Invert ``model -> Service``: one Service may serve several model names."""
    inverted: dict[str, set[str]] = {}
    for model, service in services.items():
        inverted.setdefault(service, set()).add(model)
    return {service: frozenset(models) for service, models in inverted.items()}


def slice_service(slice_: Slice) -> str | None:
    """The Service that owns an EndpointSlice, from its well-known label."""
    labels = (slice_.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    return service if isinstance(service, str) else None


def slice_port(slice_: Slice) -> int | None:
    """The port named ``http``, else the first port with a number; None if the slice has none."""
    ports = [p for p in slice_.get("ports") or [] if isinstance(p, Mapping) and p.get("port")]
    for port in ports:
        if port.get("name") == HTTP_PORT_NAME:
            return int(port["port"])
    return int(ports[0]["port"]) if ports else None


def endpoint_url(address: str, port: int) -> str:
    """``http://address:port``, with an IPv6 address in brackets."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"http://{host}:{port}"


def _target(endpoint: Mapping[str, Any]) -> str | None:
    """The object an endpoint stands for (its pod), from ``targetRef``; None if it has none."""
    ref = endpoint.get("targetRef")
    if not isinstance(ref, Mapping) or not (ref.get("uid") or ref.get("name")):
        return None
    return str(ref.get("uid") or f"{ref.get('kind')}/{ref.get('namespace')}/{ref.get('name')}")


def _slice_entries(slice_: Slice, models: frozenset[str]) -> list[tuple[str, DiscoveredEndpoint]]:
    """(identity, endpoint) pairs of one slice: a pod and port, or the URL for an untargeted endpoint."""
    port = slice_port(slice_)
    if port is None:
        return []
    found: list[tuple[str, DiscoveredEndpoint]] = []
    for endpoint in slice_.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        ready = conditions.get("ready")
        terminating = bool(conditions.get("terminating"))
        target = _target(endpoint)
        for address in endpoint.get("addresses") or []:
            ep = DiscoveredEndpoint(
                url=endpoint_url(address, port),
                models=models,
                ready=ready is None or bool(ready),
                terminating=terminating,
            )
            found.append((f"{target}:{port}" if target else ep.url, ep))
    return found


def slice_endpoints(slice_: Slice, models: frozenset[str]) -> list[DiscoveredEndpoint]:
    """The endpoints of one EndpointSlice, each declared to serve ``models``.

    ``ready`` unset means ready (the API's own rule). A terminating endpoint is kept
    with ``terminating=True`` whether or not it is still serving, so the requests it
    has in flight finish while it gets no new ones.
    """
    return [ep for _, ep in _slice_entries(slice_, models)]


def _preferred_url(a: str, b: str) -> str:
    """Of two addresses of one pod, the IPv4 one (reachable from a single-stack client), then the lower."""
    return min(a, b, key=lambda url: ("[" in url, url))


def build_snapshot(slices: Iterable[Slice], services: Mapping[str, str]) -> list[DiscoveredEndpoint]:
    """The complete endpoint list for ``slices``, one per pod and port, merged and sorted by URL.

    Slices of Services not in ``services`` are ignored. A dual-stack Service has an IPv4
    and an IPv6 slice listing the same pods: endpoints are identified by their
    ``targetRef`` (the pod), so each pod is one upstream, at its IPv4 address. An endpoint
    that appears in several slices (a pod behind two models' Services, or a slice split in
    flight) serves the union of their models; it is ready only if every slice says so and
    terminating if any does — the conservative reading of a disagreement.
    """
    owners = models_by_service(services)
    merged: dict[str, DiscoveredEndpoint] = {}
    for slice_ in slices:
        models = owners.get(slice_service(slice_) or "")
        if models is None:
            continue
        for key, ep in _slice_entries(slice_, models):
            seen = merged.get(key)
            if seen is not None:
                ep = DiscoveredEndpoint(
                    url=_preferred_url(seen.url, ep.url),
                    models=seen.models | ep.models,
                    ready=seen.ready and ep.ready,
                    terminating=seen.terminating or ep.terminating,
                )
            merged[key] = ep
    # Two pods never share an address, but an untargeted endpoint may repeat a targeted one's URL.
    by_url: dict[str, DiscoveredEndpoint] = {}
    for ep in merged.values():
        seen = by_url.get(ep.url)
        if seen is not None:
            ep = DiscoveredEndpoint(
                url=ep.url,
                models=seen.models | ep.models,
                ready=seen.ready and ep.ready,
                terminating=seen.terminating or ep.terminating,
            )
        by_url[ep.url] = ep
    return [by_url[url] for url in sorted(by_url)]


def resolve_namespace(configured: str | None, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The configured namespace, else the pod's own, else ``default``."""
    if configured:
        return configured
    try:
        own = sa_file.read_text().strip()
    except OSError:
        own = ""
    return own or "default"


# -- the watching source -----------------------------------------------------------------------


#: What a failed list or watch can raise; anything else is a bug and propagates.
#: A non-2xx answer or an ERROR watch event is an ApiException with the HTTP status.
_API_ERRORS = (aiohttp.ClientError, ApiException, TimeoutError, ValueError, OSError)


class _SliceApi(Protocol):
    """The one call discovery makes, as ``kubernetes_asyncio`` runs it with ``_preload_content=False``:
    the answer is the raw aiohttp response (its stubs promise the parsed list), and a ``None``
    parameter is left out of the query."""

    def list_namespaced_endpoint_slice(
        self,
        namespace: str,
        *,
        label_selector: str,
        watch: bool = ...,
        resource_version: str | None = ...,
        timeout_seconds: int = ...,
        _preload_content: bool,
        _request_timeout: float | tuple[float, float | None],
    ) -> Awaitable[aiohttp.ClientResponse]: ...


@dataclass
class _Backoff:
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay: float = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (self.failures - 1))
        return delay * random.uniform(0.5, 1.0)  # jitter: many gateways must not re-list in step

    def reset(self) -> None:
        self.failures = 0


async def load_api_client() -> client.ApiClient:
    """An ApiClient by the standard rules: in-cluster account, else ``KUBECONFIG`` / ~/.kube/config."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration=configuration)
        except ConfigException as exc:
            # In a pod without a mounted token (automountServiceAccountToken: false).
            log.info("kubernetes discovery: no in-cluster service account (%s); trying kubeconfig", exc)
    # Read KUBECONFIG now: the library's default path was fixed when it was imported.
    await config.load_kube_config(
        config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
    )
    return client.ApiClient(configuration=configuration)


class KubernetesDiscovery:
    """Publishes the endpoints behind the worker Services of ``services`` (model -> Service)."""

    def __init__(self, services: Mapping[str, str], namespace: str | None, resync_interval_s: float) -> None:
        if not services:
            raise ValueError("Kubernetes discovery needs at least one model -> Service mapping")
        self.services = dict(services)
        self.namespace = resolve_namespace(namespace)
        self.resync_interval_s = resync_interval_s
        self._owned_services = frozenset(self.services.values())
        self._selector = label_selector(self._owned_services)
        self._slices: dict[str, Slice] = {}
        self._published: list[DiscoveredEndpoint] | None = None

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> KubernetesDiscovery:
        return cls(settings.services, settings.namespace, settings.resync_interval_s)

    async def run(self, publish: Publish) -> None:
        """List and watch until cancelled; the ApiClient is closed on the way out."""
        try:
            api_client = await load_api_client()
        except (ConfigException, OSError) as exc:
            log.error("kubernetes discovery: no usable cluster configuration: %s", exc)
            raise
        log.info(
            "kubernetes discovery: watching EndpointSlices %r in namespace %s (resync every %.0fs)",
            self._selector,
            self.namespace,
            self.resync_interval_s,
        )
        try:
            await self._loop(cast(_SliceApi, client.DiscoveryV1Api(api_client)), publish)
        finally:
            await api_client.close()

    async def _loop(self, api: _SliceApi, publish: Publish) -> None:
        backoff = _Backoff()
        while True:
            try:
                resource_version = await self._relist(api, publish)
            except _API_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning(
                    "kubernetes discovery: listing EndpointSlices failed (%s); keeping the last %d "
                    "endpoints, retrying in %.1fs",
                    _describe(exc),
                    len(self._published or ()),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            started = time.monotonic()
            outcome = await self._watch_until_resync(api, resource_version, publish)
            short = time.monotonic() - started < _MIN_HEALTHY_WATCH_S
            if outcome == "failed" or (outcome == "ended" and short):
                await asyncio.sleep(backoff.next_delay())
            else:
                backoff.reset()

    async def _relist(self, api: _SliceApi, publish: Publish) -> str | None:
        """Replace the whole view with a fresh list; returns its resourceVersion."""
        resp = await api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self._selector,
            _preload_content=False,
            _request_timeout=_LIST_TIMEOUT_S,
        )
        try:
            body = await _read_json(resp)
        finally:
            resp.release()
        slices = {}
        for item in body.get("items") or []:
            name = (item.get("metadata") or {}).get("name")
            if name and slice_service(item) in self._owned_services:
                slices[name] = item
        self._slices = slices
        self._publish(publish, always=True)
        version = (body.get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    async def _watch_until_resync(
        self, api: _SliceApi, resource_version: str | None, publish: Publish
    ) -> str:
        """Follow the watch until the resync is due or the stream ends.

        Returns ``"resync"`` (the interval is up), ``"ended"`` (closed or expired by
        the server) or ``"failed"``; every outcome leads to a fresh list.
        """
        deadline = asyncio.timeout(self.resync_interval_s)
        try:
            async with deadline:
                await self._watch(api, resource_version, publish)
            log.debug("kubernetes discovery: watch closed by the server; re-listing")
        except TimeoutError as exc:
            if not deadline.expired():  # a connect timeout, not the resync
                log.warning("kubernetes discovery: watch timed out (%s); re-listing", _describe(exc))
                return "failed"
            log.debug("kubernetes discovery: periodic resync")
            return "resync"
        except ApiException as exc:
            if exc.status == 410:
                log.info("kubernetes discovery: watch expired (410 Gone); re-listing")
                return "ended"
            log.warning("kubernetes discovery: watch failed (%s); re-listing", _describe(exc))
            return "failed"
        except _API_ERRORS as exc:
            log.warning("kubernetes discovery: watch dropped (%s); re-listing", _describe(exc))
            return "failed"
        return "ended"

    async def _watch(self, api: _SliceApi, resource_version: str | None, publish: Publish) -> None:
        # Read by hand rather than with kubernetes_asyncio.watch.Watch: with a raw response
        # Watch does not check the HTTP status, returns lines that are not JSON as events,
        # and raises bare Exception or KeyError for a malformed event or a Status without a
        # reason; caught narrowly here, every one of them leads to a fresh list instead of
        # ending discovery with the pool frozen.
        resp = await api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=max(1, int(self.resync_interval_s)),
            _preload_content=False,
            _request_timeout=(_CONNECT_TIMEOUT_S, None),
        )
        try:
            if resp.status != 200:
                raise ApiException(status=resp.status, reason=_status_message(await resp.read()))
            async for line in resp.content:
                if line.strip() and self._apply(json.loads(line)):
                    self._publish(publish)
        finally:
            resp.close()

    def _apply(self, event: Mapping[str, Any]) -> bool:
        """Fold one watch event into the view; True if the view may have changed."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(kind, str) or not isinstance(obj, Mapping):
            raise ValueError("the watch answered something that is not a watch event")
        if kind == "ERROR":
            raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message") or obj))
        name = (obj.get("metadata") or {}).get("name")
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not name:
            return False  # BOOKMARK, or nothing we can key
        if kind != "DELETED" and slice_service(obj) in self._owned_services:
            self._slices[name] = obj
        else:
            # Deleted, or relabelled away from our Services (the server-side selector may be ignored).
            self._slices.pop(name, None)
        return True

    def _publish(self, publish: Publish, *, always: bool = False) -> None:
        """Publish the recomputed snapshot: after a list always, after an event if it changed.

        Skipping unchanged snapshots matters because every publish wakes the health
        checker, and a watch (re)start replays every slice as ADDED.
        """
        snapshot = build_snapshot(self._slices.values(), self.services)
        changed = snapshot != self._published
        if changed:
            log.info("kubernetes discovery: %s", _summary(snapshot))
        self._published = snapshot
        if changed or always:
            publish(snapshot)


async def _read_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    raw = await resp.read()
    if resp.status != 200:
        raise ApiException(status=resp.status, reason=_status_message(raw))
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("the EndpointSlice list is not a JSON object")
    return body


def _status_message(raw: bytes) -> str:
    """The ``message`` of a Kubernetes Status body, else the start of the raw body."""
    try:
        return str(json.loads(raw).get("message"))
    except (ValueError, AttributeError):
        return raw[:200].decode(errors="replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):  # its own str() is a multi-line dump
        return f"HTTP {exc.status}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _summary(snapshot: Sequence[DiscoveredEndpoint]) -> str:
    ready = sum(1 for ep in snapshot if ep.ready and not ep.terminating)
    terminating = sum(1 for ep in snapshot if ep.terminating)
    return (
        f"{len(snapshot)} endpoints ({ready} ready, {terminating} terminating, "
        f"{len(snapshot) - ready - terminating} not ready)"
    )
