"""The gateway application: ``build_app(settings)`` and the lifespan that owns its resources."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from vgate_gateway import __version__
from vgate_gateway.discovery import DiscoverySource
from vgate_gateway.errors import install_error_handlers
from vgate_gateway.health import HealthChecker
from vgate_gateway.metrics import Metrics
from vgate_gateway.middleware import RequestContextMiddleware
from vgate_gateway.pipeline import Pipeline, PipelineMetrics
from vgate_gateway.proxy import Proxy
from vgate_gateway.routes import openai, ops
from vgate_gateway.routing import Router
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.state import GatewayState
from vgate_gateway.upstreams import DiscoveredEndpoint, UpstreamPool

log = logging.getLogger(__name__)


def make_discovery(settings: GatewaySettings) -> DiscoverySource:
    if settings.discovery == "kubernetes":
        from vgate_gateway.discovery.kubernetes import KubernetesDiscovery

        return KubernetesDiscovery.from_settings(settings)
    from vgate_gateway.discovery.static import StaticDiscovery

    return StaticDiscovery(settings.endpoints)


def make_client(
    settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The pooled upstream client. No total timeout: a long healthy stream is never cut."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=max(settings.first_byte_timeout_s, settings.stream_idle_timeout_s),
        write=settings.connect_timeout_s * 6,
        pool=settings.connect_timeout_s,
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=min(settings.max_connections, 200),
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, transport=transport)


def build_app(
    settings: GatewaySettings,
    discovery: DiscoverySource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway for ``settings``.

    ``discovery`` and ``transport`` replace the configured discovery source and the
    upstream network (tests drive the gateway against in-memory workers with them).
    """
    metrics = Metrics(__version__)
    efficiency_metrics = PipelineMetrics.register(metrics.registry)
    pool = UpstreamPool()
    # Built here, not in the lifespan, so an unknown strategy name fails before serving.
    router = Router(
        pool,
        settings.routing,
        settings.routing_per_model,
        declared_models=settings.services,
        session_header=settings.session_header,
        retry_after_s=settings.retry_after_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        source = discovery or make_discovery(settings)
        async with make_client(settings, transport) as client:
            health = HealthChecker(
                pool,
                client,
                metrics,
                interval_s=settings.health_interval_s,
                timeout_s=settings.health_timeout_s,
            )

            def publish(endpoints: Sequence[DiscoveredEndpoint]) -> None:
                pool.replace(endpoints)
                health.poke()

            proxy = Proxy(
                client,
                router,
                metrics,
                stream_idle_timeout_s=settings.stream_idle_timeout_s,
                retry_after_s=settings.retry_after_s,
            )
            # cache -> dedup -> micro-batching -> proxy
            pipeline = Pipeline(settings, proxy.forward, efficiency_metrics)
            app.state.gateway = GatewayState(
                settings=settings,
                metrics=metrics,
                pool=pool,
                router=router,
                client=client,
                health=health,
                handle=pipeline.handle,
                started_at=time.monotonic(),
                stats_sections=pipeline.stats_sections(),
            )
            tasks = [
                _background(source.run(publish), "discovery"),
                _background(health.run(), "health checks"),
            ]
            log.info("gateway %s ready to serve (discovery: %s)", __version__, settings.discovery)
            try:
                yield
            finally:
                for task in reversed(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="V-Gate", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def _background(coro: object, name: str) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s stopped: %r", name, t.exception(), exc_info=t.exception())

    task.add_done_callback(report)
    return task
