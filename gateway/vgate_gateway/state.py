"""What the routes reach through ``app.state.gateway``: the objects the lifespan owns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vgate_gateway.admission import Admission
from vgate_gateway.handler import Handler
from vgate_gateway.health import HealthChecker
from vgate_gateway.metrics import Metrics
from vgate_gateway.routing import Router
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstreams import UpstreamPool


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: Metrics
    pool: UpstreamPool
    router: Router
    admission: Admission
    health: HealthChecker
    handle: Handler
    started_at: float
    #: Extra sections for GET /stats, each a callable returning JSON-able data.
    stats_sections: dict[str, Callable[[], Any]] = field(default_factory=dict)
