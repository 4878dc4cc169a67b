"""The internal app's exception handlers: every error it answers leaves in OpenAI's shape.

An :class:`~vgate_gateway.errors.OpenAIError`, the framework's own 404/405/422, or a bug:
each is rendered by the one renderer, :meth:`OpenAIError.json_bytes`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vgate_gateway.errors import OpenAIError, invalid_request

log = logging.getLogger(__name__)


def error_response(error: OpenAIError) -> Response:
    """``error`` as a JSON response with its status and headers."""
    return Response(error.json_bytes(), error.status, error.headers, media_type="application/json")


def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = (
            "Not found: this route does not exist. See /v1/models, /v1/chat/completions, /v1/completions."
        )
    elif status == 405:
        message = "Method not allowed for this route."
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return error_response(OpenAIError(status, message, code=code, headers=dict(exc.headers or {})))


def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    return error_response(invalid_request(first.get("msg", "Invalid request"), param=".".join(loc) or None))


def _openai_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return error_response(exc)


def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(OpenAIError(500, "Internal server error", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
