"""The internal port: ``/metrics``, ``/stats``, ``/status``, ``/docs``, ``/openapi.json`` (and the probes).

One uvicorn server listens on both sockets and one lifespan owns every resource; requests
are dispatched by the local port they arrived on, which a client cannot forge. The
operator's Ingress routes only ``/v1`` to the public port, and the ServiceMonitor scrapes
the internal one.
"""

from __future__ import annotations

import socket

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vgate_gateway.error_handlers import install_error_handlers
from vgate_gateway.openapi_doc import public_openapi
from vgate_gateway.routes import ops
from vgate_gateway.status_page import router as status_page_router


def build_internal_app(public: FastAPI) -> FastAPI:
    """The internal endpoints, sharing ``public``'s state (its lifespan fills it)."""
    internal = FastAPI(title=f"{public.title} internal", docs_url=None, redoc_url=None, openapi_url=None)
    internal.state = public.state
    install_error_handlers(internal)
    internal.include_router(ops.router)
    internal.include_router(ops.internal_router)
    internal.include_router(status_page_router)

    @internal.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(public_openapi(public))

    @internal.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{public.title} API")

    return internal


class PortDispatch:
    """Sends requests that arrived on ``internal_port`` to ``internal``, everything else to ``public``."""

    def __init__(self, public: ASGIApp, internal: ASGIApp, internal_port: int) -> None:
        self.public = public
        self.internal = internal
        self.internal_port = internal_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server is not None and server[1] == self.internal_port:
            await self.internal(scope, receive, send)
        else:
            await self.public(scope, receive, send)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
