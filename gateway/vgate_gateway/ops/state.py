"""What the internal endpoints read: the objects the gateway's lifespan owns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vgate_gateway.metrics import Metrics
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.dispatch import Dispatcher
from vgate_gateway.upstream.pool import UpstreamPool
from vgate_gateway.upstream.routing import Router


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: Metrics
    pool: UpstreamPool
    router: Router
    dispatcher: Dispatcher
    #: Whether the first health checks are done, and the models served now.
    readiness: Callable[[], tuple[bool, list[str]]]
    started_at: float
    #: Extra sections for GET /stats, each a callable returning JSON-able data.
    stats_sections: dict[str, Callable[[], Any]] = field(default_factory=dict)
