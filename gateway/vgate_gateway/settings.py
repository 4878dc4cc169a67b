"""Gateway configuration: one validated settings object per process.

Sources, highest priority first: command-line flags, ``VGATE_*`` environment
variables, the YAML file given by ``--config`` / ``VGATE_CONFIG`` (the operator
mounts one from a ConfigMap), then the defaults below. Invalid values fail at
start-up with a message naming the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


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
    workers: int = Field(1, ge=1, le=256)
    log_level: LogLevel = "info"
    log_json: bool = False

    # -- discovery
    discovery: Literal["static", "kubernetes"] = "static"
    #: Static discovery: worker base URLs (env: comma-separated or a JSON list).
    endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Kubernetes discovery: namespace of the worker Services (default: the pod's own).
    namespace: str | None = None
    #: Kubernetes discovery: served model name -> its worker Service.
    services: dict[str, str] = Field(default_factory=dict)
    #: Kubernetes discovery: full re-list at least this often, whatever the watch says.
    resync_interval_s: float = Field(30.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    #: Outlier ejection: a worker leaves rotation after this many consecutive failures
    #: (failed health checks, or connect errors and 5xx answers on traffic), and comes back
    #: on its first passing health check.
    eject_after_failures: int = Field(3, ge=1)
    #: Panic mode: when more than this share of a model's workers is out, route to all of
    #: them (the health view is more likely wrong than most of the fleet down at once).
    panic_threshold: float = Field(0.5, ge=0, le=1)

    # -- routing
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

    # -- local development
    dry_run: bool = False

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("endpoints")
    @classmethod
    def _check_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must be an http:// or https:// URL")
        return [u.rstrip("/") for u in v]

    @model_validator(mode="after")
    def _check_discovery(self) -> GatewaySettings:
        if self.discovery == "kubernetes" and not self.services:
            raise ValueError("discovery 'kubernetes' needs 'services' (model name -> worker Service)")
        if self.max_inflight > self.max_connections:
            # Admission control must refuse before the upstream pool would make requests wait.
            raise ValueError(
                f"max_inflight ({self.max_inflight}) must not exceed max_connections ({self.max_connections})"
            )
        return self

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


def _config_path() -> Path | None:
    import os

    if _CONFIG_PATH is not None:
        return _CONFIG_PATH
    env = os.environ.get("VGATE_CONFIG")
    return Path(env) if env else None


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
