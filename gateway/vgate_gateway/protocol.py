"""The typed Request and Answer every step of the request path speaks.

The front door reads, limits and parses a body once into a :class:`Request` and passes it
explicitly to the efficiency layer and on to the proxy. Every step answers with one
:class:`Answer`: a status, headers, and a body that is either bytes or an async iterator of
whole SSE events. Nothing here knows an HTTP framework; an answer becomes ASGI only at the
edge (:mod:`vgate_gateway.front.edge`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.sse import HEADERS as SSE_HEADERS
from vgate_gateway.sse import MEDIA_TYPE as SSE_MEDIA_TYPE

#: The most prompt text routing is given: well above what prefix-aware routing hashes
#: (256 blocks of 64 characters), so a longer prompt routes exactly as its start does.
PROMPT_TEXT_CHARS = 64 * 1024
#: The request id: the client's if it sent a valid one, else the gateway's; sent upstream
#: (vLLM names its response after it) and back to the client.
REQUEST_ID_HEADER = "x-request-id"
#: How a client asks the result cache to act (``bypass``, ``force``); answers say ``hit``/``miss``.
CACHE_HEADER = "x-vgate-cache"
JSON_MEDIA_TYPE = "application/json"


class Kind(StrEnum):
    """The OpenAI endpoints the gateway serves, by upstream path."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"


#: The field that carries the prompt for each kind.
PROMPT_FIELD: Mapping[Kind, str] = {
    Kind.CHAT: "messages",
    Kind.COMPLETIONS: "prompt",
    Kind.EMBEDDINGS: "input",
}
#: The JSON types each kind's prompt field may have.
_PROMPT_TYPES: Mapping[Kind, tuple[type, ...]] = {
    Kind.CHAT: (list,),
    Kind.COMPLETIONS: (str, list),
    Kind.EMBEDDINGS: (str, list),
}


class Priority(IntEnum):
    """A request's class in its model's queue: a lower value is served first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Schedule:
    """Where a request stands in its model's queue: class, fair-share weight, deadline.

    Set by the front door from the caller's key and headers; only the dispatcher reads it.
    """

    priority: Priority = Priority.NORMAL
    #: The key's share of the fleet against other keys of its class (``weight=`` in the keys file).
    weight: float = 1.0
    #: When the request must have reached a worker (``time.monotonic()``), or None.
    deadline: float | None = None


#: The schedule of a request nobody said anything about.
DEFAULT_SCHEDULE = Schedule()


@dataclass(slots=True)
class Request:
    """One OpenAI request, read and checked once at the front door.

    ``body`` is what goes upstream: the client's bytes untouched, or (only for a merged
    micro-batch, or a stream whose usage the gateway must count) bytes made for it.
    ``payload`` is the client's parsed body; ``headers`` are the ones sent upstream.
    """

    kind: Kind
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    user: str | None
    request_id: str
    headers: dict[str, str]
    #: The short, non-secret id of the caller's API key (``"-"`` when keys are off).
    key_id: str = "-"
    #: The client's ``x-vgate-cache`` header, if any (the cache interprets it).
    cache_mode: str | None = None
    #: The gateway asked the worker for a usage chunk the client did not ask for (to charge
    #: the key's tokens); the edge keeps it from the client.
    strip_usage: bool = False
    #: Its class, weight and deadline in the model's queue (the front door sets it).
    schedule: Schedule = DEFAULT_SCHEDULE
    #: Weighted tokens charged to the key's fair-share counter when the queue dispatched it;
    #: the dispatcher corrects the charge from the answer's usage.
    fair_charge: float = 0.0
    #: The ``priority`` the worker's scheduler gets (set at dispatch when the model's workers
    #: run vLLM's priority policy; None: the body goes as it is).
    engine_priority: int | None = None
    #: The worker where this streamed request of a key over its share holds one of the places
    #: such keys have among a worker's prefills, until its first token (set at dispatch).
    prefilling_on: str | None = None
    #: The worker, one a flood may use, where this streamed request of a key within its share
    #: awaits its first token (the prefill-free workers were full): the flood's next prefill
    #: is held from it meanwhile (set at dispatch).
    awaiting_first_on: str | None = None
    _tenant: str | None = field(default=None, repr=False)

    @classmethod
    def checked(
        cls,
        kind: Kind,
        body: bytes,
        payload: Any,
        *,
        request_id: str = "",
        headers: dict[str, str] | None = None,
        key_id: str = "-",
        cache_mode: str | None = None,
        count_usage: bool = False,
    ) -> Request:
        """The request for ``body`` (parsed: ``payload``), its essentials checked (a 400 otherwise).

        ``count_usage``: the key's tokens are limited, so a stream must end with a usage chunk.
        """
        model, stream, options, user = check_payload(kind, payload)
        include_usage = bool(options.get("include_usage")) if options else False
        strip_usage = count_usage and stream and not include_usage
        return cls(
            kind,
            with_usage_requested(body, options) if strip_usage else body,
            payload,
            model,
            stream,
            include_usage,
            user,
            request_id,
            headers if headers is not None else {REQUEST_ID_HEADER: request_id},
            key_id,
            cache_mode,
            strip_usage,
        )

    @property
    def tenant(self) -> str | None:
        """Who is asking, as far as a worker can tell: a digest of the credentials, never the key.

        Answers are shared (cache, dedup, batches) only among requests with the same
        credentials, so a client can never read an answer a worker would have refused it.
        """
        if self._tenant is None:
            credentials = self.headers.get("authorization")
            self._tenant = hashlib.sha256(credentials.encode()).hexdigest() if credentials else ""
        return self._tenant or None

    def prompt_text(self) -> str:
        """The start of the prompt flattened in order, at most :data:`PROMPT_TEXT_CHARS`, for routing.

        Bounded so routing costs the same for any prompt length: a long chat is read only up
        to the limit, and a token-id prompt is serialized only as far as it can reach.
        """
        limit = PROMPT_TEXT_CHARS
        if self.kind is Kind.CHAT:
            parts: list[str] = []
            size = -1  # the length of the text so far: a newline goes before every part but the first
            for m in self.payload.get("messages", ()):
                if size >= limit:
                    break
                if isinstance(m, dict):
                    content = m.get("content")
                    if not isinstance(content, str):
                        content = _parts_text(content, limit)
                    elif len(content) > limit:
                        content = content[:limit]
                    part = f"<{m.get('role', '')}>\n{content}"
                    parts.append(part)
                    size += len(part) + 1
            text = "\n".join(parts)
            return text if len(text) <= limit else text[:limit]
        value = self.payload.get(PROMPT_FIELD[self.kind])
        if isinstance(value, list) and value and isinstance(value[0], str | list):
            value = value[0]  # a list of prompts (a merged batch): routed on the first one
        if isinstance(value, str):
            return value[:limit]
        if isinstance(value, list):
            value = value[:limit]  # each item is at least one character of JSON
        return orjson.dumps(value)[:limit].decode("utf-8", "ignore")


def _parts_text(content: Any, limit: int) -> str:
    """The text of a message's text content parts, read up to about ``limit`` characters."""
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    size = 0
    for part in content:
        if size >= limit:
            break
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            texts.append(text[: limit - size])
            size += len(texts[-1])
    return "".join(texts)


#: What :func:`check_payload` finds in a body: model, stream, stream_options, user.
Essentials = tuple[str, bool, dict[str, Any], str | None]


def check_payload(kind: Kind, payload: Any) -> Essentials:
    """Validate the essentials of a parsed body or raise a 400 :class:`OpenAIError`."""
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.")
    get = payload.get
    model = get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("You must provide a model parameter (a non-empty string).", param="model")
    name, types = PROMPT_FIELD[kind], _PROMPT_TYPES[kind]
    value = get(name)
    if value is None:
        raise invalid_request(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(value, types) or (isinstance(value, list) and not value):
        raise invalid_request(f"Invalid '{name}': expected a non-empty {_describe(types)}.", param=name)
    stream = get("stream", False)
    if stream is not False and stream is not True:
        raise invalid_request("Invalid 'stream': expected a boolean.", param="stream")
    if stream and kind is Kind.EMBEDDINGS:
        raise invalid_request("Embeddings cannot be streamed.", param="stream")
    options = get("stream_options") or _NO_OPTIONS
    if not isinstance(options, dict):
        raise invalid_request("Invalid 'stream_options': expected an object.", param="stream_options")
    user = get("user")
    return model, stream, options, user if isinstance(user, str) else None


#: The stream options of a request that gave none (never changed).
_NO_OPTIONS: dict[str, Any] = {}


def with_usage_requested(body: bytes, stream_options: dict[str, Any]) -> bytes:
    """``body`` (a JSON object) asking for the stream's usage chunk too.

    The field is appended before the closing brace, the client's bytes before it untouched:
    a repeated key's last value is the one JSON parsers (vLLM's included) keep.
    """
    end = body.rstrip().rfind(b"}")
    extra = b',"stream_options":' + orjson.dumps({**stream_options, "include_usage": True})
    return body[:end] + extra + body[end:]


def with_engine_priority(body: bytes, payload: dict[str, Any], allowed: int) -> bytes:
    """``body`` carrying ``"priority": allowed`` for the worker's scheduler (lower is served first).

    Appended before the closing brace like :func:`with_usage_requested` (the last of a repeated
    key wins), the client's bytes untouched. A client's own integer ``priority`` stands when it
    is as urgent as ``allowed`` or less (a batch job may step back); a more urgent one is
    overridden, since its key does not allow it. A ``priority`` that is not an integer is left
    for the worker to refuse, as it would without the gateway.
    """
    asked = payload.get("priority")
    if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool) or asked >= allowed):
        return body
    end = body.rstrip().rfind(b"}")
    return body[:end] + b',"priority":' + str(allowed).encode() + body[end:]


def _describe(types: tuple[type, ...]) -> str:
    names: dict[type, str] = {list: "array", str: "string"}
    return " or ".join(names[t] for t in types)


@dataclass(slots=True)
class Usage:
    """The tokens one answer used, read once from its ``usage`` and shared by every reader.

    Filled by whoever produces the answer: from a JSON body when first asked, from a
    stream's usage chunk as it passes. A stream cut short before its usage chunk counts one
    token per event received.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    events: int = 0

    def total(self) -> int:
        """Tokens to charge: the reported total, else one per event seen."""
        return self.total_tokens if self.total_tokens is not None else self.events

    def take(self, usage: Any) -> None:
        """Record a ``usage`` object as a worker wrote it (ignored if it is not one)."""
        if not isinstance(usage, dict):
            return
        # ``type() is int``: a count, never a bool (which is an int to isinstance).
        if type(value := usage.get("prompt_tokens")) is int:
            self.prompt_tokens = value
        if type(value := usage.get("completion_tokens")) is int:
            self.completion_tokens = value
        if type(value := usage.get("total_tokens")) is int:
            self.total_tokens = value


_USAGE = b'"usage"'
#: The three counts of a usage object, as they appear in the bytes, and the field each fills.
_COUNTS = (
    (b'"prompt_tokens"', "prompt_tokens"),
    (b'"completion_tokens"', "completion_tokens"),
    (b'"total_tokens"', "total_tokens"),
)
_NUMBER = re.compile(rb"\s*:\s*(\d+)")
#: How far past ``"usage"`` its counts may be: the usage object is small, and it is last.
_USAGE_SPAN = 1024
#: How far past ``"usage"`` its object opens (``"usage": {``, with room for spaces); a ``null``
#: usage followed by another field's object is further than that.
_USAGE_OPENING = 16


def usage_of_json(body: bytes) -> Usage:
    """The ``usage`` of a whole JSON answer, found by a search from its end, not a parse.

    vLLM writes ``usage`` last. A ``"usage"`` inside a string is escaped (``\\"usage\\"``),
    so the last bare one is the answer's own. A flat usage object (the usual one) is parsed
    alone; one holding an object (``prompt_tokens_details``) is searched for its counts.
    """
    usage = Usage()
    at = body.rfind(_USAGE)
    if at < 0:
        return usage
    opening = body.find(b"{", at, at + _USAGE_OPENING)
    closing = body.find(b"}", opening) if opening >= 0 else -1
    if closing >= 0 and body.find(b"{", opening + 1, closing) < 0:
        try:
            usage.take(orjson.loads(body[opening : closing + 1]))
            return usage
        except orjson.JSONDecodeError:
            pass
    end = min(len(body), at + _USAGE_SPAN)
    for key, name in _COUNTS:
        found = body.find(key, at, end)
        if found >= 0 and (number := _NUMBER.match(body, found + len(key))):
            setattr(usage, name, int(number.group(1)))
    return usage


class Answer:
    """One answer, whoever produced it: a worker, a merged batch, a shared call, the cache.

    ``body`` holds a whole answer; a stream has ``events`` instead, an async iterator of
    runs of whole SSE events. ``usage`` is read once and shared (limits, cache, metrics).
    """

    __slots__ = ("_usage", "body", "events", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        events: AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.events = events
        self.headers = headers if headers is not None else {"content-type": JSON_MEDIA_TYPE}
        self._usage = usage

    @classmethod
    def stream(cls, events: AsyncIterator[bytes], usage: Usage, headers: Mapping[str, str] = {}) -> Answer:
        """A 200 SSE answer relaying ``events``."""
        return cls(
            200,
            events=events,
            headers={"content-type": SSE_MEDIA_TYPE, **SSE_HEADERS, **headers},
            usage=usage,
        )

    @classmethod
    def error(cls, exc: OpenAIError) -> Answer:
        """``exc`` in OpenAI's error shape, with its status and headers."""
        return cls(exc.status, exc.json_bytes(), headers={"content-type": JSON_MEDIA_TYPE, **exc.headers})

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", JSON_MEDIA_TYPE)

    @property
    def usage(self) -> Usage:
        """The answer's usage; for a whole 200 answer, read from its body on first use."""
        if self._usage is None:
            self._usage = usage_of_json(self.body) if self.status == 200 and self.body else Usage()
        return self._usage

    async def read(self) -> bytes:
        """The whole body: ``body``, or a stream's events joined (the stream is closed)."""
        if self.events is None:
            return self.body
        try:
            return b"".join([run async for run in self.events])
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]


#: Answers one request. Each step of the request path (the efficiency pipeline, the proxy)
#: is one; the proxy is the innermost.
Handler = Callable[[Request], Awaitable[Answer]]
