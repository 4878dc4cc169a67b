"""The gateway's view of its upstream workers.

Discovery sources publish *complete* snapshots of the endpoints they know
(level-based, like a Kubernetes controller), and the pool reconciles its state
against each snapshot: an endpoint missing from a snapshot is gone, whatever
events were missed on the way. Health checking and request accounting mutate
the per-endpoint :class:`Upstream` records the pool owns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiscoveredEndpoint:
    """One worker endpoint as a discovery source sees it."""

    url: str
    #: Models the endpoint is declared to serve; empty means "learn it from its /v1/models".
    models: frozenset[str] = frozenset()
    #: Kubernetes' ``ready`` condition (always true for static discovery).
    ready: bool = True
    #: Draining: gets no new requests while its in-flight ones finish.
    terminating: bool = False


@dataclass
class LoadStats:
    """Load reported by the worker itself (vLLM's /metrics), when it was last read."""

    num_running: float = 0.0
    num_waiting: float = 0.0
    kv_cache_usage: float = 0.0
    scraped_at: float = 0.0


@dataclass
class Upstream:
    """Runtime state of one worker endpoint."""

    url: str
    declared_models: frozenset[str] = frozenset()
    served_models: frozenset[str] = frozenset()
    ready: bool = True
    terminating: bool = False
    #: Result of the last active health check; false until the first one passes.
    healthy: bool = False
    consecutive_failures: int = 0
    last_checked: float = 0.0
    #: Requests this gateway has in flight to the endpoint.
    inflight: int = 0
    #: Requests sent to the endpoint, and those that failed to connect or broke.
    requests_total: int = 0
    failures_total: int = 0
    load: LoadStats = field(default_factory=LoadStats)

    @property
    def models(self) -> frozenset[str]:
        return self.declared_models or self.served_models

    @property
    def routable(self) -> bool:
        return self.healthy and self.ready and not self.terminating

    def serves(self, model: str) -> bool:
        return model in self.models

    def mark_failed(self) -> None:
        """Passive health: a connection failure takes the endpoint out until a check passes."""
        self.healthy = False
        self.failures_total += 1
        self.consecutive_failures += 1
        self.last_checked = time.monotonic()


class UpstreamPool:
    """All known upstreams, keyed by URL."""

    def __init__(self) -> None:
        self._upstreams: dict[str, Upstream] = {}

    def replace(self, endpoints: Iterable[DiscoveredEndpoint]) -> None:
        """Reconcile against a full snapshot from discovery."""
        wanted: dict[str, DiscoveredEndpoint] = {}
        for ep in endpoints:
            wanted[ep.url.rstrip("/")] = ep
        for url in list(self._upstreams):
            if url not in wanted:
                # In-flight requests keep their own reference; only new routing stops.
                del self._upstreams[url]
        for url, ep in wanted.items():
            up = self._upstreams.get(url)
            if up is None:
                up = self._upstreams[url] = Upstream(url=url)
            up.declared_models = ep.models
            up.ready = ep.ready
            up.terminating = ep.terminating

    def get(self, url: str) -> Upstream | None:
        return self._upstreams.get(url.rstrip("/"))

    def all(self) -> list[Upstream]:
        return sorted(self._upstreams.values(), key=lambda u: u.url)

    def routable(self, model: str, exclude: Sequence[str] = ()) -> list[Upstream]:
        """Endpoints that may take a new request for ``model``, in a stable order."""
        return [u for u in self.all() if u.routable and u.serves(model) and u.url not in exclude]

    def known_model(self, model: str) -> bool:
        """Whether any endpoint, healthy or not, is known to serve ``model``."""
        return any(u.serves(model) for u in self._upstreams.values())

    def models(self) -> list[str]:
        """Models served by at least one routable endpoint."""
        return sorted({m for u in self._upstreams.values() if u.routable for m in u.models})
