"""The gateway's view of its upstream workers.

Discovery sources publish *complete* snapshots of the endpoints they know
(level-based, like a Kubernetes controller), and the pool reconciles its state
against each snapshot: an endpoint missing from a snapshot is gone, whatever
events were missed on the way. The pool is the one writer of the per-endpoint
:class:`Upstream` records it owns: health checks and the proxy tell it what happened
(:meth:`UpstreamPool.passed`, :meth:`~UpstreamPool.failed`, :meth:`~UpstreamPool.begin`,
:meth:`~UpstreamPool.end`, :meth:`~UpstreamPool.set_load`) and read the records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    #: LoRA adapters the worker has loaded (its /v1/models cards with a ``parent``).
    adapters: frozenset[str] = frozenset()
    #: Bumped by each load or unload this gateway made: a health check sent before it is stale.
    adapter_epoch: int = 0
    ready: bool = True
    terminating: bool = False
    #: In rotation: passed a health check and not ejected since. False until the first pass.
    healthy: bool = False
    #: Passed at least one health check: counts towards its models' panic threshold.
    seen_healthy: bool = False
    #: Failures in a row (health checks, connect errors, 5xx answers); reset by any success.
    consecutive_failures: int = 0
    #: Requests this gateway has in flight to the endpoint.
    inflight: int = 0
    #: Requests sent to the endpoint, and those that failed to connect or broke.
    requests_total: int = 0
    failures_total: int = 0
    ejections_total: int = 0
    load: LoadStats = field(default_factory=LoadStats)

    @property
    def models(self) -> frozenset[str]:
        return self.declared_models or self.served_models

    @property
    def routable(self) -> bool:
        return self.healthy and self.ready and not self.terminating

    @property
    def member(self) -> bool:
        """Part of its models' fleet: what panic mode routes to when too many are out."""
        return self.seen_healthy and self.ready and not self.terminating

    def serves(self, model: str) -> bool:
        return model in self.models or model in self.adapters


class UpstreamPool:
    """All known upstreams, keyed by URL, and who may take a model's next request.

    Routability changes only through this pool (snapshots, :meth:`passed`,
    :meth:`failed`), so the candidate list of each model is computed once per change
    (:attr:`version`) rather than on every request.
    """

    def __init__(self, *, eject_after: int, panic_threshold: float) -> None:
        self._upstreams: dict[str, Upstream] = {}
        self.eject_after = eject_after
        self.panic_threshold = panic_threshold
        #: Bumped whenever any endpoint's routability may have changed.
        self.version = 0
        self._candidates: dict[str, tuple[int, list[Upstream], bool]] = {}
        self._sorted: tuple[int, list[Upstream]] = (-1, [])
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever endpoints may have become able to take requests."""
        self._listeners.append(callback)

    def _grew(self) -> None:
        for callback in self._listeners:
            callback()

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
        self.version += 1
        self._grew()

    def passed(
        self,
        up: Upstream,
        served_models: frozenset[str] | None = None,
        adapters: frozenset[str] | None = None,
        adapter_epoch: int | None = None,
    ) -> bool:
        """A health check (or a request) succeeded; True when this readmits the endpoint.

        ``adapters`` is taken only when ``adapter_epoch`` (read as the check was sent) is still
        current: a check that crossed one of this gateway's loads or unloads reports the past.
        """
        readmitted = not up.healthy
        up.consecutive_failures = 0
        grew = False
        current = adapter_epoch is None or adapter_epoch == up.adapter_epoch
        if adapters is not None and current and adapters != up.adapters:
            up.adapters = adapters
            self.version += 1
            grew = True
        if served_models is not None and served_models != up.served_models:
            up.served_models = served_models
            self.version += 1
            grew = True
        if readmitted and served_models is not None:  # only a probe readmits, never traffic
            up.healthy = up.seen_healthy = True
            self.version += 1
            self._grew()
            return True
        if grew:
            self._grew()
        return False

    def failed(self, up: Upstream, *, traffic: bool = False) -> bool:
        """A health check (or, with ``traffic``, a request) failed; True when this ejects the endpoint."""
        if traffic:
            up.failures_total += 1
        up.consecutive_failures += 1
        if up.healthy and up.consecutive_failures >= self.eject_after:
            up.healthy = False
            up.ejections_total += 1
            self.version += 1
            return True
        return False

    def begin(self, up: Upstream) -> None:
        """A request is sent to ``up``."""
        up.inflight += 1
        up.requests_total += 1

    def end(self, up: Upstream) -> None:
        """A request to ``up`` is over (answered, failed or abandoned)."""
        up.inflight -= 1

    def adapter_loaded(self, up: Upstream, name: str) -> None:
        """``up`` loaded the LoRA adapter ``name`` (its load call succeeded): it may take its requests."""
        up.adapter_epoch += 1
        if name not in up.adapters:
            up.adapters = up.adapters | {name}
            self.version += 1
            self._grew()

    def adapter_unloaded(self, up: Upstream, name: str) -> None:
        """``up`` no longer has the adapter ``name``: it gets none of its new requests."""
        up.adapter_epoch += 1
        if name in up.adapters:
            up.adapters = up.adapters - {name}
            self.version += 1

    def set_load(self, up: Upstream, load: LoadStats) -> None:
        """The load ``up`` reported itself (its vLLM metrics)."""
        up.load = load

    def get(self, url: str) -> Upstream | None:
        return self._upstreams.get(url.rstrip("/"))

    def all(self) -> list[Upstream]:
        version, ordered = self._sorted
        if version != self.version or len(ordered) != len(self._upstreams):
            ordered = sorted(self._upstreams.values(), key=lambda u: u.url)
            self._sorted = (self.version, ordered)
        return list(ordered)

    def candidates(self, model: str) -> tuple[list[Upstream], bool]:
        """The endpoints for ``model``'s next request in a stable order, and whether in panic.

        Normally the routable ones. When more than ``panic_threshold`` of the model's fleet
        is out, all of it: a health view that loses most of a fleet at once is more likely
        wrong (an overloaded network, a slow probe) than the fleet gone, and refusing
        everything would turn a partial failure into a full outage.
        """
        cached = self._candidates.get(model)
        if cached is not None and cached[0] == self.version:
            return cached[1], cached[2]
        fleet = [u for u in self.all() if u.member and u.serves(model)]
        ok = [u for u in fleet if u.routable]
        panic = bool(fleet) and len(fleet) - len(ok) > self.panic_threshold * len(fleet)
        chosen = fleet if panic else ok
        if fleet or model in self._candidates:
            # Kept only for a model some worker serves: clients choose model names.
            self._candidates[model] = (self.version, chosen, panic)
        return chosen, panic

    def routable(self, model: str, exclude: Sequence[str] = ()) -> list[Upstream]:
        """Endpoints that may take a new request for ``model``, in a stable order."""
        chosen, _ = self.candidates(model)
        if exclude:
            return [u for u in chosen if u.url not in exclude]
        return chosen

    def known_model(self, model: str) -> bool:
        """Whether any endpoint, healthy or not, is known to serve ``model``."""
        return any(u.serves(model) for u in self._upstreams.values())

    def models(self) -> list[str]:
        """Models served by at least one routable endpoint."""
        return sorted({m for u in self._upstreams.values() if u.routable for m in u.models})
