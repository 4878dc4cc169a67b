"""The gateway application: ``build_app(settings)`` and the lifespan that owns its resources."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from vgate_gateway import __version__
from vgate_gateway.admission import Admission
from vgate_gateway.auth import KeyStore
from vgate_gateway.client import AiohttpClient, UpstreamClient
from vgate_gateway.discovery import DiscoverySource
from vgate_gateway.error_handlers import install_error_handlers
from vgate_gateway.fleet_metrics import FleetCollector
from vgate_gateway.guard import Guard, GuardConfig
from vgate_gateway.health import HealthChecker
from vgate_gateway.hygiene import TrustedProxies
from vgate_gateway.internal import PortDispatch, build_internal_app
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
from vgate_gateway.status_page import RecentErrors, RecentErrorsMiddleware
from vgate_gateway.upstreams import DiscoveredEndpoint, UpstreamPool

log = logging.getLogger(__name__)

#: How ``vgate gateway --workers N`` hands its validated settings to each serving process.
SETTINGS_ENV = "_VGATE_GATEWAY_SETTINGS"


def make_discovery(settings: GatewaySettings) -> DiscoverySource:
    if settings.discovery == "kubernetes":
        from vgate_gateway.discovery.kubernetes import KubernetesDiscovery

        return KubernetesDiscovery.from_settings(settings)
    from vgate_gateway.discovery.static import StaticDiscovery

    return StaticDiscovery(settings.endpoints)


def make_client(settings: GatewaySettings) -> AiohttpClient:
    """The pooled client for traffic to the workers."""
    return AiohttpClient(
        max_connections=settings.max_connections,
        keepalive_s=settings.upstream_keepalive_s,
        connect_timeout_s=settings.connect_timeout_s,
        first_byte_timeout_s=settings.first_byte_timeout_s,
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
    )


def make_health_client(settings: GatewaySettings) -> AiohttpClient:
    """The health checks' own small client: a probe never waits behind traffic."""
    timeout = settings.health_timeout_s
    return AiohttpClient(
        max_connections=64,
        keepalive_s=settings.upstream_keepalive_s,
        connect_timeout_s=timeout,
        first_byte_timeout_s=timeout,
        stream_idle_timeout_s=timeout,
    )


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


class GatewayApp(FastAPI):
    """FastAPI with the gateway's own middleware in front of the framework's.

    The generation routes are answered inside that front, so they skip the framework's
    error, telemetry and body-limit layers, which the gateway's own guard replaces; every
    other route goes on through the whole framework stack.
    """

    def __init__(self, front: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        self._front = front
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return self._front(super().build_middleware_stack())


def build_app(
    settings: GatewaySettings,
    discovery: DiscoverySource | None = None,
    clients: Callable[[], tuple[UpstreamClient, UpstreamClient]] | None = None,
) -> FastAPI:
    """The gateway for ``settings``.

    ``discovery`` replaces the configured discovery source, and ``clients`` makes the
    (traffic, health-check) upstream clients in place of the pooled aiohttp ones (tests
    drive the gateway against in-memory workers with them).
    """
    metrics = Metrics(__version__)
    efficiency_metrics = PipelineMetrics.register(metrics.registry)
    keys = KeyStore(settings.api_keys_file, settings.api_keys_reload_s)
    limiter = make_limiter(settings, RateLimitMetrics(metrics.registry), keys)
    pool = UpstreamPool(eject_after=settings.eject_after_failures, panic_threshold=settings.panic_threshold)
    metrics.register_live(FleetCollector(pool, settings.services))
    recent_errors = RecentErrors()
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
        client, health_client = (
            clients() if clients else (make_client(settings), make_health_client(settings))
        )
        try:
            health = HealthChecker(
                pool,
                health_client,
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
                pool,
                metrics,
                stream_idle_timeout_s=settings.stream_idle_timeout_s,
                retry_after_s=settings.retry_after_s,
            )
            # cache -> dedup -> micro-batching -> proxy
            pipeline = Pipeline(settings, proxy.forward, efficiency_metrics)
            admission = Admission(
                settings.max_inflight,
                settings.admission_queue,
                settings.admission_queue_timeout_s,
                settings.retry_after_s,
            )
            sections = {
                **pipeline.stats_sections(),
                "admission": lambda: {
                    "max_inflight": admission.limit,
                    "inflight": admission.inflight,
                    "queued": admission.queued,
                    "rejected": admission.rejected_total,
                },
                "errors": recent_errors.snapshot,
            }
            app.state.gateway = GatewayState(
                settings=settings,
                metrics=metrics,
                pool=pool,
                router=router,
                admission=admission,
                health=health,
                handle=pipeline.handle,
                started_at=time.monotonic(),
                stats_sections=sections,
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
        finally:
            await client.close()
            await health_client.close()

    guard = GuardConfig(
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
        max_json_containers=settings.max_json_containers,
        default_limits=default_limits(settings),
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
    )

    def front(framework: ASGIApp) -> ASGIApp:
        # Outermost first: request ids and the access log, then keys, limits and the body
        # checks (inside, so their answers carry x-request-id), then the generation routes;
        # everything else goes on to the framework.
        hot = openai.HotRoutes(framework)
        guarded = Guard(hot, keys=keys, limiter=limiter, config=guard)
        return RequestContextMiddleware(RecentErrorsMiddleware(guarded, recent_errors), metrics=metrics)

    # /docs and /openapi.json are served on the internal port only (vgate_gateway.internal).
    # The gateway exports its own Prometheus metrics; the framework's OpenTelemetry hooks
    # would cost a provider lookup on every request.
    telemetry = {"tracing": False, "metrics": False, "logs": False}
    app = GatewayApp(
        front,
        title="V-Gate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=telemetry,
    )
    app.openapi = lambda: public_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.state.internal_app = build_internal_app(app)
    app.state.gateway_settings = settings
    return app


def app_from_env() -> FastAPI:
    """The app of one serving process started by ``vgate gateway --workers N``."""
    from vgate_gateway.logs import setup_logging

    settings = GatewaySettings.model_validate_json(os.environ[SETTINGS_ENV])
    setup_logging(settings.log_level, settings.log_json)
    app = build_app(settings)
    tune_gc()
    return app


#: Net container allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Keep the garbage collector's cost per request flat as concurrency rises.

    At CPython's default threshold the objects of the requests in flight alone outgrow the
    young generation at a few dozen concurrent requests: nearly every allocation burst then
    runs a collection that promotes those live objects, and each full collection walks the
    whole heap (modules, the app, pydantic's schemas). Measured with ``make bench-proxy``
    (docs/gateway.md): the collector took about a sixth of the CPU at c=16 and c=64, and its
    share grew with concurrency.
    Everything built before serving lives as long as the process, so it is frozen out of
    the collector's scans, and the young generation is sized above the in-flight working set.
    Cyclic garbage is still collected; only the rhythm changes. Called once per serving
    process, after its app is built.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def dispatch_from_env() -> PortDispatch:
    """Both ports of one serving process started by ``vgate gateway --workers N``."""
    app = app_from_env()
    return PortDispatch(app, app.state.internal_app, app.state.gateway_settings.internal_port)


def _background(coro: object, name: str) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s stopped: %r", name, t.exception(), exc_info=t.exception())

    task.add_done_callback(report)
    return task
