"""Prometheus metrics of one gateway process, on its own registry (no globals).

Label values are bounded: endpoints are route templates, upstreams are the worker
URLs the gateway knows (removed when the worker goes), models are the ones served.
No prompt, key or client-supplied free text ever becomes a label.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: Set (by ``vgate gateway --processes N``) when several serving processes share the port:
#: each process writes its series there, and a scrape of any one of them reports all.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class Tally:
    """A counter series' increments, added up in plain Python on the request path.

    prometheus_client takes a lock for every increment; a tally adds to a float and hands the
    sum to its series when the registry is read (:class:`_Flush`). Used only with one serving
    process: with several, each increment goes to the shared files at once, so a scrape of any
    process counts every process's requests.
    """

    __slots__ = ("pending", "series")

    def __init__(self, series: Any) -> None:
        self.series = series
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            self.series.inc(self.pending)
            self.pending = 0.0


class Level:
    """A gauge kept as a plain count on the request path, set on its series when the registry is read."""

    __slots__ = ("series", "value")

    def __init__(self, series: Any) -> None:
        self.series = series
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def flush(self) -> None:
        self.series.set(self.value)


class _Flush(Collector):
    """Registered first, so every read of the registry finds the tallies handed over."""

    def __init__(self, pending: list[Tally | Level]) -> None:
        self._pending = pending

    def collect(self) -> list[Any]:
        for tally in self._pending:
            tally.flush()
        return []


class Buckets(Collector):
    """A histogram counted in plain Python on the request path (one serving process only).

    prometheus_client's histogram takes a lock for every observation; this one finds the
    bucket with one bisection and adds to a list, and writes the family when scraped. With
    several processes the gateway uses prometheus_client's, whose files every process reads.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], *, buckets: tuple[float, ...]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._bounds = [float(b) for b in buckets]
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], Observed] = {}

    def labels(self, *values: str) -> Observed:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Observed(self._bounds)
        return child

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in self._children.items():
            cumulative = list(itertools.accumulate(child.counts))
            family.add_metric(list(values), list(zip(self._les, cumulative, strict=True)), child.sum)
        return [family]


class Observed:
    """One label set's observations: a count per bucket (the last is +Inf) and their sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A bucket counts the values at or below its bound ("le"): the first bound >= value.
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value


class Metrics:
    """The ``vgate_*`` metric family."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        #: Series counted in plain Python, handed over when the registry is read (one process only).
        self._tallies: list[Tally | Level] = []
        self._deferred = not os.environ.get(MULTIPROCESS_ENV)
        if self._deferred:
            r.register(_Flush(self._tallies))
        self.info = Info("vgate", "V-Gate build information", registry=r)
        self.info.info({"version": version})
        self.requests = Counter(
            "vgate_requests", "HTTP requests handled", ["endpoint", "method", "status"], registry=r
        )
        latency = (
            "vgate_request_latency_seconds",
            "Time from request to the last response byte",
            ["endpoint"],
        )
        self.latency: Any
        if self._deferred:
            self.latency = Buckets(*latency, buckets=_LATENCY_BUCKETS)
            r.register(self.latency)
        else:
            self.latency = Histogram(*latency, buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "vgate_ttft_seconds",
            "Time to first token of streamed generations, seen by the gateway",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vgate_tpot_seconds",
            "Mean time per output token after the first, per streamed generation",
            ["model"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "vgate_tokens_generated", "Completion tokens returned to clients", ["model"], registry=r
        )
        self.upstream_requests = Counter(
            "vgate_upstream_requests",
            "Requests sent to workers, by outcome (HTTP status or connect_error/timeout/stream_error)",
            ["upstream", "status"],
            registry=r,
        )
        self.inflight: Any = self.level(
            Gauge(
                "vgate_inflight_requests", "Requests being handled", registry=r, multiprocess_mode="livesum"
            )
        )
        self.rejected = Counter(
            "vgate_rejected_requests",
            "Requests refused by admission control (gateway at capacity)",
            registry=r,
        )
        self.ejections = Counter(
            "vgate_upstream_ejections", "Workers taken out of rotation after failures in a row", registry=r
        )
        self.upstream_healthy = Gauge(
            "vgate_upstream_healthy",
            "1 when the worker passes health checks",
            ["upstream"],
            registry=r,
            multiprocess_mode="liveall",  # each process checks on its own: one series per process
        )
        self._upstream_statuses: dict[str, set[str]] = {}
        self._upstream_series: dict[tuple[str, str], Any] = {}
        self._model_series: dict[str, tuple[Any, Any, Any]] = {}
        #: Collectors read at scrape time from this process's state (not from multiprocess files).
        self._live: list[Collector] = []

    def register_live(self, collector: Collector) -> None:
        """Export ``collector``, which computes its series from this process's state when scraped."""
        self.registry.register(collector)
        self._live.append(collector)

    def tally(self, series: Any) -> Any:
        """``series`` (a counter's child) for the request path: a :class:`Tally` when one process serves."""
        return self._defer(Tally(series), series)

    def level(self, series: Any) -> Any:
        """``series`` (a gauge) for the request path: a :class:`Level` when one process serves."""
        return self._defer(Level(series), series)

    def _defer(self, deferred: Tally | Level, series: Any) -> Any:
        if not self._deferred:
            return series
        self._tallies.append(deferred)
        return deferred

    def per_model(self, model: str) -> tuple[Any, Any, Any]:
        """(ttft, tpot, tokens_generated) of ``model``, resolved once: labels() takes a lock."""
        series = self._model_series.get(model)
        if series is None:
            generated = self.tally(self.tokens_generated.labels(model))
            series = (self.ttft.labels(model), self.tpot.labels(model), generated)
            self._model_series[model] = series
        return series

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of every serving process when there are several."""
        if not os.environ.get(MULTIPROCESS_ENV):
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        # Info series live in memory only; every process has the same one. Live collectors
        # report the scraped process's view (each process checks the same workers).
        info = CollectorRegistry()
        info.register(self.info)
        for collector in self._live:
            info.register(collector)
        return generate_latest(merged) + generate_latest(info)

    def count_upstream(self, url: str, status: str | int) -> None:
        key = (url, str(status))
        counter = self._upstream_series.get(key)
        if counter is None:
            self._upstream_statuses.setdefault(url, set()).add(key[1])
            counter = self._upstream_series[key] = self.tally(self.upstream_requests.labels(*key))
        counter.inc()

    def forget_upstream(self, url: str) -> None:
        """Drop the series of a worker that is gone, so label sets stay bounded."""
        series: list[tuple[Gauge | Counter, tuple[str, ...]]] = [(self.upstream_healthy, (url,))]
        statuses = self._upstream_statuses.pop(url, ())
        series += [(self.upstream_requests, (url, s)) for s in statuses]
        for status in statuses:
            counter = self._upstream_series.pop((url, status), None)
            if isinstance(counter, Tally):
                self._tallies.remove(counter)
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
