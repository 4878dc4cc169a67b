"""Reading a request once: the body, limited and parsed strictly, into the typed Request.

The body is read up to ``max_bytes``: a ``Content-Length`` above it is refused before a byte
is read, and a chunked body is refused as soon as it passes it, so an oversized request never
sits in memory. Parsing is strict (orjson): invalid UTF-8, lone surrogates, numbers that do
not fit a double, trailing data and nesting deeper than ``max_depth`` are all a 400, never
an exception escaping as a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.offload import off_loop_if_large
from vgate_gateway.protocol import CACHE_HEADER, REQUEST_ID_HEADER, Kind, Request
from vgate_gateway.settings import DEFAULT_MAX_CONTAINERS, DEFAULT_MAX_DEPTH

#: ASGI's ``receive`` callable, spelled here so request parsing needs no HTTP framework.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


@dataclass(frozen=True)
class BodyLimits:
    """How large and how complex a request body may be (validated settings)."""

    max_bytes: int
    max_depth: int
    max_containers: int


# Not forwarded: hop-by-hop headers, those the client sets for its own connection, and the
# gateway's own request header (the cache reads it from the Request).
_NOT_FORWARDED = frozenset(
    h.encode()
    for h in (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        CACHE_HEADER,
        # The request's class and deadline in the gateway's queue (front.schedule).
        "x-vgate-priority",
        "x-vgate-deadline-ms",
        # vLLM's own priority header wins over the body's field: only the gateway sets a
        # request's engine priority (upstream.queue.engine_priority).
        "x-vllm-priority",
    )
)
_CACHE = CACHE_HEADER.encode()
_CONTENT_LENGTH = b"content-length"


async def read_request(
    kind: Kind,
    receive: Receive,
    headers: Sequence[tuple[bytes, bytes]],
    limits: BodyLimits,
    *,
    request_id: str,
    key_id: str,
    count_usage: bool,
) -> Request:
    """The request on ``receive``: read once, limited, parsed strictly and checked (4xx otherwise).

    ``headers`` are the client's, already cleaned (:mod:`~vgate_gateway.front.hygiene`).
    ``count_usage``: the key's tokens are limited, so a stream must end with a usage chunk.
    """
    length: bytes | None = None
    cache_mode: str | None = None
    upstream: dict[str, str] = {}
    for name, value in headers:
        if name in _NOT_FORWARDED:
            if name == _CONTENT_LENGTH:
                length = value
            elif name == _CACHE:
                cache_mode = value.decode("latin-1")
            continue
        text = _NAMES.get(name)
        if text is None:
            text = name.decode("latin-1")
            if len(_NAMES) < 256:
                _NAMES[name] = text
        upstream[text] = value.decode("latin-1")
    upstream[REQUEST_ID_HEADER] = request_id
    # Bytes are relayed as they come: a compressed answer would reach the client undeclared.
    upstream["accept-encoding"] = "identity"
    body = await read_body(receive, limits.max_bytes, declared_length(length))
    return await off_loop_if_large(
        len(body),
        parse_request,
        kind,
        body,
        limits,
        request_id=request_id,
        headers=upstream,
        key_id=key_id,
        cache_mode=cache_mode,
        count_usage=count_usage,
    )


#: Header names already decoded: clients send the same few.
_NAMES: dict[bytes, str] = {}


#: The body limits of the default settings.
DEFAULT_LIMITS = BodyLimits(8 * 1024 * 1024, DEFAULT_MAX_DEPTH, DEFAULT_MAX_CONTAINERS)


def parse_request(
    kind: Kind,
    body: bytes,
    limits: BodyLimits = DEFAULT_LIMITS,
    *,
    request_id: str = "",
    headers: dict[str, str] | None = None,
    key_id: str = "-",
    cache_mode: str | None = None,
    count_usage: bool = False,
) -> Request:
    """``body`` parsed strictly and checked into a Request, or a 400 :class:`OpenAIError`."""
    payload = loads(body, limits.max_depth, limits.max_containers)
    return Request.checked(
        kind,
        body,
        payload,
        request_id=request_id,
        headers=headers,
        key_id=key_id,
        cache_mode=cache_mode,
        count_usage=count_usage,
    )


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
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the whole body in one message, as most arrive
        if len(body) > max_bytes:
            raise too_large(max_bytes)
        return body
    return await _read_rest(receive, max_bytes, message)


async def _read_rest(receive: Receive, max_bytes: int, message: MutableMapping[str, Any]) -> bytes:
    """The body of a request whose first message (``message``) did not carry all of it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()


def loads(body: bytes, max_depth: int, max_containers: int) -> Any:
    """Parse ``body`` strictly; every problem is a 400 :class:`OpenAIError` in OpenAI's shape.

    A body with more than ``max_containers`` arrays and objects is refused before it is
    parsed: the parse holds the event loop (orjson keeps the GIL) for a time that grows with
    the containers it builds, and so does the collector while they live.
    """
    if not body.strip():
        raise invalid_request("The request body is empty; expected a JSON object.", code="invalid_json")
    # Brackets bound the containers from above: a body with too few to be too deep or too
    # many (the usual one) is left to the parse alone, without working out its structure.
    bound = body.count(b"[") + body.count(b"{")
    containers = Containers(body) if bound > max_depth or bound > max_containers else None
    if containers is not None and containers.more_than(max_containers):
        raise invalid_request(
            f"The request body has more than {max_containers} JSON arrays and objects.",
            code="json_too_complex",
        )
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if containers is not None and containers.deeper_than(max_depth):
        raise invalid_request(
            f"The request body is nested deeper than {max_depth} levels.", code="json_too_deep"
        )
    return payload


# Only a string's delimiters and the structure survive; `, :` tell an empty string apart.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{},:')
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


class Containers:
    """The arrays and objects of ``body``, valid JSON, read from its bytes.

    Computed with a few C-speed passes, never per value in Python (see :func:`structure`
    and :func:`nesting_exceeds`). A count of the brackets, an upper bound since strings may
    hold brackets too, answers nearly every request; the structure is worked out only when
    the count can't, and at most once.
    """

    __slots__ = ("_body", "_bound", "_brackets")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._bound = body.count(b"[") + body.count(b"{")
        self._brackets: bytes | None = None

    def more_than(self, count: int) -> bool:
        """Whether there are more than ``count`` of them, all levels together."""
        return self._bound > count and len(self._structure()) // 2 > count

    def deeper_than(self, max_depth: int) -> bool:
        """Whether they nest deeper than ``max_depth``."""
        return self._bound > max_depth and nesting_exceeds(self._structure(), max_depth)

    def _structure(self) -> bytes:
        if self._brackets is None:
            self._brackets = structure(self._body)
        return self._brackets


def structure(body: bytes) -> bytes:
    """The brackets of ``body``, valid JSON, outside its strings, objects written as arrays.

    Strings are cut out (escapes first, so every quote left is a delimiter), which leaves
    the brackets: one ``[`` and one ``]`` per container.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    text = text.replace(b'""', b"")  # strings with no bracket, comma or colon in them
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])  # what lies outside the strings left
    return text.translate(_AS_BRACKETS, b",:")


def nesting_exceeds(brackets: bytes, max_depth: int) -> bool:
    """Whether :func:`structure`'s ``brackets`` nest deeper than ``max_depth``.

    Where ``][`` joins two siblings, dropping it merges them without changing the depth;
    ``]]..][[..`` (k of each) merges k levels at once. Once no sibling is left the brackets
    read ``[[..]]`` and half their number is the depth.
    """
    too_deep = b"[" * (max_depth + 1)
    steps = [1 << i for i in reversed(range(max_depth.bit_length()))]
    while too_deep not in brackets:
        if b"][" not in brackets:
            return len(brackets) // 2 > max_depth
        for k in steps:
            brackets = brackets.replace(b"]" * k + b"[" * k, b"")
    return True
