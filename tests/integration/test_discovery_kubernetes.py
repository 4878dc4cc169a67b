"""Kubernetes discovery against an in-memory Kubernetes API (KMock) over real HTTP.

The source runs as the gateway runs it — a task publishing snapshots — and reads
the API through a kubeconfig file, exactly like ``KUBECONFIG`` outside a cluster.
EndpointSlices are created, patched and deleted through the API, as the
EndpointSlice controller would. ``SliceAPI`` adds the failures a real API server
shows: watches that expire (410 Gone) or drop, events that never arrive, and
an API that answers 503 for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio.config import ConfigException

from tests.support.kmock_cluster import SLICES_NAMESPACE as NAMESPACE
from tests.support.kmock_cluster import SliceAPI, endpoint, endpoint_slice, write_kubeconfig
from tests.support.procs import free_port
from tests.support.waiting import eventually
from vgate_gateway.discovery.kubernetes import KubernetesDiscovery
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.pool import DiscoveredEndpoint

pytestmark = pytest.mark.timeout(60)


class Snapshots:
    """A publish callback that records every snapshot and lets a test wait for one."""

    def __init__(self) -> None:
        self.history: list[dict[str, DiscoveredEndpoint]] = []
        self._changed = asyncio.Event()

    def __call__(self, endpoints: Any) -> None:
        self.history.append({ep.url: ep for ep in endpoints})
        self._changed.set()

    @property
    def latest(self) -> dict[str, DiscoveredEndpoint]:
        return self.history[-1] if self.history else {}

    async def wait_for(
        self, predicate: Callable[[dict[str, DiscoveredEndpoint]], bool], within: float = 10.0
    ) -> dict[str, DiscoveredEndpoint]:
        async with asyncio.timeout(within):
            while not (self.history and predicate(self.latest)):
                self._changed.clear()
                await self._changed.wait()
        return self.latest


@pytest.fixture
async def api() -> AsyncIterator[SliceAPI]:
    async with SliceAPI() as handler, kmock.Server(handler):
        yield handler


@pytest.fixture
def kubeconfig(api: SliceAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster account
    return path


@contextlib.asynccontextmanager
async def discovery(
    services: Mapping[str, str], resync_interval_s: float = GatewaySettings().resync_interval_s
) -> AsyncIterator[Snapshots]:
    """Run the source as the gateway's lifespan does: a task, cancelled at the end."""
    snapshots = Snapshots()
    source = KubernetesDiscovery(services, namespace=NAMESPACE, resync_interval_s=resync_interval_s)
    task = asyncio.create_task(source.run(snapshots))
    try:
        yield snapshots
        assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def has(url: str, *, ready: bool = True, terminating: bool = False) -> Callable[[dict], bool]:
    def check(view: dict[str, DiscoveredEndpoint]) -> bool:
        ep = view.get(url)
        return ep is not None and (ep.ready, ep.terminating) == (ready, terminating)

    return check


def lacks(url: str) -> Callable[[dict], bool]:
    return lambda view: url not in view


A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


@pytest.mark.usefixtures("kubeconfig")
async def test_lifecycle_of_endpoints(api: SliceAPI) -> None:
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1")))
    await api.create(endpoint_slice("dns-x", "kube-dns", endpoint("10.0.0.53")))
    async with discovery({"qwen": "workers"}) as snapshots:
        view = await snapshots.wait_for(has(A))
        await api.watching()
        assert view == {A: DiscoveredEndpoint(A, models=frozenset({"qwen"}))}  # kube-dns is not ours

        await api.patch_slice("workers-a", {"endpoints": [endpoint("10.0.0.1"), endpoint("10.0.0.2")]})
        await snapshots.wait_for(has(B))

        await api.patch_slice(
            "workers-a",
            {"endpoints": [endpoint("10.0.0.1", ready=False, terminating=True), endpoint("10.0.0.2")]},
        )
        await snapshots.wait_for(has(A, ready=False, terminating=True))

        await api.patch_slice("workers-a", {"endpoints": [endpoint("10.0.0.2")]})
        await snapshots.wait_for(lacks(A))

        await api.remove("workers-a")
        await snapshots.wait_for(lambda view: view == {})

    watches = [r for r in api if r.action == kmock.action.WATCH]
    assert watches, "the source never watched"
    assert watches[0].params["labelSelector"] == "kubernetes.io/service-name in (workers)"


@pytest.mark.usefixtures("kubeconfig")
async def test_two_models_share_a_pod(api: SliceAPI) -> None:
    await api.create(endpoint_slice("chat-1", "chat", endpoint("10.0.0.1")))
    await api.create(endpoint_slice("code-1", "code", endpoint("10.0.0.1"), endpoint("10.0.0.2")))
    async with discovery({"qwen-chat": "chat", "qwen-coder": "code"}) as snapshots:
        view = await snapshots.wait_for(lambda v: len(v) == 2 and len(v[A].models) == 2)
        await api.watching()
        assert view[B].models == frozenset({"qwen-coder"})
        await api.remove("code-1")
        view = await snapshots.wait_for(lambda v: lacks(B)(v) and v[A].models == frozenset({"qwen-chat"}))


@pytest.mark.usefixtures("kubeconfig")
async def test_expired_watch_relists_and_catches_up(api: SliceAPI) -> None:
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1"), endpoint("10.0.0.2")))
    async with discovery({"qwen": "workers"}, resync_interval_s=30) as snapshots:
        await snapshots.wait_for(lambda v: len(v) == 2)
        await api.watching()
        lists = api.count(kmock.action.LIST)
        api.deaf = True  # this change is never delivered by the watch ...
        await api.patch_slice("workers-a", {"endpoints": [endpoint("10.0.0.2")]})
        api.deaf = False
        await api.expire_watches()  # ... but the 410 forces a fresh list, long before the resync
        await snapshots.wait_for(lacks(A), within=5)
        await api.watching()
        assert api.count(kmock.action.LIST) > lists
        await api.create(endpoint_slice("workers-b", "workers", endpoint("10.0.0.3")))
        await snapshots.wait_for(has("http://10.0.0.3:8000"))  # and it watches again


@pytest.mark.usefixtures("kubeconfig")
async def test_dropped_watch_relists(api: SliceAPI) -> None:
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1")))
    async with discovery({"qwen": "workers"}, resync_interval_s=30) as snapshots:
        await snapshots.wait_for(has(A))
        await api.watching()
        watches = api.count(kmock.action.WATCH)
        api.deaf = True
        await api.remove("workers-a")
        api.deaf = False
        await api.drop_watches()
        await snapshots.wait_for(lacks(A), within=5)
        await api.watching()
        assert api.count(kmock.action.WATCH) > watches


@pytest.mark.usefixtures("kubeconfig")
async def test_resync_removes_a_slice_whose_deletion_was_missed(api: SliceAPI) -> None:
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1")))
    await api.create(endpoint_slice("workers-b", "workers", endpoint("10.0.0.2")))
    async with discovery({"qwen": "workers"}, resync_interval_s=1) as snapshots:
        await snapshots.wait_for(lambda v: len(v) == 2)
        await api.watching()
        api.deaf = True  # the watch stays open and silent: only the periodic re-list can notice
        await api.remove("workers-a")
        view = await snapshots.wait_for(lacks(A), within=10)
        assert B in view


@pytest.mark.usefixtures("kubeconfig")
async def test_api_outage_keeps_the_last_good_view(api: SliceAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vgate_gateway.discovery.kubernetes")
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1")))
    await api.create(endpoint_slice("workers-b", "workers", endpoint("10.0.0.2")))
    async with discovery({"qwen": "workers"}, resync_interval_s=30) as snapshots:
        await snapshots.wait_for(lambda v: len(v) == 2)
        await api.watching()
        published = len(snapshots.history)
        api.down = True
        await api.drop_watches()
        lists = api.count(kmock.action.LIST)
        await eventually(lambda: api.count(kmock.action.LIST) >= lists + 3)  # three failed re-lists
        assert all(len(view) == 2 for view in snapshots.history[published:])
        assert "keeping the last 2 endpoints" in caplog.text

        await api.remove("workers-a")  # changed while the source could not see it
        api.down = False
        await snapshots.wait_for(lambda v: v.keys() == {B}, within=15)


async def test_unreachable_api_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vgate_gateway.discovery.kubernetes")
    path = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with discovery({"qwen": "workers"}) as snapshots:
        await eventually(lambda: caplog.text.count("listing EndpointSlices failed") >= 2)
        assert snapshots.history == []  # never an empty view because of an API error


@pytest.mark.skipif(
    Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists(), reason="runs inside a pod"
)
@pytest.mark.usefixtures("kubeconfig")
async def test_falls_back_to_kubeconfig_without_a_service_account(
    api: SliceAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")  # a pod, but no token mounted
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    await api.create(endpoint_slice("workers-a", "workers", endpoint("10.0.0.1")))
    async with discovery({"qwen": "workers"}) as snapshots:
        await snapshots.wait_for(has(A))


async def test_no_cluster_configuration_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    source = KubernetesDiscovery({"qwen": "workers"}, namespace=NAMESPACE, resync_interval_s=30)
    with pytest.raises(ConfigException):
        await source.run(Snapshots())
