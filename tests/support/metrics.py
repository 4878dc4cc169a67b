"""Reading one Prometheus series from a process's ``/metrics``, failing if it is missing."""

from __future__ import annotations

import httpx

from vgate_gateway.upstream.loadstats import metric_sums


def metric_in(text: str, name: str, *, missing: float | None = None) -> float:
    """The sum of series ``name`` over its label sets in ``text``.

    An absent series fails the test, unless ``missing`` gives its value: a labelled
    series appears only once first observed, so a reading *before* an action may pass
    ``missing=0``; a reading after it should not.
    """
    sums = metric_sums(text, [name])
    if name in sums:
        return sums[name]
    if missing is None:
        raise AssertionError(f"no {name} series in the metrics")
    return missing


def metric(url: str, name: str, *, missing: float | None = None) -> float:
    """:func:`metric_in` for the process at ``url`` (its base URL)."""
    return metric_in(httpx.get(f"{url}/metrics", timeout=5.0).text, name, missing=missing)


async def ametric(http: httpx.AsyncClient, url: str, name: str, *, missing: float | None = None) -> float:
    """:func:`metric` with an async client, for tests running a server on their own loop."""
    return metric_in((await http.get(f"{url}/metrics")).text, name, missing=missing)
