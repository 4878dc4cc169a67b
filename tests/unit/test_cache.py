"""The result cache: keys, policy, LRU bounds and TTL."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.efficiency.cache.entry import Entry, Stamp
from vgate_gateway.efficiency.cache.policy import (
    CacheMode,
    is_cacheable,
    parse_cache_mode,
    request_key,
    response_cacheable,
)
from vgate_gateway.efficiency.cache.recorder import StreamRecorder
from vgate_gateway.efficiency.cache.store import CacheMetrics, ResponseCache
from vgate_gateway.protocol import Kind

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
    "max_tokens": 16,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _a(body: bytes) -> Entry:
    return Entry(body, Stamp())


def test_key_ignores_key_order_and_the_end_users_name() -> None:
    base = request_key(Kind.CHAT, "m", BODY)
    reordered = dict(reversed(list(BODY.items())))
    assert request_key(Kind.CHAT, "m", reordered) == base
    assert request_key(Kind.CHAT, "m", {**BODY, "user": "u1"}) == base
    assert len(base) == 64


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},  # a stream and a JSON answer are different bytes
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        {"stream_options": {"include_usage": True}},  # the worker rejects this one: never a hit
        {"user": 7},  # not a string: the worker validates it
    ],
)
def test_delivery_fields_and_invalid_values_change_the_key(extra: dict[str, object]) -> None:
    assert request_key(Kind.CHAT, "m", {**BODY, **extra}) != request_key(Kind.CHAT, "m", BODY)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("messages", [{"role": "user", "content": "hello"}]),
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("max_tokens", 17),
        ("n", 2),
        ("stop", ["\n"]),
        ("seed", 7),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
        ("presence_penalty", 0.1),
    ],
)
def test_every_generation_parameter_changes_the_key(name: str, value: object) -> None:
    assert request_key(Kind.CHAT, "m", {**BODY, name: value}) != request_key(Kind.CHAT, "m", BODY)


def test_kind_model_and_tenant_separate_keys() -> None:
    keys = {
        request_key(Kind.CHAT, "m", BODY),
        request_key(Kind.COMPLETIONS, "m", BODY),
        request_key(Kind.CHAT, "other", BODY),
        request_key(Kind.CHAT, "m", BODY, tenant="team-a"),
        request_key(Kind.CHAT, "m", BODY, tenant="team-b"),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    ("header", "mode"),
    [
        (None, CacheMode.DEFAULT),
        ("", CacheMode.DEFAULT),
        ("bypass", CacheMode.BYPASS),
        (" FORCE ", CacheMode.FORCE),
    ],
)
def test_cache_mode_header(header: str | None, mode: CacheMode) -> None:
    assert parse_cache_mode(header) is mode


def test_unknown_cache_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="x-vgate-cache"):
        parse_cache_mode("always")


@pytest.mark.parametrize(
    ("kind", "body", "mode", "expected"),
    [
        (Kind.CHAT, {"temperature": 0}, CacheMode.DEFAULT, True),
        (Kind.CHAT, {"temperature": 0.0}, CacheMode.DEFAULT, True),
        (Kind.CHAT, {"temperature": 0.7, "seed": 3}, CacheMode.DEFAULT, True),
        (Kind.CHAT, {"temperature": 0.7}, CacheMode.DEFAULT, False),
        (Kind.CHAT, {}, CacheMode.DEFAULT, False),
        (Kind.COMPLETIONS, {"temperature": False}, CacheMode.DEFAULT, False),
        (Kind.CHAT, {"temperature": 0.7}, CacheMode.FORCE, True),
        (Kind.CHAT, {"temperature": 0}, CacheMode.BYPASS, False),
        (Kind.EMBEDDINGS, {}, CacheMode.DEFAULT, True),
        (Kind.EMBEDDINGS, {}, CacheMode.BYPASS, False),
    ],
)
def test_only_deterministic_requests_are_cacheable_by_default(
    kind: Kind, body: dict[str, object], mode: CacheMode, expected: bool
) -> None:
    assert is_cacheable(kind, body, mode) is expected


@pytest.mark.parametrize(
    ("kind", "response", "expected"),
    [
        (Kind.CHAT, {"choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}, True),
        (Kind.CHAT, {"choices": [{"finish_reason": "stop"}, {"finish_reason": "tool_calls"}]}, False),
        (Kind.COMPLETIONS, {"choices": [{"finish_reason": "abort"}]}, False),
        (Kind.COMPLETIONS, {"choices": [{"finish_reason": None}]}, False),
        (Kind.CHAT, {"choices": []}, False),
        (Kind.CHAT, {"error": {"message": "boom"}}, False),
        (Kind.CHAT, {"object": "error", "message": "boom"}, False),
        (Kind.EMBEDDINGS, {"data": [{"embedding": [0.1]}]}, True),
        (Kind.EMBEDDINGS, {"data": []}, False),
    ],
)
def test_only_complete_successful_answers_are_stored(
    kind: Kind, response: dict[str, object], expected: bool
) -> None:
    assert response_cacheable(kind, response) is expected


def test_lru_bounded_by_entries_evicts_least_recently_used() -> None:
    cache = ResponseCache(maxsize=2, max_bytes=10**6, ttl_s=60)
    cache.put("a", _a(b"A"))
    cache.put("b", _a(b"B"))
    assert cache.get("a") == _a(b"A")  # a is now the most recent
    cache.put("c", _a(b"C"))
    assert cache.get("b") is None
    assert cache.get("a") == _a(b"A")
    assert cache.get("c") == _a(b"C")
    assert cache.stats().evictions == 1


def test_lru_bounded_by_bytes() -> None:
    cache = ResponseCache(maxsize=100, max_bytes=3000, ttl_s=60)
    for i in range(10):
        assert cache.put(f"k{i}", _a(b"x" * 500))
    stats = cache.stats()
    assert stats.bytes <= 3000
    assert 0 < stats.entries < 10
    assert cache.get("k9") is not None
    assert cache.get("k0") is None


def test_an_answer_bigger_than_the_cache_is_not_stored() -> None:
    cache = ResponseCache(maxsize=10, max_bytes=1000, ttl_s=60)
    cache.put("small", _a(b"s"))
    assert not cache.put("big", _a(b"x" * 2000))
    assert cache.get("small") == _a(b"s")
    assert len(cache) == 1


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30, clock=clock)
    cache.put("k", _a(b"v"))
    clock.now += 29.9
    assert cache.get("k") == _a(b"v")
    clock.now += 0.2
    assert cache.get("k") is None
    assert cache.stats().entries == 0
    assert cache.stats().bytes == 0


def test_replacing_an_entry_keeps_the_byte_count_right() -> None:
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30)
    cache.put("k", _a(b"x" * 100))
    before = cache.stats().bytes
    cache.put("k", _a(b"x" * 10))
    assert cache.stats().bytes == before - 90
    assert len(cache) == 1


def test_zero_size_disables_the_cache() -> None:
    cache = ResponseCache(maxsize=0, max_bytes=10**6, ttl_s=30)
    assert not cache.enabled
    assert not cache.put("k", _a(b"v"))
    assert cache.get("k") is None


def test_stats_and_metrics_count_hits_and_misses() -> None:
    registry = CollectorRegistry()
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30, metrics=CacheMetrics(registry))
    cache.put("k", _a(b"value"))
    cache.get("k", Kind.CHAT)
    cache.get("k", Kind.CHAT)
    cache.get("nope", Kind.CHAT)
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 1)
    assert stats.as_dict()["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert registry.get_sample_value("vgate_cache_hits_total", {"endpoint": Kind.CHAT}) == 2
    assert registry.get_sample_value("vgate_cache_misses_total", {"endpoint": Kind.CHAT}) == 1
    assert registry.get_sample_value("vgate_cache_entries") == 1
    cache.clear()
    assert registry.get_sample_value("vgate_cache_entries") == 0


def test_a_replay_is_restamped_with_the_requests_id_and_the_current_time() -> None:
    body = b'{"id":"chatcmpl-first","object":"chat.completion","created":1700000000,"choices":[{"x":"chatcmpl-first"}]}'
    out = Stamp.of(body).for_request("second", created=1800000000).apply(body)
    assert out == body.replace(b'"id":"chatcmpl-first"', b'"id":"chatcmpl-second"').replace(
        b"1700000000", b"1800000000"
    )
    assert b'{"x":"chatcmpl-first"}' in out  # text that merely looks like the id is left alone
    fresh = [Stamp.of(body).for_request("").apply(body) for _ in range(2)]
    assert fresh[0] != fresh[1]  # without a request id, a fresh id each time


def _recorded(*events: bytes, step: int = 7) -> Entry | None:
    recorder = StreamRecorder(max_bytes=10**6)
    raw = b"".join(events)
    for i in range(0, len(raw), step):
        recorder.feed(raw[i : i + step])
    return recorder.result()


_CHUNK = b'data: {"id":"cmpl-1","created":5,"choices":[{"index":0,"text":"a","finish_reason":%s}]}\n\n'
_DONE = b"data: [DONE]\n\n"


def test_a_complete_stream_is_kept_byte_for_byte() -> None:
    events = [
        _CHUNK % b"null",
        _CHUNK % b'"length"',
        b'data: {"id":"cmpl-1","choices":[],"usage":{}}\n\n',
        _DONE,
    ]
    answer = _recorded(*events)
    assert answer is not None
    assert answer.body == b"".join(events)
    assert answer.media_type == "text/event-stream"
    assert answer.stamp == Stamp(b'"id":"cmpl-1"', "cmpl", b'"created":5')


@pytest.mark.parametrize(
    "events",
    [
        [_CHUNK % b"null"],  # no [DONE]: cut short
        [_CHUNK % b"null", _DONE],  # never finished
        [_CHUNK % b'"abort"', _DONE],
        [_CHUNK % b"null", b'data: {"error":{"message":"boom"}}\n\n', _DONE],
    ],
)
def test_incomplete_or_failed_streams_are_not_kept(events: list[bytes]) -> None:
    assert _recorded(*events) is None


def test_a_stream_beyond_the_byte_bound_is_not_kept() -> None:
    recorder = StreamRecorder(max_bytes=50)
    recorder.feed(_CHUNK % b'"stop"')
    recorder.feed(_DONE)
    assert recorder.result() is None
