"""What the gateway reads from OpenAI requests.

The proxy forwards the client's body bytes untouched; it parses only the fields
that routing, caching and metrics need, and validates just enough to answer
obviously bad requests itself with a 400 instead of spending an upstream call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vgate_gateway import jsonbody
from vgate_gateway.errors import invalid_request

DEFAULT_MAX_DEPTH = 64
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
        """The prompt flattened in order, for prefix-aware routing and cache keys."""
        if self.kind is Kind.CHAT:
            parts = []
            for m in self.payload.get("messages", []):
                if isinstance(m, dict):
                    parts.append(f"<{m.get('role', '')}>")
                    parts.append(_content_text(m.get("content")))
            return "\n".join(parts)
        value = self.payload.get(PROMPT_FIELD[self.kind])
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]  # a list of prompts (a merged batch): routed on the first one
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


#: ``parse_request``'s ``payload`` when the body has not been parsed yet.
NOT_PARSED: Any = object()


def parse_request(kind: Kind, body: bytes, payload: Any = NOT_PARSED) -> ParsedRequest:
    """Validate the essentials of ``body`` or raise a 400 :class:`OpenAIError`.

    ``payload`` is ``body`` already parsed (the guard middleware parses every body strictly).
    """
    if payload is NOT_PARSED:
        payload = jsonbody.loads(body, DEFAULT_MAX_DEPTH)
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
    names = {list: "array", str: "string"}
    return " or ".join(names[t] for t in types)
