"""Gateway configuration: one validated settings object per process.

Sources, highest priority first: command-line flags, ``VGATE_*`` environment
variables, the YAML file given by ``--config`` / ``VGATE_CONFIG`` (the operator
mounts one from a ConfigMap), then the defaults below. Invalid values fail at
start-up with a message naming the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

#: Deepest nesting, and most arrays and objects, a request body may have (the defaults of
#: ``max_json_depth`` and ``max_json_containers``).
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_CONTAINERS = 100_000

T = TypeVar("T")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


#: Without a ``queue_reserve``, a worker keeps one slot in this many for keys within their share.
RESERVE_SHARE = 8


class ModelSettings(BaseModel):
    """One model's own capacity and queue bounds (unset: the gateway-wide setting)."""

    model_config = ConfigDict(extra="forbid")

    capacity: int | None = Field(None, ge=1)
    #: LoRA adapters one worker of the model keeps loaded (vLLM's ``--max-loras``).
    max_loras: int | None = Field(None, ge=1)
    queue_max_requests: int | None = Field(None, ge=0)
    queue_max_bytes: int | None = Field(None, ge=0)
    queue_timeout_s: float | None = Field(None, ge=0)
    #: Unset: :data:`RESERVE_SHARE` of the capacity (see :meth:`reserve`).
    queue_reserve: int | None = Field(None, ge=0)
    queue_prefills_over_share: int | None = Field(None, ge=0)
    queue_prefill_free_workers: int | None = Field(None, ge=0)
    #: The model's workers run vLLM's ``--scheduling-policy priority``: every request forwarded
    #: to them carries an engine ``priority`` (its class and its key's fair-share standing).
    engine_priority: bool = False

    def reserve(self) -> int:
        """Slots of each worker kept for keys within their share (``queue_reserve``)."""
        if self.queue_reserve is not None:
            return self.queue_reserve
        return (self.capacity or 0) // RESERVE_SHARE


class AdapterSettings(BaseModel):
    """One declared LoRA adapter: what clients name in ``model`` is the key of ``adapters``."""

    model_config = ConfigDict(extra="forbid")

    #: The base model the adapter was trained on (a served model name).
    base: str = Field(min_length=1)
    #: Where vLLM loads it from: a path on the workers' model cache, or a Hugging Face id.
    source: str = Field(min_length=1)
    #: Workers that keep it loaded whatever its traffic (0: loaded on demand only).
    min_workers: int = Field(0, ge=0)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # -- serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: Serving processes sharing the port. Each has its own upstream pool, health checks,
    #: cache, dedup and prefix tables, and its own admission limit (see docs/gateway.md).
    processes: int = Field(1, ge=1, le=256)
    #: The old name of ``processes`` ("worker" means a vLLM pod everywhere else), accepted for
    #: one release with a warning at start-up (:func:`deprecations`).
    workers: int | None = Field(None, ge=1, le=256)
    log_level: LogLevel = "info"
    log_json: bool = False

    # -- discovery
    discovery: Literal["static", "kubernetes"] = "static"
    #: Static discovery: worker base URLs (env: comma-separated or a JSON list).
    endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Static discovery: a file of worker URLs, one a line, re-read when it changes (in
    #: place of ``endpoints``; ``vgate dev --autoscale`` writes it as it starts and stops workers).
    endpoints_file: Path | None = None
    #: How often the endpoints file is checked for a change.
    endpoints_reload_s: float = Field(0.5, gt=0, le=60)
    #: Kubernetes discovery: namespace of the worker Services (default: the pod's own).
    namespace: str | None = None
    #: Kubernetes discovery: served model name -> its worker Service.
    services: dict[str, str] = Field(default_factory=dict)
    #: Kubernetes discovery: full re-list at least this often, whatever the watch says.
    resync_interval_s: float = Field(30.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    #: While requests wait for a worker, workers that have not yet passed a check (starting)
    #: are probed this often between rounds: a held request goes out soon after its worker is up.
    health_starting_interval_s: float = Field(0.25, gt=0)
    #: Outlier ejection: a worker leaves rotation after this many consecutive failures
    #: (failed health checks, or connect errors and 5xx answers on traffic), and comes back
    #: on its first passing health check.
    eject_after_failures: int = Field(3, ge=1)
    #: Panic mode: when more than this share of a model's workers is out, route to all of
    #: them (the health view is more likely wrong than most of the fleet down at once).
    panic_threshold: float = Field(0.5, ge=0, le=1)

    # -- the model queues
    #: Models served, known before any worker is: a request for one of them waits in its
    #: queue while no worker is ready (scaled to zero, starting, rolling) instead of a 404.
    #: Kubernetes discovery's ``services`` and ``model_settings`` declare models too.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Requests one worker may have in flight from this gateway process before it counts as
    #: saturated (vLLM's ``max_num_seqs``; the operator divides it among gateway replicas).
    worker_capacity: int = Field(256, ge=1)
    #: Requests one model's queue holds; beyond it, refused at once with 503 (0: no queue).
    queue_max_requests: int = Field(1000, ge=0)
    #: Request body bytes one model's queue holds; beyond it, refused at once with 503.
    queue_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    #: The longest a request waits for a worker (outlasting a GPU worker's cold start).
    queue_timeout_s: float = Field(300.0, ge=0)
    #: The order a queue is served in: ``fair`` (priority class, then weighted fair share of
    #: tokens between keys, then arrival) or ``fifo`` (arrival order only).
    queue_policy: Literal["fair", "fifo"] = "fair"
    #: Slots of each worker that a key over its share of the model's slots may not fill while
    #: other keys are active: kept for keys within their share, so a light tenant's request is
    #: not queued behind a flood (unset: an eighth of a worker's capacity, rounded down; 0:
    #: none; docs/fairness.md "The reserve").
    queue_reserve: int | None = Field(None, ge=0)
    #: Streamed requests of keys over their share that may await their first token on one
    #: worker at once, so a flood's long prefills do not fill every engine step of a worker
    #: (0: no limit; docs/fairness.md "Prefills").
    queue_prefills_over_share: int = Field(0, ge=0)
    #: Workers of a model kept free of a flooding key's requests while another key is active
    #: (the last in URL order): a light tenant's prompt goes to one of them, and its first token
    #: does not wait for the flood's prefills (0: none; docs/fairness.md "Prefill-free workers").
    queue_prefill_free_workers: int = Field(0, ge=0)
    #: Per-model overrides of ``worker_capacity`` and the queue settings.
    model_settings: dict[str, ModelSettings] = Field(default_factory=dict)

    # -- LoRA adapters (docs/lora.md)
    #: Declared adapters, by the name clients use: loaded on workers of their base model on
    #: demand (vLLM's runtime adapter API), routed to where they are loaded.
    adapters: dict[str, AdapterSettings] = Field(default_factory=dict)
    #: Adapters one worker keeps loaded, unless the model sets its own ``max_loras``.
    max_loras: int = Field(4, ge=1)
    #: Adapter loads this gateway process has in flight at once, over all workers.
    adapter_loads_in_flight: int = Field(2, ge=1)
    #: A popular adapter is loaded on one more worker when every worker holding it has this
    #: many more requests in flight than the least busy worker of its base model.
    adapter_spread_imbalance: int = Field(4, ge=1)
    #: After a worker failed to load an adapter, it is not asked again for this long.
    adapter_retry_s: float = Field(30.0, gt=0)

    # -- routing
    #: A strategy of ``vgate_gateway.upstream.routing.STRATEGIES`` (checked when the router is built).
    routing: str = "prefix-aware"
    #: Per-model override of ``routing``.
    routing_per_model: dict[str, str] = Field(default_factory=dict)
    #: Request header whose value pins a client to a worker with the ``session`` strategy.
    session_header: str = "x-session-id"

    # -- upstream client
    connect_timeout_s: float = Field(5.0, gt=0)
    #: Until the first response byte. Non-streaming requests get their whole answer at once,
    #: so this bounds generation time for them; keep it generous.
    first_byte_timeout_s: float = Field(600.0, gt=0)
    #: Longest silence allowed between two chunks of a stream (no total timeout: long
    #: healthy streams are never cut).
    stream_idle_timeout_s: float = Field(120.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    #: Idle pooled upstream connections are closed after this long: below the workers' own
    #: keep-alive (uvicorn and vLLM close idle connections after 5 s), so the gateway never
    #: sends on a connection the worker is closing.
    upstream_keepalive_s: float = Field(4.0, gt=0)
    retry_after_s: int = Field(1, ge=0)

    # -- admission control (per serving process)
    #: Requests handled at once; more wait in a short queue, then are refused with 503.
    max_inflight: int = Field(512, ge=1)
    #: Requests that may wait for a free slot; beyond it, refused at once.
    admission_queue: int = Field(128, ge=0)
    #: The longest a request waits in that queue before it is refused.
    admission_queue_timeout_s: float = Field(0.05, ge=0)
    #: On SIGTERM, how long in-flight requests and streams may take to finish.
    shutdown_grace_s: float = Field(30.0, ge=0)

    # -- efficiency
    batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(3.0, ge=0, le=60_000)
    #: Merge concurrent /v1/completions requests (each client's usage stays exact).
    batch_completions: bool = True
    #: Merge concurrent /v1/embeddings requests; their usage is then apportioned.
    batch_embeddings: bool = False
    cache_maxsize: int = Field(1000, ge=0)
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    cache_ttl_s: float = Field(600.0, gt=0)
    #: The largest answer stored; a longer stream is not kept while it passes by.
    cache_max_entry_bytes: int = Field(1024 * 1024, ge=0)
    dedup: bool = True
    #: How far a client of a shared stream may fall behind before it is dropped.
    dedup_max_lag_bytes: int = Field(256 * 1024, ge=1024)

    # -- security
    #: Internal endpoints (/metrics, /stats, /docs, /openapi.json) listen here, never on ``port``.
    internal_port: int = Field(8081, ge=1, le=65535)
    #: Listen address of the internal port (default: ``host``).
    internal_host: str | None = None
    #: API keys, one a line (the operator mounts a Secret here). Unset: the gateway is open.
    api_keys_file: Path | None = None
    #: How often the keys file is checked for changes.
    api_keys_reload_s: float = Field(2.0, gt=0)
    #: Default per-key limits (0: unlimited); a key's line in the keys file may override them.
    rate_limit_rpm: int = Field(0, ge=0)
    rate_limit_tpm: int = Field(0, ge=0)
    #: Bucket sizes: how many requests / tokens a key may spend at once (0: one minute's worth).
    rate_limit_rpm_burst: int = Field(0, ge=0)
    rate_limit_tpm_burst: int = Field(0, ge=0)
    #: Share the limits across replicas through this Redis (``redis://`` or ``rediss://``).
    redis_url: str | None = None
    #: While Redis is unreachable: ``open`` admits requests, ``closed`` refuses them with 503.
    redis_failure_mode: Literal["open", "closed"] = "open"
    redis_prefix: str = "vgate:"
    redis_timeout_s: float = Field(0.5, gt=0)
    #: Largest request body; a bigger one is a 413 before it is read.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Deepest JSON nesting accepted in a request body.
    max_json_depth: int = Field(DEFAULT_MAX_DEPTH, ge=4, le=512)
    #: Most JSON arrays and objects in a request body, all levels together; more is a 400
    #: before the body is parsed, which bounds how long one body can hold the event loop.
    max_json_containers: int = Field(DEFAULT_MAX_CONTAINERS, ge=64)
    #: Peers (CIDRs) whose Forwarded / X-Forwarded-Host / -Proto headers are believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("endpoints_file")
    @classmethod
    def _check_endpoints_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"endpoints file {str(v)!r} does not exist")
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _check_cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {cidr!r} is not an IP address or CIDR") from None
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
        return v or None

    @field_validator("api_keys_file")
    @classmethod
    def _check_keys_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"API keys file {str(v)!r} does not exist")
        return v

    @field_validator("endpoints")
    @classmethod
    def _check_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must be an http:// or https:// URL")
        return [u.rstrip("/") for u in v]

    @model_validator(mode="after")
    def _take_the_old_processes_name(self) -> GatewaySettings:
        if self.workers is None:
            return self
        if "processes" in self.model_fields_set and self.processes != self.workers:
            raise ValueError(
                f"processes ({self.processes}) and its deprecated name workers ({self.workers}) "
                "disagree: set processes (VGATE_PROCESSES, --processes) only"
            )
        self.processes = self.workers
        return self

    @model_validator(mode="after")
    def _check_discovery(self) -> GatewaySettings:
        if self.discovery == "kubernetes" and not self.services:
            raise ValueError("discovery 'kubernetes' needs 'services' (model name -> worker Service)")
        if self.internal_port == self.port:
            raise ValueError(
                "internal_port must differ from port (internal endpoints stay off the public one)"
            )
        if self.endpoints_file is not None and self.endpoints:
            raise ValueError("set either 'endpoints' or 'endpoints_file', not both")
        self._check_adapters()
        for model in ("", *self.model_settings):  # "": the gateway-wide settings
            own = self.for_model(model)
            if own.queue_reserve and own.capacity and own.queue_reserve >= own.capacity:  # set, not derived
                where = f"model {model!r}: " if model else ""
                raise ValueError(
                    f"{where}queue_reserve ({own.queue_reserve}) must be below the requests a worker "
                    f"takes (capacity {own.capacity}): a key over its share keeps at least one"
                )
        if self.max_inflight > self.max_connections:
            # Admission control must refuse before the upstream pool would make requests wait.
            raise ValueError(
                f"max_inflight ({self.max_inflight}) must not exceed max_connections ({self.max_connections})"
            )
        return self

    def _check_adapters(self) -> None:
        bases = frozenset(self.models) | frozenset(self.services) | frozenset(self.model_settings)
        bases |= {a.base for a in self.adapters.values()}
        for name, adapter in self.adapters.items():
            if name in bases:
                raise ValueError(f"adapter {name!r} has the name of a model; adapter names must be their own")
            if adapter.base in self.adapters:
                raise ValueError(f"adapter {name!r}: its base {adapter.base!r} is an adapter, not a model")
        for base in {a.base for a in self.adapters.values()}:
            pinned = sum(1 for a in self.adapters.values() if a.base == base and a.min_workers)
            slots = self.for_model(base).max_loras or self.max_loras
            if pinned > slots:
                raise ValueError(
                    f"model {base!r}: {pinned} adapters have min_workers > 0 but a worker has {slots} "
                    "adapter slots (max_loras); they cannot all stay loaded"
                )

    def base_of(self, model: str) -> str:
        """The base model of an adapter, or ``model`` itself."""
        adapter = self.adapters.get(model)
        return adapter.base if adapter is not None else model

    def for_model(self, model: str) -> ModelSettings:
        """``model``'s capacity and queue bounds: its own where set, the gateway-wide ones otherwise.

        An adapter runs on its base model's workers, so it has its base model's settings.
        """
        model = self.base_of(model)
        own = self.model_settings.get(model) or ModelSettings()
        return ModelSettings(
            capacity=own.capacity or self.worker_capacity,
            max_loras=own.max_loras or self.max_loras,
            queue_max_requests=_first(own.queue_max_requests, self.queue_max_requests),
            queue_max_bytes=_first(own.queue_max_bytes, self.queue_max_bytes),
            queue_timeout_s=_first(own.queue_timeout_s, self.queue_timeout_s),
            queue_reserve=_first(own.queue_reserve, self.queue_reserve),
            queue_prefills_over_share=_first(own.queue_prefills_over_share, self.queue_prefills_over_share),
            queue_prefill_free_workers=_first(
                own.queue_prefill_free_workers, self.queue_prefill_free_workers
            ),
            engine_priority=own.engine_priority,
        )

    def declared_models(self) -> frozenset[str]:
        """Every model this gateway is told it serves, before any worker says so (adapters' bases too)."""
        return (
            frozenset(self.models)
            | frozenset(self.services)
            | frozenset(self.model_settings)
            | frozenset(a.base for a in self.adapters.values())
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _config_path()
        if config is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))
        return tuple(sources)


_CONFIG_PATH: Path | None = None


def _first(value: T | None, default: T) -> T:
    return default if value is None else value


def _config_path() -> Path | None:
    import os

    if _CONFIG_PATH is not None:
        return _CONFIG_PATH
    env = os.environ.get("VGATE_CONFIG")
    return Path(env) if env else None


def deprecations(settings: GatewaySettings) -> list[str]:
    """Warnings for old setting names still in use, logged once at start-up."""
    if settings.workers is None:
        return []
    return [
        f"VGATE_WORKERS / --workers / workers is deprecated and goes in the next release: "
        f"use VGATE_PROCESSES / --processes / processes ({settings.processes} serving processes)"
    ]


def load_settings(config: str | Path | None = None, **overrides: Any) -> GatewaySettings:
    """Build the settings; ``config`` is a YAML file, ``overrides`` come from flags."""
    global _CONFIG_PATH
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        _CONFIG_PATH = path
    try:
        return GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_PATH = None
