"""``build_app(settings)``: one simulated vLLM server, with no state outside the app."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from vgate_worker.sim import lora
from vgate_worker.sim.engine import Engine
from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.protocol import ApiError, error_response
from vgate_worker.sim.routes import SimState
from vgate_worker.sim.routes import router as inference_router
from vgate_worker.sim.settings import SimSettings

log = logging.getLogger(__name__)


def build_app(settings: SimSettings) -> FastAPI:
    """A FastAPI app simulating one vLLM engine; its scheduler runs inside the app's lifespan."""
    metrics = SimMetrics.create(settings.model_name)
    engine = Engine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        log.info(
            "dry-run worker serving %s (max_model_len=%d, max_num_seqs=%d, speed=%.3g%s)",
            ", ".join(settings.served_model_name),
            settings.max_model_len,
            settings.max_num_seqs,
            settings.speed,
            f", LoRA: {settings.max_loras} slots" if settings.enable_lora else "",
        )
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="vgate dry-run worker", lifespan=lifespan, docs_url=None, redoc_url=None)
    adapters = lora.Adapters(settings)
    app.state.sim = SimState(settings, engine, adapters)
    app.state.adapters = adapters
    app.state.created = time.time()
    _install_error_handlers(app)
    app.include_router(inference_router)
    if lora.runtime_updating():  # as vLLM: the adapter endpoints exist only when allowed
        app.include_router(lora.router)

    @app.get("/health")
    async def health() -> Response:
        # Like vLLM: unhealthy once the engine is dead, so a liveness probe restarts the pod.
        return Response(status_code=200 if engine.alive else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [_model_card(settings, name, app.state.created) for name in settings.served_model_name]
            + adapters.cards(app.state.created),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _model_card(settings: SimSettings, name: str, created: float) -> dict[str, Any]:
    """vLLM's ModelCard: every served name is a root model of the one engine."""
    return {
        "id": name,
        "object": "model",
        "created": int(created),
        "owned_by": "vllm",
        "root": settings.model_name,
        "parent": None,
        "max_model_len": settings.max_model_len,
        "permission": [],
    }


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure, including framework 404/405, answers in vLLM's error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.message, exc.status, exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return error_response("Internal server error", 500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM answers 400, not FastAPI's 422, for an invalid body.
        return error_response(str(exc.errors()[:3]), 400)
