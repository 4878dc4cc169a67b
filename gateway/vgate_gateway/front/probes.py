"""The probes, answered on both ports: liveness and readiness."""

from __future__ import annotations

import orjson

from vgate_gateway import __version__
from vgate_gateway.protocol import Answer

HEALTH_PATH = "/health"
READY_PATH = "/ready"


def health() -> Answer:
    """Liveness: the process serves HTTP. Says nothing about workers."""
    return Answer(200, orjson.dumps({"status": "ok", "version": __version__}))


def ready(settled: bool, models: list[str], retry_after_s: int) -> Answer:
    """Readiness: the gateway can answer, once it has checked the workers it was told of.

    It stays ready while it runs, whatever its workers do: a model without a healthy
    worker answers its own 503, and taking the gateway out of its Service would only turn
    that into connection errors for every model. Only before the first round of health
    checks (a new pod) is it not ready, so it gets no traffic it would have to refuse.
    """
    if settled:
        return Answer(200, orjson.dumps({"status": "ready", "models": models}))
    body = {"status": "starting", "models": models, "reason": "the first health checks are still running"}
    return Answer(
        503,
        orjson.dumps(body),
        headers={"content-type": "application/json", "retry-after": str(retry_after_s)},
    )
