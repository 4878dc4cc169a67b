"""The public API's OpenAPI document, made from the front door's route table.

The public port is answered by :mod:`vgate_gateway.front.door`, not by FastAPI; FastAPI
writes this document from the door's routes, and the request and error schemas of what
the gateway itself checks are added here.

Served on the internal port (``/openapi.json``, ``/docs``); ``make fuzz`` drives the gateway from it.
Request schemas describe what the gateway itself checks (the workers check the rest); every
error a route can answer is listed with OpenAI's error object.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from vgate_gateway import __version__
from vgate_gateway.front.door import ROUTES
from vgate_gateway.sse import MEDIA_TYPE as SSE_MEDIA_TYPE

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
}
_COMMON = {
    "model": {"type": "string", "minLength": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "seed": {"type": "integer"},
    "user": {"type": "string"},
}
_STREAM = {
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}
_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "required": ["model", "messages"],
        "properties": {**_COMMON, **_STREAM, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE}},
    },
    "/v1/completions": {
        "required": ["model", "prompt"],
        "properties": {
            **_COMMON,
            **_STREAM,
            "prompt": {
                "oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]
            },
        },
    },
    "/v1/embeddings": {
        "required": ["model", "input"],
        "properties": {
            "model": _COMMON["model"],
            "input": {
                "oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]
            },
        },
    },
}
#: What any /v1 route may answer besides 200, each in OpenAI's error shape.
_ERRORS = {
    "400": "Malformed request: invalid JSON, nesting too deep, a missing or wrong-typed field",
    "401": "Missing or wrong API key",
    "404": "The model is not served here (or not to this key)",
    "413": "The body exceeds the gateway's limit",
    "429": "The key's rate limit is reached; Retry-After says when to try again",
    "503": "No healthy worker serves the model now; Retry-After says when to try again",
}


_SUMMARIES = {
    "/health": "Liveness: the process serves HTTP",
    "/ready": "Readiness: 503 until the first health checks of the workers are done",
    "/v1/models": "The models served now (those the API key may use)",
}


def _documented() -> None:
    """Never called: the door answers these routes; FastAPI only writes them down."""


@cache
def public_openapi(title: str = "V-Gate") -> dict[str, Any]:
    """The OpenAPI document of the public port, with request and error schemas filled in."""
    routes = []
    for path, method in ROUTES.items():
        name = path.strip("/").removeprefix("v1/").replace("/", "_")
        summary = _SUMMARIES.get(path) or name.replace("_", " ").title()
        routes.append(APIRoute(path, _documented, methods=[method], summary=summary, operation_id=name))
    doc = get_openapi(title=title, version=__version__, routes=routes)
    doc.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, methods in doc.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for method, op in methods.items():
            op["security"] = [{"bearer": []}]
            op["responses"].pop("422", None)
            for status, description in _ERRORS.items():
                op["responses"][status] = {"description": description, "content": error_ref}
            schema = _BODIES.get(path) if method == "post" else None
            if schema is None:
                continue
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object", **schema}}},
            }
            content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
            if "stream" in schema["properties"]:
                # One schema per SSE event: a data line (JSON chunks, then [DONE]).
                content[SSE_MEDIA_TYPE] = {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"type": "string"}},
                    }
                }
            op["responses"]["200"] = {
                "description": "The answer (an SSE stream when stream is true)",
                "content": content,
            }
    return doc
