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
from vgate_gateway.auth import KeyStore
from vgate_gateway.discovery import DiscoverySource
from vgate_gateway.errors import install_error_handlers
from vgate_gateway.guard import Guard, GuardConfig
from vgate_gateway.health import HealthChecker
from vgate_gateway.hygiene import TrustedProxies
from vgate_gateway.internal import build_internal_app
from vgate_gateway.metrics import Metrics
from vgate_gateway.middleware import RequestContextMiddleware
from vgate_gateway.openapi_doc import public_openapi
from vgate_gateway.pipeline import Pipeline, PipelineMetrics
from vgate_gateway.proxy import Proxy
from vgate_gateway.ratelimit import Limiter, Limits, LocalLimiter, RateLimitMetrics, RedisLimiter
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


def default_limits(settings: GatewaySettings) -> Limits:
    return Limits(
        rpm=settings.rate_limit_rpm,
        tpm=settings.rate_limit_tpm,
        rpm_burst=settings.rate_limit_rpm_burst,
        tpm_burst=settings.rate_limit_tpm_burst,
    )


def make_limiter(settings: GatewaySettings, metrics: RateLimitMetrics, keys: KeyStore) -> Limiter | None:
    """Redis-backed when ``redis_url`` is set, in-process otherwise; none when nothing is limited."""
    limited = default_limits(settings).active or any(k.rpm or k.tpm for k in keys.all())
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            metrics,
            failure_mode=settings.redis_failure_mode,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
    return LocalLimiter(metrics) if limited or keys.enabled else None


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
    keys = KeyStore(settings.api_keys_file, settings.api_keys_reload_s)
    limiter = make_limiter(settings, RateLimitMetrics(metrics.registry), keys)
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
            if keys.enabled:
                tasks.append(_background(keys.watch(), "API key reloads"))
                log.info("API keys: %d loaded from %s", len(keys), settings.api_keys_file)
            else:
                log.warning(
                    "no API keys configured (api_keys_file): the gateway serves anyone who reaches it"
                )
            if limiter is not None:
                tasks.append(_background(limiter.run(), "rate limiter"))
            log.info("gateway %s ready to serve (discovery: %s)", __version__, settings.discovery)
            try:
                yield
            finally:
                for task in reversed(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if limiter is not None:
                    await limiter.close()

    # /docs and /openapi.json are served on the internal port only (vgate_gateway.internal).
    app = FastAPI(
        title="V-Gate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.openapi = lambda: public_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ops.router)
    guard = GuardConfig(
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
        default_limits=default_limits(settings),
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
    )
    # Added first, so it runs inside the request-id middleware: its answers carry x-request-id.
    app.add_middleware(Guard, keys=keys, limiter=limiter, config=guard)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.state.internal_app = build_internal_app(app)
    return app


def _background(coro: object, name: str) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s stopped: %r", name, t.exception(), exc_info=t.exception())

    task.add_done_callback(report)
    return task
