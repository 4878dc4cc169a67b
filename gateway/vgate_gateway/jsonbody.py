"""Reading and parsing request bodies that may be hostile.

The body is read up to ``max_bytes``: a ``Content-Length`` above it is refused before a byte
is read, and a chunked body is refused as soon as it passes it, so an oversized request never
sits in memory. Parsing is strict (orjson): invalid UTF-8, lone surrogates, numbers that do
not fit a double, trailing data and nesting deeper than ``max_depth`` are all a 400, never
an exception escaping as a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from vgate_gateway.errors import OpenAIError, invalid_request

#: ASGI's ``receive`` callable, spelled here so request parsing needs no HTTP framework.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


def too_large(max_bytes: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is larger than {max_bytes} bytes, the most this gateway accepts.",
        code="request_too_large",
        headers={"connection": "close"},
    )


def declared_length(raw: bytes | None) -> int | None:
    """The ``Content-Length`` value, or a 400 if it is not a plain number."""
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise invalid_request("The Content-Length header is not a number.", code="invalid_content_length")
    return int(raw)


async def read_body(receive: Receive, max_bytes: int, content_length: int | None) -> bytes:
    """The whole body, or a 413 as soon as it is known to exceed ``max_bytes``."""
    if content_length is not None and content_length > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def loads(body: bytes, max_depth: int) -> Any:
    """Parse ``body`` strictly; every problem is a 400 :class:`OpenAIError` in OpenAI's shape."""
    if not body.strip():
        raise invalid_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if depth_exceeds(payload, max_depth):
        raise invalid_request(
            f"The request body is nested deeper than {max_depth} levels.", code="json_too_deep"
        )
    return payload


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth`` (iterative: no recursion limit to hit)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            return True
        children = container.values() if isinstance(container, dict) else container
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
