"""What the gateway accepts, and the OpenAI-shaped 400s for what it does not."""

from __future__ import annotations

import json

import pytest

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.body import parse_request
from vgate_gateway.protocol import PROMPT_TEXT_CHARS, Kind, Request


def _parse(kind: Kind, payload: object) -> Request:
    return parse_request(kind, json.dumps(payload).encode())


def test_chat_request_fields() -> None:
    req = parse_request(
        Kind.CHAT,
        b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}, "user": "u1",'
        b' "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}',
    )
    assert (req.model, req.stream, req.include_usage, req.user) == ("m", True, True, "u1")
    assert req.prompt_text() == "<system>\nBe brief.\n<user>\nHi"


def test_body_bytes_are_kept_verbatim() -> None:
    body = b'{"model":"m",   "prompt":"x", "max_tokens": 3}'
    assert parse_request(Kind.COMPLETIONS, body).body == body


@pytest.mark.parametrize(
    ("kind", "body", "param", "fragment"),
    [
        (Kind.CHAT, b"", None, "empty"),
        (Kind.CHAT, b"{not json", None, "not valid JSON"),
        (Kind.CHAT, b"[1, 2]", None, "JSON object"),
        (Kind.CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', "model", "model"),
        (Kind.CHAT, b'{"model": "", "messages": []}', "model", "model"),
        (Kind.CHAT, b'{"model": "m"}', "messages", "messages"),
        (Kind.CHAT, b'{"model": "m", "messages": []}', "messages", "non-empty"),
        (Kind.CHAT, b'{"model": "m", "messages": "hi"}', "messages", "array"),
        (Kind.COMPLETIONS, b'{"model": "m"}', "prompt", "prompt"),
        (Kind.EMBEDDINGS, b'{"model": "m", "input": 3}', "input", "input"),
        (Kind.EMBEDDINGS, b'{"model": "m", "input": "x", "stream": true}', "stream", "streamed"),
        (Kind.CHAT, b'{"model": "m", "messages": [{}], "stream": "yes"}', "stream", "boolean"),
    ],
)
def test_bad_requests_are_400_invalid_request_error(
    kind: Kind, body: bytes, param: str | None, fragment: str
) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_request(kind, body)
    err = info.value
    assert err.status == 400
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.param == param
    assert fragment in err.message


def test_error_body_and_sse_event_shape() -> None:
    err = OpenAIError(503, "busy", code="no_healthy_upstream")
    assert err.body() == {
        "error": {"message": "busy", "type": "server_error", "param": None, "code": "no_healthy_upstream"}
    }
    event = err.sse_event()
    assert event.startswith(b"data: {")
    assert event.endswith(b"\n\n")
    assert json.loads(event[6:]) == err.body()


def test_prompt_text_is_the_start_of_a_long_prompt_only() -> None:
    limit = PROMPT_TEXT_CHARS
    long_text = _parse(Kind.COMPLETIONS, {"model": "m", "prompt": "ab" * limit})
    assert long_text.prompt_text() == ("ab" * limit)[:limit]
    ids = list(range(100_000))
    text = _parse(Kind.COMPLETIONS, {"model": "m", "prompt": ids}).prompt_text()
    assert text == json.dumps(ids, separators=(",", ":"))[:limit]
    batch = _parse(Kind.EMBEDDINGS, {"model": "m", "input": [ids[:5], ids[5:]]}).prompt_text()
    assert batch == "[0,1,2,3,4]"  # a list of prompts routes on its first


def test_prompt_text_of_a_long_chat_stops_at_the_limit_in_message_order() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": f"m{i} "}, {"type": "image"}]}
        for i in range(10_000)
    ]
    text = _parse(Kind.CHAT, {"model": "m", "messages": messages}).prompt_text()
    whole = "\n".join(f"<user>\nm{i} " for i in range(10_000))
    assert text == whole[:PROMPT_TEXT_CHARS]
