"""Operational endpoints: liveness and readiness (both ports); metrics and a JSON summary (internal port)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from vgate_gateway import __version__
from vgate_gateway.state import GatewayState

router = APIRouter()
#: Served only on the internal port: worker URLs and load are not for the Internet.
internal_router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the process serves HTTP. Says nothing about workers."""
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: the gateway can answer, once it has checked the workers it was told of.

    It stays ready while it runs, whatever its workers do: a model without a healthy
    worker answers its own 503, and taking the gateway out of its Service would only turn
    that into connection errors for every model. Only before the first round of health
    checks (a new pod) is it not ready, so it gets no traffic it would have to refuse.
    """
    state: GatewayState = request.app.state.gateway
    models = state.pool.models()
    if state.health.settled.is_set():
        return JSONResponse({"status": "ready", "models": models})
    return JSONResponse(
        {"status": "starting", "models": models, "reason": "the first health checks are still running"},
        status_code=503,
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


@internal_router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@internal_router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    upstreams = [
        {
            "url": u.url,
            "models": sorted(u.models),
            "healthy": u.healthy,
            "ready": u.ready,
            "terminating": u.terminating,
            "routable": u.routable,
            "inflight": u.inflight,
            "requests": u.requests_total,
            "failures": u.failures_total,
            "consecutive_failures": u.consecutive_failures,
            "ejections": u.ejections_total,
            "load": {
                "running": u.load.num_running,
                "waiting": u.load.num_waiting,
                "kv_cache_usage": u.load.kv_cache_usage,
            },
        }
        for u in state.pool.all()
    ]
    models = sorted({m for u in state.pool.all() for m in u.models})
    body = {
        "version": __version__,
        "uptime_s": round(time.monotonic() - state.started_at, 3),
        "discovery": state.settings.discovery,
        "routing": {m: state.router.strategy_name(m) for m in models} or {"*": state.settings.routing},
        "models": state.pool.models(),
        "panic": sorted(m for m in models if state.pool.candidates(m)[1]),
        "upstreams": upstreams,
    }
    body.update({name: section() for name, section in state.stats_sections.items()})
    return JSONResponse(body)
