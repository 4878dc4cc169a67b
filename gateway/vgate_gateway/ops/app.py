"""The internal port: ``/metrics``, ``/stats``, ``/load``, ``/status``, ``/docs``, ``/openapi.json`` (and the probes).

Served by FastAPI, where it earns its place: a handful of low-rate endpoints, and the
OpenAPI document users read. One uvicorn server listens on both sockets and one lifespan
owns every resource; requests are dispatched by the local port they arrived on, which a
client cannot forge (:class:`vgate_gateway.app.Gateway`). The operator's Ingress routes
only ``/v1`` to the public port, and the ServiceMonitor scrapes the internal one.
"""

from __future__ import annotations

import socket

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse

from vgate_gateway.ops import routes
from vgate_gateway.ops.errors import install_error_handlers
from vgate_gateway.ops.openapi import public_openapi
from vgate_gateway.ops.status_page.route import router as status_page_router

TITLE = "V-Gate"


def build_internal_app() -> FastAPI:
    """The internal endpoints; the gateway's lifespan puts its state on ``app.state.gateway``."""
    internal = FastAPI(title=f"{TITLE} internal", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(internal)
    internal.include_router(routes.router)
    internal.include_router(routes.internal_router)
    internal.include_router(status_page_router)

    @internal.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(public_openapi(TITLE))

    @internal.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} API")

    return internal


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
