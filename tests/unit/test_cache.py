"""The result cache: keys, policy, LRU bounds and TTL."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.cache import (
    CacheMetrics,
    CacheMode,
    ResponseCache,
    is_cacheable,
    parse_cache_mode,
    request_key,
    response_cacheable,
)
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


def test_key_ignores_transport_fields_and_key_order() -> None:
    base = request_key(Kind.CHAT, "m", BODY)
    streamed = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    reordered = dict(reversed(list(BODY.items())))
    assert request_key(Kind.CHAT, "m", streamed) == base
    assert request_key(Kind.CHAT, "m", reordered) == base
    assert len(base) == 64


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
    cache.put("a", b"A")
    cache.put("b", b"B")
    assert cache.get("a") == b"A"  # a is now the most recent
    cache.put("c", b"C")
    assert cache.get("b") is None
    assert cache.get("a") == b"A"
    assert cache.get("c") == b"C"
    assert cache.stats().evictions == 1


def test_lru_bounded_by_bytes() -> None:
    cache = ResponseCache(maxsize=100, max_bytes=3000, ttl_s=60)
    for i in range(10):
        assert cache.put(f"k{i}", b"x" * 500)
    stats = cache.stats()
    assert stats.bytes <= 3000
    assert 0 < stats.entries < 10
    assert cache.get("k9") is not None
    assert cache.get("k0") is None


def test_an_answer_bigger_than_the_cache_is_not_stored() -> None:
    cache = ResponseCache(maxsize=10, max_bytes=1000, ttl_s=60)
    cache.put("small", b"s")
    assert not cache.put("big", b"x" * 2000)
    assert cache.get("small") == b"s"
    assert len(cache) == 1


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30, clock=clock)
    cache.put("k", b"v")
    clock.now += 29.9
    assert cache.get("k") == b"v"
    clock.now += 0.2
    assert cache.get("k") is None
    assert cache.stats().entries == 0
    assert cache.stats().bytes == 0


def test_replacing_an_entry_keeps_the_byte_count_right() -> None:
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30)
    cache.put("k", b"x" * 100)
    before = cache.stats().bytes
    cache.put("k", b"x" * 10)
    assert cache.stats().bytes == before - 90
    assert len(cache) == 1


def test_zero_size_disables_the_cache() -> None:
    cache = ResponseCache(maxsize=0, max_bytes=10**6, ttl_s=30)
    assert not cache.enabled
    assert not cache.put("k", b"v")
    assert cache.get("k") is None


def test_stats_and_metrics_count_hits_and_misses() -> None:
    registry = CollectorRegistry()
    cache = ResponseCache(maxsize=10, max_bytes=10**6, ttl_s=30, metrics=CacheMetrics(registry))
    cache.put("k", b"value")
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
