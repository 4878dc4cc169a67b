"""The pure parts of the gateway's front door: keys files, buckets, header hygiene, strict JSON."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.admission import Admission
from vgate_gateway.front.auth import KeyFileError, KeyStore, bearer_token, parse_keys
from vgate_gateway.front.body import DEFAULT_LIMITS, loads
from vgate_gateway.front.door import Door, DoorConfig, Services
from vgate_gateway.front.edge import without_usage_chunk
from vgate_gateway.front.hygiene import TrustedProxies, clean_headers
from vgate_gateway.front.ratelimit import Limits, LocalLimiter, RateLimitMetrics, duration
from vgate_gateway.logs import escape
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import Answer, Request


def test_keys_file_lines_plain_hashed_and_options() -> None:
    digest = hashlib.sha256(b"sk-b").hexdigest()
    keys = parse_keys(f"# comment\n\nsk-a id=alice models=m1,m2 rpm=5 tpm=100\nsha256:{digest} rpm_burst=3\n")
    assert [k.key_id for k in keys] == ["alice", f"key-{digest[:8]}"]
    assert keys[0].models == frozenset({"m1", "m2"})
    assert (keys[0].rpm, keys[0].tpm, keys[1].rpm_burst) == (5, 100, 3)
    assert keys[1].models is None
    assert keys[0].allows("m1")
    assert not keys[0].allows("m3")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sha256:abc\n", "64 hex digits"),
        ("sk-a rpm=0\n", "positive integer"),
        ("sk-a colour=blue\n", "unknown option"),
        ("sk-a rpm\n", "name=value"),
        ("sk-a\nsk-a\n", "twice"),
        ("sk-\u00e9\n", "printable ASCII"),
    ],
)
def test_a_bad_keys_file_names_the_line(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem):
        parse_keys(text)


@pytest.mark.parametrize(
    "header",
    [None, b"", b"Bearer", b"Basic abc", b"Bearer " + b"x" * 300, b"Bearer sk-\xe9", b"Bearer a b"],
)
def test_unusable_authorization_headers_are_401(header: bytes | None) -> None:
    with pytest.raises(OpenAIError) as caught:
        bearer_token(header)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


def test_bearer_is_case_insensitive() -> None:
    assert bearer_token(b"bearer sk-1") == "sk-1"


def test_key_store_keeps_its_keys_when_the_file_turns_bad(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-one id=one\n")
    store = KeyStore(path, reload_interval_s=60)  # reloaded by hand below
    assert store.authenticate(b"Bearer sk-one").key_id == "one"
    path.write_text("sk-one id=one\nnot-hex-sha256:zz rpm=x\n")
    assert store.reload_if_changed() is False
    assert store.authenticate(b"Bearer sk-one").key_id == "one"
    path.write_text("sk-two id=two\n")
    assert store.reload_if_changed() is True
    with pytest.raises(OpenAIError):
        store.authenticate(b"Bearer sk-one")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_request_bucket_bursts_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalLimiter(RateLimitMetrics(CollectorRegistry()), clock=clock)
    limits = Limits(rpm=60, rpm_burst=2)
    assert [(await limiter.admit("k", limits)).allowed for _ in range(3)] == [True, True, False]
    refused = await limiter.admit("k", limits)
    assert refused.retry_after_s() == pytest.approx(1.0)
    assert refused.error().headers["retry-after"] == "1"
    clock.now += 1.0
    assert (await limiter.admit("k", limits)).allowed


async def test_token_usage_puts_the_bucket_in_debt_until_it_refills() -> None:
    clock = Clock()
    limiter = LocalLimiter(RateLimitMetrics(CollectorRegistry()), clock=clock)
    limits = Limits(tpm=600)  # 10 tokens a second, 600 at once
    assert (await limiter.admit("k", limits)).allowed
    limiter.charge("k", limits, 5000)  # more than the burst: debt is capped at one burst
    refused = await limiter.admit("k", limits)
    assert not refused.allowed
    assert refused.retry_after_s() == pytest.approx(60.1)
    headers = dict(refused.headers())
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert headers[b"x-ratelimit-limit-tokens"] == b"600"
    clock.now += 61
    assert (await limiter.admit("k", limits)).allowed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (60, "1m0s"), (360, "6m0s"), (3725, "1h2m5s")],
)
def test_reset_durations_read_like_openai(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_connection_named_headers_are_dropped() -> None:
    headers = [
        (b"connection", b"close, X-Secret"),
        (b"x-secret", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"2"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"accept", b"*/*"),
    ]
    out = dict(clean_headers(headers, "192.0.2.9", TrustedProxies()))
    # Standard hop-by-hop headers stay for the server; the proxy drops them when forwarding.
    assert out == {
        b"connection": b"close, X-Secret",
        b"transfer-encoding": b"chunked",
        b"content-length": b"2",
        b"accept": b"*/*",
        b"x-forwarded-for": b"10.0.0.1, 192.0.2.9",
    }
    trusted = dict(clean_headers(headers, "192.0.2.9", TrustedProxies(["192.0.2.0/24"])))
    assert trusted[b"forwarded"] == b"for=1.2.3.4"


def test_escape_keeps_log_lines_single() -> None:
    assert escape("GET /a\nINFO forged\r\x1b[31m") == "GET /a\\nINFO forged\\r\\x1b[31m"
    assert escape("plain /v1/models é") == "plain /v1/models é"


@pytest.mark.parametrize(
    "body",
    [b'"\\udc00"', b"1e400", b"9" * 5000, b"[" * 2000 + b"]" * 2000, b"\xc3\x28", b"{} x", b"  "],
)
def test_strict_parse_turns_every_problem_into_a_400(body: bytes) -> None:
    with pytest.raises(OpenAIError) as caught:
        loads(body, 64, 100_000)
    assert caught.value.status == 400


def test_usage_is_read_from_a_json_answer_and_the_unrequested_usage_chunk_is_stripped() -> None:
    body = b'{"choices": [{"text": "\\"usage\\""}], "usage": {"prompt_tokens": 3, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 2}}}'
    assert Answer(200, body).usage.total() == 12
    assert Answer(400, body).usage.total() == 0
    events = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: {"choices": [], "usage": {"total_tokens": 7}}\n\ndata: [DONE]\n\n'
    assert (
        without_usage_chunk(events)
        == b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
    )


def test_an_unhandled_error_is_a_500_in_openai_shape_with_a_request_id() -> None:
    async def broken(_req: Request) -> Answer:
        raise RuntimeError("kaboom")

    services = Services(broken, Admission(4, 4, 0.05, 1), list, lambda: (True, []), 1)
    config = DoorConfig(DEFAULT_LIMITS, Limits(), TrustedProxies())
    door = Door(services, keys=KeyStore(None, 2), limiter=None, config=config, metrics=Metrics("test"))
    client = TestClient(door, raise_server_exceptions=False)
    r = client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 500
    assert r.headers["x-request-id"]
    assert r.json()["error"]["code"] == "internal_error"
    assert "kaboom" not in r.text
