"""OpenAI's error dialect, everywhere: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the gateway produces — its own validation, the framework's 404/405,
upstream trouble — leaves in this shape with the matching HTTP status. Inside a
stream that has already started, the same object travels as one SSE ``data:`` event.

This module is the error as data and its one rendering (:meth:`OpenAIError.json_bytes`),
with no HTTP framework: every layer raises it, and the front door and the internal app
send those bytes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# The ``type`` OpenAI uses for each status class.
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or error_type(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        """The error as the JSON body of an answer (compact, UTF-8)."""
        return orjson.dumps(self.body())

    def sse_event(self) -> bytes:
        """The error as one SSE event, once a stream has started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unavailable(message: str, code: str, retry_after_s: int) -> OpenAIError:
    """503: no worker can take the request now; ``Retry-After`` says when to try again."""
    return OpenAIError(
        503,
        message,
        code=code,
        type_="service_unavailable_error",
        headers={"Retry-After": str(retry_after_s)},
    )


def model_not_found(model: str) -> OpenAIError:
    """404 for a model that is not served (or that the caller's key may not see: the same answer)."""
    return OpenAIError(
        404,
        f"The model '{model}' does not exist or is not served here. See GET /v1/models.",
        code="model_not_found",
        param="model",
    )
