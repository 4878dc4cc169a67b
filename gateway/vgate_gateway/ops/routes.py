"""The internal port's endpoints: the probes (as on the public port), metrics and a JSON summary."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from vgate_gateway import __version__
from vgate_gateway.front import probes
from vgate_gateway.ops.state import GatewayState
from vgate_gateway.protocol import Answer

router = APIRouter()
#: Served only on the internal port: worker URLs and load are not for the Internet.
internal_router = APIRouter()


def _answer(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


@router.get(probes.HEALTH_PATH)
async def health() -> Response:
    """Liveness, as on the public port."""
    return _answer(probes.health())


@router.get(probes.READY_PATH)
async def ready(request: Request) -> Response:
    """Readiness, as on the public port."""
    state: GatewayState = request.app.state.gateway
    settled, models = state.readiness()
    return _answer(probes.ready(settled, models, state.settings.retry_after_s))


@internal_router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@internal_router.get("/load")
async def load(request: Request) -> JSONResponse:
    """Each model's requests in flight and queued, and its routable workers: what the autoscaler reads."""
    state: GatewayState = request.app.state.gateway
    return JSONResponse({"timestamp": time.time(), "models": state.dispatcher.load()})


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
