"""Stream <-> stored form: a stored answer replays as a valid stream, a stream assembles back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from vgate_gateway.cache import StreamAssembler, synthesize_stream
from vgate_gateway.protocol import Kind

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, friend."},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hi."},
            "logprobs": None,
            "finish_reason": "length",
        },
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "text": " world",
            "logprobs": {
                "tokens": [" world"],
                "token_logprobs": [-0.1],
                "top_logprobs": None,
                "text_offset": [0],
            },
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def _payloads(events: list[bytes]) -> list[Any]:
    out = []
    for event in events:
        assert event.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        data = event[6:].strip()
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def _assemble(kind: Kind, events: list[bytes], step: int | None = None) -> dict[str, Any] | None:
    assembler = StreamAssembler(kind, max_bytes=10**6)
    raw = b"".join(events)
    step = step or len(raw)
    for i in range(0, len(raw), step):
        assembler.feed(raw[i : i + step])
    return assembler.result()


def test_chat_replay_is_a_valid_openai_stream_with_usage_last() -> None:
    payloads = _payloads(synthesize_stream(Kind.CHAT, CHAT, include_usage=True))
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(p) for p in payloads[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.total_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    text = {0: "", 1: ""}
    finish = {}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert text == {0: "Hello there, friend.", 1: "Hi."}
    assert finish == {0: "stop", 1: "length"}


def test_replay_without_include_usage_has_no_usage_chunk() -> None:
    payloads = _payloads(synthesize_stream(Kind.CHAT, CHAT, include_usage=False))
    assert all("usage" not in p for p in payloads[:-1])
    assert all(p["choices"] for p in payloads[:-1])


@pytest.mark.parametrize("step", [None, 1, 7])
def test_chat_stream_assembles_back_to_the_stored_answer(step: int | None) -> None:
    result = _assemble(Kind.CHAT, synthesize_stream(Kind.CHAT, CHAT, include_usage=True), step)
    assert result == CHAT
    ChatCompletion.model_validate(result)


def test_completion_round_trip_keeps_text_and_logprobs() -> None:
    events = synthesize_stream(Kind.COMPLETIONS, COMPLETION, include_usage=True)
    for payload in _payloads(events)[:-1]:
        Completion.model_validate(payload)
    result = _assemble(Kind.COMPLETIONS, events)
    assert result == COMPLETION


def test_assembler_concatenates_token_deltas_and_tool_calls() -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\r\n\r\n"

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}, logprobs={"content": [{"token": "Hel", "logprob": -1.0}]}),
        chunk({"content": "lo"}, logprobs={"content": [{"token": "lo", "logprob": -2.0}]}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, finish="stop"),
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
    ]
    result = _assemble(Kind.CHAT, events)
    assert result is not None
    choice = result["choices"][0]
    assert choice["message"]["content"] == "Hello"
    assert [t["token"] for t in choice["logprobs"]["content"]] == ["Hel", "lo"]
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert choice["message"]["tool_calls"][0]["id"] == "call_1"


def test_incomplete_or_failed_streams_are_not_assembled() -> None:
    events = synthesize_stream(Kind.CHAT, CHAT, include_usage=True)
    assert _assemble(Kind.CHAT, events[:-1]) is None  # no [DONE]
    no_usage = synthesize_stream(Kind.CHAT, CHAT, include_usage=False)
    assert _assemble(Kind.CHAT, no_usage) is None  # a non-stream answer needs usage
    error = b'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}\n\n'
    assert _assemble(Kind.CHAT, [*events[:2], error, *events[2:]]) is None
    assert _assemble(Kind.CHAT, [b"data: {not json\n\n", *events]) is None


def test_assembler_gives_up_beyond_its_byte_bound() -> None:
    assembler = StreamAssembler(Kind.CHAT, max_bytes=100)
    for event in synthesize_stream(Kind.CHAT, CHAT, include_usage=True):
        assembler.feed(event)
    assert assembler.result() is None
