"""The public port: one dispatch, every route on one page, one error renderer.

Every request gets an id (the client's if it is short and plain), header hygiene, the
request metrics and one access-log line. The routes::

    POST /v1/chat/completions, /v1/completions, /v1/embeddings   generation (below)
    GET  /v1/models                                              the models this key may use
    GET  /health, /ready                                         probes (front.probes)

A generation request passes, in this order, each refusal in OpenAI's error shape: the API
key (401), the key's rate limits (429, before the body is read, so a limited client costs
no parsing), the body read once, limited and parsed strictly into the typed Request (413,
400: :mod:`~vgate_gateway.front.body`; before it, the request's class and deadline in the
queue, :mod:`~vgate_gateway.front.schedule`: 400, 403), the key's model allow-list (404, exactly as for a
model that is not served), admission (503). The handler's Answer then goes out through the
edge, watched for the client leaving; its usage is charged to the key when it ends.

The generation routes do not go through FastAPI: a framework request object, dependency
solving and its middleware stack cost more per request than everything this module does,
and none of it is needed to answer bytes with bytes. FastAPI serves the internal port and
the OpenAPI document (:mod:`vgate_gateway.ops`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from vgate_gateway.errors import OpenAIError, model_not_found
from vgate_gateway.front import probes
from vgate_gateway.front.admission import Admission
from vgate_gateway.front.auth import ApiKey, KeyStore
from vgate_gateway.front.body import BodyLimits, ClientGone, read_request
from vgate_gateway.front.edge import ClientWatch, Edge, Receive, Send
from vgate_gateway.front.hygiene import TrustedProxies, clean_headers
from vgate_gateway.front.ratelimit import Limiter, Limits, limits_for
from vgate_gateway.front.recent_errors import RecentErrors
from vgate_gateway.front.schedule import schedule_of
from vgate_gateway.logs import key_id_var, request_id_var
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import REQUEST_ID_HEADER, Answer, Handler, Kind

log = logging.getLogger(__name__)
access_log = logging.getLogger("vgate.access")

GENERATION = {kind.value: kind for kind in Kind}
MODELS_PATH = "/v1/models"
#: Every path the public port answers, and its method.
ROUTES: dict[str, str] = {
    **dict.fromkeys(GENERATION, "POST"),
    MODELS_PATH: "GET",
    probes.HEALTH_PATH: "GET",
    probes.READY_PATH: "GET",
}
# Paths counted by name in the request metrics; anything else is "other" (bounded labels).
_KNOWN_PATHS = frozenset({*ROUTES, "/metrics", "/stats"})
_QUIET_PATHS = frozenset({probes.HEALTH_PATH, probes.READY_PATH, "/metrics"})
# Probes answer 503 by design while the gateway starts: not an error a client saw.
_PROBES = frozenset({probes.HEALTH_PATH, probes.READY_PATH})
# A client-supplied id is kept only if it is short and plain (it lands in logs and headers).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_AUTHORIZATION = b"authorization"


@dataclass(frozen=True)
class DoorConfig:
    body: BodyLimits
    default_limits: Limits
    trusted_proxies: TrustedProxies


@dataclass(frozen=True)
class Services:
    """What the door hands requests to, made by the app's lifespan."""

    handle: Handler
    admission: Admission
    #: The model cards of every model served now.
    model_cards: Callable[[], list[dict[str, Any]]]
    #: Whether the first round of health checks is done, and the models served.
    readiness: Callable[[], tuple[bool, list[str]]]
    retry_after_s: int


class Door:
    """The public port's ASGI app."""

    def __init__(
        self,
        services: Services,
        *,
        keys: KeyStore,
        limiter: Limiter | None,
        config: DoorConfig,
        metrics: Metrics,
        errors: RecentErrors | None = None,
    ) -> None:
        self.services = services
        #: The latest error answers, for /stats and the status page.
        self.errors = errors
        self.keys = keys
        self.limiter = limiter
        self.config = config
        self.metrics = metrics
        # Ids are a random per-process prefix and a counter: unique, and no system call each.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        self._series: dict[tuple[str, str, int], Any] = {}
        #: The limits of each key seen (by identity: a reloaded keys file makes new keys).
        self._limits: dict[int, tuple[ApiKey, Limits]] = {}
        self._latency: dict[str, Any] = {}
        self._watch = ClientWatch()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_id = self._request_id(scope["headers"])
        id_token, key_token = request_id_var.set(request_id), key_id_var.set("-")
        path, method = scope["path"], scope["method"]
        label = path if path in _KNOWN_PATHS else "other"
        counted = label not in _QUIET_PATHS
        started = time.monotonic()
        edge = Edge(send, request_id.encode())
        if counted:
            self.metrics.inflight.inc()
        try:
            await self._dispatch(scope, receive, edge, path, method)
        except ClientGone:
            edge.status = 499
        except Exception as exc:
            if edge.started:
                raise
            log.error("unhandled error on %s %s", method, path, exc_info=exc)
            await edge.send(Answer.error(OpenAIError(500, "Internal server error", code="internal_error")))
        finally:
            elapsed = time.monotonic() - started
            if counted:
                self.metrics.inflight.dec()
            self._observe(label, method, edge.status, elapsed)
            if edge.status >= 400 and self.errors is not None and edge.status != 499 and label not in _PROBES:
                self.errors.record(edge.status, edge.error_body, edge.model, path)
            level = logging.DEBUG if label in _QUIET_PATHS else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "%s %s %d %.1fms key=%s",
                    method,
                    path,
                    edge.status,
                    elapsed * 1000,
                    key_id_var.get(),
                )
            key_id_var.reset(key_token)
            request_id_var.reset(id_token)

    async def _dispatch(
        self, scope: MutableMapping[str, Any], receive: Receive, edge: Edge, path: str, method: str
    ) -> None:
        client = scope.get("client")
        headers = clean_headers(scope["headers"], client[0] if client else None, self.config.trusted_proxies)
        allowed = ROUTES.get(path)
        if allowed is None or method != allowed:
            await edge.send(Answer.error(_no_route(path, allowed)))
        elif path == probes.HEALTH_PATH:
            await edge.send(probes.health())
        elif path == probes.READY_PATH:
            ready, models = self.services.readiness()
            await edge.send(probes.ready(ready, models, self.services.retry_after_s))
        else:
            try:
                await self._api(scope, receive, edge, headers, path)
            except OpenAIError as exc:
                await edge.send(Answer.error(exc))

    async def _api(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        edge: Edge,
        headers: list[tuple[bytes, bytes]],
        path: str,
    ) -> None:
        key = self.keys.authenticate(_header(headers, _AUTHORIZATION))
        key_id_var.set(key.key_id)
        limits = self._limits_of(key)
        metered = self.limiter is not None and limits.active
        if self.limiter is not None and metered:
            decision = await self.limiter.admit(key.key_id, limits)
            edge.extra += decision.headers()
            if not decision.allowed:
                raise decision.error()
        kind = GENERATION.get(path)
        if kind is None:
            await edge.send(self._models(key))
            return
        schedule = schedule_of(key, headers, time.monotonic())
        req = await read_request(
            kind,
            receive,
            headers,
            self.config.body,
            request_id=request_id_var.get(),
            key_id=key.key_id,
            count_usage=metered and bool(limits.tpm),
        )
        edge.model = req.model
        if not key.allows(req.model):
            raise model_not_found(req.model)
        req.schedule = schedule
        admission = self.services.admission
        try:
            await admission.acquire()
        except OpenAIError:
            self.metrics.rejected.inc()
            raise
        answer: Answer | None = None
        watched = self._watch.start(receive)
        try:
            try:
                answer = await self.services.handle(req)
            except OpenAIError as exc:
                answer = Answer.error(exc)
            await edge.send(answer, strip_usage=req.strip_usage)
        except asyncio.CancelledError:
            if not watched.left:
                raise
            watched.task.uncancel()
            await edge.closed()
        finally:
            self._watch.stop(watched)
            admission.release()
            if self.limiter is not None and metered and limits.tpm and answer is not None:
                self.limiter.charge(key.key_id, limits, answer.usage.total())

    def _limits_of(self, key: ApiKey) -> Limits:
        known = self._limits.get(id(key))
        if known is not None and known[0] is key:
            return known[1]
        if len(self._limits) >= 4096:
            self._limits.clear()
        limits = limits_for(key, self.config.default_limits)
        self._limits[id(key)] = (key, limits)
        return limits

    def _models(self, key: ApiKey) -> Answer:
        """``GET /v1/models``: the models served now that ``key`` may use."""
        created = int(time.time())
        data = [
            {**card, "object": "model", "created": card.get("created") or created, "owned_by": "vgate"}
            for card in self.services.model_cards()
            if key.allows(str(card["id"]))
        ]
        return Answer(200, orjson.dumps({"object": "list", "data": data}))

    def _request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        for name, value in headers:
            if name == _REQUEST_ID:
                incoming = value.decode("latin-1")
                if _VALID_ID.match(incoming):
                    return incoming
                break
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFFFFFF:016x}"

    def _observe(self, path: str, method: str, status: int, elapsed: float) -> None:
        key = (path, method, status)
        counter = self._series.get(key)
        if counter is None:
            counter = self._series[key] = self.metrics.tally(
                self.metrics.requests.labels(path, method, str(status))
            )
        counter.inc()
        latency = self._latency.get(path)
        if latency is None:
            latency = self._latency[path] = self.metrics.latency.labels(path)
        latency.observe(elapsed)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _no_route(path: str, allowed: str | None) -> OpenAIError:
    if allowed is not None:
        return OpenAIError(
            405, "Method not allowed for this route.", code="method_not_allowed", headers={"allow": allowed}
        )
    return OpenAIError(
        404,
        "Not found: this route does not exist. See /v1/models, /v1/chat/completions, /v1/completions.",
        code="not_found",
    )
