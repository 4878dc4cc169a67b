"""The OpenAI API: generation and embedding requests, and the model list."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from vgate_gateway.guard import PAYLOAD_STATE
from vgate_gateway.protocol import NOT_PARSED, Kind, parse_request
from vgate_gateway.proxy import upstream_headers
from vgate_gateway.state import GatewayState

router = APIRouter(prefix="/v1")
T = TypeVar("T")

#: nginx's "client closed request": logged when the client left before the answer.
CLIENT_CLOSED = 499


async def _answer(request: Request, kind: Kind) -> Response:
    state: GatewayState = request.app.state.gateway
    body = await request.body()
    parsed = parse_request(kind, body, getattr(request.state, PAYLOAD_STATE, NOT_PARSED))
    headers = upstream_headers(request.headers, request.state.request_id)
    result = await _unless_disconnected(request, state.handle(parsed, headers))
    return result if result is not None else Response(status_code=CLIENT_CLOSED)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``, cancelling it (and so closing its upstream call) if the client leaves."""
    done: list[T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            done.append(await work)
        except Exception as exc:  # re-raised outside the group, unwrapped, for the error handlers
            failed.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return done[0] if done else None


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _answer(request, Kind.CHAT)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _answer(request, Kind.COMPLETIONS)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await _answer(request, Kind.EMBEDDINGS)


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    data = []
    for model in state.pool.models():
        card = state.health.model_cards.get(model, {})
        created = card.get("created") or int(time.time())
        data.append({**card, "id": model, "object": "model", "created": created, "owned_by": "vgate"})
    return JSONResponse({"object": "list", "data": data})
