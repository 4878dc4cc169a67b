"""The OpenAI API: generation and embedding requests, and the model list.

The generation routes are the hot path, so they are plain ASGI apps: no request object,
no dependency solving, no task group. Each reads the body, takes an admission slot,
and sends the handler's answer. An answer still running after ``WATCH_AFTER_S`` gets one
watcher, which waits for the client to leave and, if it does, cancels the work (which
closes the upstream call); quicker answers never pay for a watcher task.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgate_gateway.error_handlers import error_response
from vgate_gateway.errors import OpenAIError
from vgate_gateway.guard import PAYLOAD_STATE
from vgate_gateway.protocol import NOT_PARSED, Kind, parse_request
from vgate_gateway.proxy import upstream_headers
from vgate_gateway.state import GatewayState

router = APIRouter(prefix="/v1")

#: nginx's "client closed request": logged when the client left before the answer.
CLIENT_CLOSED = 499
#: How long an answer runs before the gateway starts watching for its client to leave.
#: A client that left sooner is noticed then: its worker generates at most this long for it.
WATCH_AFTER_S = 0.2


class _ClientLeft(Exception):
    pass


class OpenAIEndpoint:
    """``POST`` of one OpenAI endpoint, as a raw ASGI app."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState = scope["app"].state.gateway
        try:
            body = await _read_body(receive)
        except _ClientLeft:
            return
        try:
            await state.admission.acquire()
        except OpenAIError as exc:
            state.metrics.rejected.inc()
            await error_response(exc)(scope, receive, send)
            return
        try:
            await self._answer(state, scope, body, receive, send)
        finally:
            state.admission.release()

    async def _answer(
        self, state: GatewayState, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        left = False
        watcher: asyncio.Future[Message] | None = None

        def on_message(done: asyncio.Future[Message]) -> None:
            nonlocal left
            if (
                not done.cancelled()
                and done.exception() is None
                and done.result()["type"] == "http.disconnect"
            ):
                left = True
                task.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_message)

        # Most answers are done before anyone could leave: the watcher (a task) starts only
        # for those still running after WATCH_AFTER_S; a timer costs far less than a task.
        timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
        try:
            try:
                # The guard middleware has parsed the body strictly already.
                parsed = parse_request(self.kind, body, scope.get("state", {}).get(PAYLOAD_STATE, NOT_PARSED))
                headers = upstream_headers(scope["headers"], scope["state"]["request_id"])
                response = await state.handle(parsed, headers)
            except OpenAIError as exc:
                response = error_response(exc)
            await response(scope, receive, send)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()
            await Response(status_code=CLIENT_CLOSED)(scope, receive, send)
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.remove_done_callback(on_message)
                watcher.cancel()


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientLeft
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


ENDPOINTS = {kind.value: OpenAIEndpoint(kind) for kind in Kind}
for _path, _endpoint in ENDPOINTS.items():
    # Listed for the framework (405 for other methods); HotRoutes answers them first.
    router.routes.append(Route(_path, _endpoint, methods=["POST"]))


class HotRoutes:
    """The generation endpoints, dispatched before the framework's router.

    Installed in front of the framework, inside the request-id and guard middleware (see
    ``app.GatewayApp``): those still wrap these requests, but the framework's error,
    routing, dependency solving and exception layers, which they do not need, are skipped.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    data = []
    for model in state.pool.models():
        card = state.health.model_cards.get(model, {})
        created = card.get("created") or int(time.time())
        data.append({**card, "id": model, "object": "model", "created": created, "owned_by": "vgate"})
    return JSONResponse({"object": "list", "data": data})
