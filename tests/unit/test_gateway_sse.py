"""Finding SSE event boundaries and reading what an event says."""

from __future__ import annotations

from vgate_gateway.sse import EventSplitter, inspect_event


def test_splitter_joins_torn_events_and_splits_merged_ones() -> None:
    s = EventSplitter()
    assert s.feed(b'data: {"a"') == []
    assert s.feed(b": 1}\n\ndata: [DO") == [b'data: {"a": 1}\n\n']
    assert s.feed(b"NE]\n\n") == [b"data: [DONE]\n\n"]
    assert s.pending == b""


def test_splitter_accepts_crlf() -> None:
    assert EventSplitter().feed(b"data: x\r\n\r\ndata: y\r\n\r\n") == [b"data: x\n\n", b"data: y\n\n"]


def test_inspect_counts_tokens_usage_done_and_errors() -> None:
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
    role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}\n\n'
    completion = b'data: {"choices": [{"index": 0, "text": " there"}]}\n\n'
    assert inspect_event(chunk).tokens == 1
    assert inspect_event(role).tokens == 0
    assert inspect_event(usage).usage_completion_tokens == 7
    assert inspect_event(completion).tokens == 1
    assert inspect_event(b"data: [DONE]\n\n").done
    assert inspect_event(b'data: {"error": {"message": "x"}}\n\n').error
    assert inspect_event(b": keep-alive comment\n\n").tokens == 0
    assert inspect_event(b"data: not json\n\n").tokens == 0


def test_framer_passes_whole_events_on_and_holds_back_a_torn_one() -> None:
    from vgate_gateway.sse import EventFramer

    framer = EventFramer()
    assert framer.feed(b"data: 1\n\ndata: 2\n\nda") == b"data: 1\n\ndata: 2\n\n"
    assert framer.pending == b"da"
    assert framer.feed(b"ta: 3") == b""
    assert framer.feed(b"\r\n\r\n") == b"data: 3\n\n"
    assert framer.pending == b""


def test_usage_is_read_from_the_usage_chunk_only() -> None:
    from vgate_gateway.sse import error_event, usage_in

    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens": 42,"total_tokens":45}}\n\n'
    assert usage_in(b"data: {}\n\n" + usage + b"data: [DONE]\n\n") == {
        "prompt_tokens": 3,
        "completion_tokens": 42,
        "total_tokens": 45,
    }
    assert usage_in(b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n') is None
    assert error_event(b'data: {"error": {"message": "boom"}}\n\n')
    assert not error_event(b'data: {"choices":[{"delta":{"content":"\\"error\\": no"}}]}\n\n')
