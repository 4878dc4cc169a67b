"""Request models and vLLM's error dialect.

Requests are validated with pydantic and unknown fields are accepted (vLLM logs and
ignores them). Errors use vLLM's current ``ErrorResponse`` shape:
``{"error": {"message", "type", "param", "code"}}`` where ``code`` is the HTTP status.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """A request failure to be answered in vLLM's error shape."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def error_type(status: int) -> str:
    """vLLM's ``type`` for a status: ``BadRequestError``, ``NotFoundError``, ..."""
    try:
        phrase = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "Error"
    return phrase if phrase.endswith("Error") else phrase + "Error"


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": status}}


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    """An error answer with the matching HTTP status."""
    return JSONResponse(error_body(message, status, param), status_code=status)


M = TypeVar("M", bound=BaseModel)

# OpenAI's limit on choices per request; it also bounds the work one request can queue.
MAX_N = 128
# Qwen2.5's vocabulary size: token-id prompts must stay below it.
VOCAB_SIZE = 151_936
# vLLM bounds a request's ``priority`` to a signed 64-bit integer.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class SamplingRequest(_Lenient):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    #: vLLM's extension: lower is served earlier under ``--scheduling-policy priority``; an
    #: engine running fcfs accepts and ignores it (vLLM V1 does not refuse it).
    priority: int = Field(0, ge=INT64_MIN, le=INT64_MAX)

    def stop_list(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        """The output budget the client asked for, if any."""
        return self.max_tokens

    def check(self) -> None:
        """Value checks with vLLM's wording."""
        max_tokens = self.requested_max_tokens()
        if max_tokens is not None and max_tokens < 1:
            raise ApiError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        if self.n < 1:
            raise ApiError(f"n must be at least 1, got {self.n}.", param="n")
        if self.n > MAX_N:
            raise ApiError(f"n must be at most {MAX_N}, got {self.n}.", param="n")
        if self.min_tokens < 0:
            raise ApiError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.", param="min_tokens"
            )
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise ApiError(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {self.min_tokens}.",
                param="min_tokens",
            )
        if self.stream_options is not None and not self.stream:
            raise ApiError("Stream options can only be defined when `stream=True`.", param="stream_options")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; only text parts are understood by a text-only model."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ApiError(f"Unsupported content part type: {part.get('type')!r}", param="messages")
            if not isinstance(part.get("text"), str):
                raise ApiError("A content part of type 'text' needs a string 'text' field.", param="messages")
            texts.append(part["text"])
        return "\n".join(texts)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def requested_max_tokens(self) -> int | None:
        # OpenAI's newer name wins, as in vLLM.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    return_token_ids: bool | None = None

    def max_tokens_or_default(self) -> int:
        """Text completions default to 16 tokens, as in OpenAI's API and vLLM."""
        return 16 if self.max_tokens is None else self.max_tokens


class EmbeddingRequest(_Lenient):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


async def parse_body(request: Request, model: type[M]) -> M:
    """Read and validate the JSON body; malformed JSON and invalid fields are 400s."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(_describe(exc), param=_first_param(exc)) from None


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]]
    return f"{len(errors)} validation error(s): " + "; ".join(parts)


def _first_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
