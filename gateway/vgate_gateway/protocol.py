"""What the gateway reads from OpenAI requests.

The proxy forwards the client's body bytes untouched; it parses only the fields
that routing, caching and metrics need, and validates just enough to answer
obviously bad requests itself with a 400 instead of spending an upstream call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from vgate_gateway import jsonbody
from vgate_gateway.errors import invalid_request

#: The most prompt text routing is given: well above what prefix-aware routing hashes
#: (256 blocks of 64 characters), so a longer prompt routes exactly as its start does.
PROMPT_TEXT_CHARS = 64 * 1024
#: The request id: the client's if it sent a valid one, else the gateway's; sent upstream
#: (vLLM names its response after it) and back to the client.
REQUEST_ID_HEADER = "x-request-id"


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


@dataclass(frozen=True)
class ParsedRequest:
    """The parts of an OpenAI request body the gateway acts on."""

    kind: Kind
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    user: str | None

    def prompt_text(self) -> str:
        """The start of the prompt flattened in order, at most :data:`PROMPT_TEXT_CHARS`, for routing.

        Bounded so routing costs the same for any prompt length: a long chat is read only up
        to the limit, and a token-id prompt is serialized only as far as it can reach.
        """
        limit = PROMPT_TEXT_CHARS
        if self.kind is Kind.CHAT:
            parts: list[str] = []
            size = -1  # the length of the text so far: a newline goes before every part but the first
            for m in self.payload.get("messages", []):
                if size >= limit:
                    break
                if isinstance(m, dict):
                    role = f"<{m.get('role', '')}>"
                    content = m.get("content")
                    text = content[:limit] if isinstance(content, str) else _parts_text(content, limit)
                    parts.append(role)
                    parts.append(text)
                    size += len(role) + len(text) + 2
            return "\n".join(parts)[:limit]
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


#: ``parse_request``'s ``payload`` when the body has not been parsed yet.
NOT_PARSED: Any = object()


def parse_request(kind: Kind, body: bytes, payload: Any = NOT_PARSED) -> ParsedRequest:
    """Validate the essentials of ``body`` or raise a 400 :class:`OpenAIError`.

    ``payload`` is ``body`` already parsed (the guard middleware parses every body strictly).
    """
    if payload is NOT_PARSED:
        payload = jsonbody.loads(body, jsonbody.DEFAULT_MAX_DEPTH, jsonbody.DEFAULT_MAX_CONTAINERS)
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("You must provide a model parameter (a non-empty string).", param="model")
    field, types = PROMPT_FIELD[kind], _PROMPT_TYPES[kind]
    value = payload.get(field)
    if value is None:
        raise invalid_request(f"Missing required parameter: '{field}'.", param=field)
    if not isinstance(value, types) or (isinstance(value, list) and not value):
        raise invalid_request(f"Invalid '{field}': expected a non-empty {_describe(types)}.", param=field)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_request("Invalid 'stream': expected a boolean.", param="stream")
    if stream and kind is Kind.EMBEDDINGS:
        raise invalid_request("Embeddings cannot be streamed.", param="stream")
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid_request("Invalid 'stream_options': expected an object.", param="stream_options")
    user = payload.get("user")
    return ParsedRequest(
        kind=kind,
        body=body,
        payload=payload,
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        user=user if isinstance(user, str) else None,
    )


def _describe(types: tuple[type, ...]) -> str:
    names: dict[type, str] = {list: "array", str: "string"}
    return " or ".join(names[t] for t in types)
