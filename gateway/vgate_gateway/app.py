"""The gateway application: ``build_app(settings)`` and the lifespan that owns its resources.

One ASGI app serves both ports. Requests that arrived on the internal port go to the
internal FastAPI app (:mod:`vgate_gateway.ops`); every other request to the front door
(:mod:`vgate_gateway.front.door`), whose generation requests pass the efficiency layer
(:mod:`vgate_gateway.efficiency`) on their way to the proxy (:mod:`vgate_gateway.upstream`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from vgate_gateway import __version__
from vgate_gateway.discovery import DiscoverySource
from vgate_gateway.efficiency.pipeline import Pipeline, PipelineMetrics
from vgate_gateway.front.admission import Admission
from vgate_gateway.front.auth import KeyStore
from vgate_gateway.front.body import BodyLimits
from vgate_gateway.front.door import Door, DoorConfig, Services
from vgate_gateway.front.edge import Receive, Send
from vgate_gateway.front.hygiene import TrustedProxies
from vgate_gateway.front.ratelimit import Limiter, Limits, LocalLimiter, RateLimitMetrics, RedisLimiter
from vgate_gateway.front.recent_errors import RecentErrors
from vgate_gateway.metrics import Metrics
from vgate_gateway.ops.app import build_internal_app
from vgate_gateway.ops.fleet_metrics import FleetCollector
from vgate_gateway.ops.state import GatewayState
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.adapters import AdapterManager
from vgate_gateway.upstream.client import AiohttpClient, UpstreamClient
from vgate_gateway.upstream.dispatch import Dispatcher, QueueDepth, QueueMetrics
from vgate_gateway.upstream.health import HealthChecker
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.proxy import Proxy
from vgate_gateway.upstream.routing import Router

log = logging.getLogger(__name__)

#: How ``vgate gateway --processes N`` hands its validated settings to each serving process.
SETTINGS_ENV = "_VGATE_GATEWAY_SETTINGS"


def make_discovery(settings: GatewaySettings) -> DiscoverySource:
    if settings.discovery == "kubernetes":
        from vgate_gateway.discovery.kubernetes import KubernetesDiscovery

        return KubernetesDiscovery.from_settings(settings)
    from vgate_gateway.discovery.static import FileDiscovery, StaticDiscovery

    if settings.endpoints_file is not None:
        return FileDiscovery(settings.endpoints_file, settings.endpoints_reload_s)
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


Scope = MutableMapping[str, Any]


class Gateway:
    """The ASGI app of one serving process: the lifespan, then each request to its port's app."""

    def __init__(self, settings: GatewaySettings, running: Callable[[Gateway], Any]) -> None:
        self.settings = settings
        self._running = running
        #: The internal port's app (FastAPI): /metrics, /stats, /docs, /openapi.json, probes.
        self.internal = build_internal_app()
        #: The public port's app, once the lifespan has started.
        self.door: Door | None = None
        self.state: GatewayState | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        server = scope.get("server")
        if server is not None and server[1] == self.settings.internal_port:
            await self.internal(scope, receive, send)
        elif self.door is not None:
            await self.door(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self._running(self):
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except BaseException as exc:
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": repr(exc)})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def build_app(
    settings: GatewaySettings,
    discovery: DiscoverySource | None = None,
    clients: Callable[[], tuple[UpstreamClient, UpstreamClient]] | None = None,
) -> Gateway:
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
    metrics.register_live(FleetCollector(pool, settings.declared_models()))
    recent_errors = RecentErrors()
    # Built here, not in the lifespan, so an unknown strategy name fails before serving.
    router = Router(
        pool,
        settings.routing,
        # An adapter is routed by its base model's strategy (an instance of its own).
        {
            **{
                a: settings.routing_per_model[c.base]
                for a, c in settings.adapters.items()
                if c.base in settings.routing_per_model
            },
            **settings.routing_per_model,
        },
        declared_models=settings.declared_models() | frozenset(settings.adapters),
        session_header=settings.session_header,
        retry_after_s=settings.retry_after_s,
    )
    dispatcher = Dispatcher(settings, pool, router, QueueMetrics(metrics.registry))
    metrics.register_live(QueueDepth(dispatcher))
    config = DoorConfig(
        body=BodyLimits(settings.max_body_bytes, settings.max_json_depth, settings.max_json_containers),
        default_limits=default_limits(settings),
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
    )

    @asynccontextmanager
    async def running(gateway: Gateway) -> AsyncIterator[None]:
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
                starting_interval_s=settings.health_starting_interval_s,
                waiting=dispatcher.waiting,
            )

            def publish(endpoints: Sequence[DiscoveredEndpoint]) -> None:
                pool.replace(endpoints)
                health.poke()

            proxy = Proxy(
                client,
                dispatcher,
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

            adapters = AdapterManager(settings, pool, client)
            dispatcher.use_adapters(adapters)

            def model_cards() -> list[dict[str, Any]]:
                return _model_cards(settings, pool, health.model_cards)

            def readiness() -> tuple[bool, list[str]]:
                return health.settled.is_set(), pool.models()

            services = Services(pipeline.handle, admission, model_cards, readiness, settings.retry_after_s)
            gateway.door = Door(
                services, keys=keys, limiter=limiter, config=config, metrics=metrics, errors=recent_errors
            )
            gateway.state = gateway.internal.state.gateway = GatewayState(
                settings=settings,
                metrics=metrics,
                pool=pool,
                router=router,
                dispatcher=dispatcher,
                readiness=readiness,
                started_at=time.monotonic(),
                stats_sections={
                    "queues": dispatcher.stats,
                    "adapters": adapters.stats,
                    **pipeline.stats_sections(),
                    "admission": lambda: {
                        "max_inflight": admission.limit,
                        "inflight": admission.inflight,
                        "queued": admission.queued,
                        "rejected": admission.rejected_total,
                    },
                    "errors": recent_errors.snapshot,
                },
            )
            tasks = [
                _background(source.run(publish), "discovery"),
                _background(health.run(adapters.reconcile), "health checks"),
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
                await adapters.close()
                if limiter is not None:
                    await limiter.close()
        finally:
            await client.close()
            await health_client.close()

    return Gateway(settings, running)


def _model_cards(
    settings: GatewaySettings, pool: UpstreamPool, cards: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """``GET /v1/models``: the models served now, and the adapters of those models, as vLLM lists them.

    A declared adapter is listed once its base model is served (a request for it loads it);
    without declared adapters, the adapters the workers have loaded are listed as they are.
    """
    served = pool.models()
    out = [{**cards.get(m, {}), "id": m} for m in served]
    if settings.adapters:
        for name, adapter in sorted(settings.adapters.items()):
            if adapter.base in served:
                card = {"object": "model", "owned_by": "vllm", "created": 0, "max_model_len": None}
                out.append({**card, "id": name, "root": adapter.source, "parent": adapter.base})
        return out
    loaded = sorted({a for u in pool.all() if u.routable for a in u.adapters})
    return out + [{**cards.get(a, {}), "id": a} for a in loaded]


def app_from_env() -> Gateway:
    """The app of one serving process started by ``vgate gateway --processes N``."""
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


def _background(coro: object, name: str) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s stopped: %r", name, t.exception(), exc_info=t.exception())

    task.add_done_callback(report)
    return task
