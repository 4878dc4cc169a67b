"""Reading a worker's vLLM ``/metrics`` into :class:`LoadStats`.

The ``least-load`` and ``prefix-aware`` strategies weigh a worker's own view of its load
(requests queued inside vLLM, KV-cache usage) next to the gateway's count of its
outstanding requests: with several gateway replicas, only the worker sees all of its
traffic. The health checker reads it on every round; a worker that does not answer
keeps its last figures, which the strategies ignore once they are stale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from vgate_gateway.upstream.pool import LoadStats

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
#: The name vLLM used for the KV-cache gauge before it became device-neutral.
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"


def metric_sums(text: str, names: Iterable[str]) -> dict[str, float]:
    """Sum of each named series over all its label sets, from Prometheus text exposition.

    A line scan rather than a full parse: a worker's exposition is mostly histogram
    buckets the gateway never reads. Names absent from ``text`` are absent from the result.
    """
    wanted = set(names)
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        fields = rest.split()
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def parse_load(text: str, now: float) -> LoadStats | None:
    """The load a vLLM worker reports, or None when ``text`` has none of vLLM's gauges."""
    sums = metric_sums(text, (RUNNING, WAITING, KV_USAGE, KV_USAGE_OLD))
    if not sums:
        return None
    kv = sums.get(KV_USAGE, sums.get(KV_USAGE_OLD, 0.0))
    return LoadStats(
        num_running=sums.get(RUNNING, 0.0),
        num_waiting=sums.get(WAITING, 0.0),
        # One worker serving several model names reports one series per name.
        kv_cache_usage=min(max(kv, 0.0), 1.0),
        scraped_at=now,
    )
