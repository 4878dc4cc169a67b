"""Per-key limits through the real HTTP interface: in-process, and shared by replicas through Redis.

Refill rates are one request (or a few tokens) a minute, so no test depends on how fast
the machine is: a bucket that is empty stays empty for the test's duration.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, WORKER_ARGS, Stack, start_stack
from tests.support.metrics import metric
from tests.support.procs import Proc, make_proc, running, vgate_process
from tests.support.redis import RedisServer, redis_server
from tests.support.waiting import wait_until

HELLO = [{"role": "user", "content": "Hello!"}]
KEYS = """\
sk-rpm-two id=rpm2 rpm=1 rpm_burst=2
sk-tpm-ten id=tpm10 tpm=1 tpm_burst=10
sk-tpm-stream id=tpmstream tpm=1 tpm_burst=10
sk-free id=free
"""


def _keys(tmp: Path, text: str = KEYS) -> dict[str, str]:
    path = tmp / "keys"
    path.write_text(text)
    return {"VGATE_API_KEYS_FILE": str(path)}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ratelimit")
    with ExitStack() as es:
        yield start_stack(es, tmp, workers=1, gateway_env=_keys(tmp))


def _raw_chat(url: str, key: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def test_requests_per_minute_with_a_burst_then_429_with_openai_headers(limited: Stack) -> None:
    client = limited.client(api_key="sk-rpm-two")
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    second = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    err = caught.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.response.headers["x-request-id"]
    # Another key is not affected.
    assert _raw_chat(limited.url, "sk-free").status_code == 200
    assert metric(limited.gateway.internal_url, "vgate_ratelimit_limited_total") >= 1


def test_tokens_are_charged_from_the_real_usage_when_the_answer_ends(limited: Stack) -> None:
    client = limited.client(api_key="sk-tpm-ten")
    answer = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=30)
    usage = answer.parse().usage
    assert usage is not None
    assert usage.total_tokens > 10
    assert answer.headers["x-ratelimit-limit-tokens"] == "1"
    assert answer.headers["x-ratelimit-remaining-tokens"] == "10"  # before this answer's usage
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens per minute" in caught.value.message


def test_a_stream_is_charged_though_the_client_did_not_ask_for_usage(limited: Stack) -> None:
    client = limited.client(api_key="sk-tpm-stream")
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30, stream=True))
    assert chunks
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for is not passed on
    assert all(c.usage is None for c in chunks)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)


# -- shared through Redis


def _replicas(es: ExitStack, tmp: Path, redis: RedisServer, keys: str, **env: str) -> tuple[Proc, Proc]:
    workers = es.enter_context(running([make_proc(WORKER_ARGS, tmp, name="worker")]))
    gateway_env = {
        "VGATE_ENDPOINTS": workers[0].url,
        "VGATE_HEALTH_INTERVAL_S": "0.2",
        "VGATE_REDIS_URL": redis.url,
        **_keys(tmp, keys),
        **env,
    }
    a = es.enter_context(vgate_process(["gateway"], tmp, env=gateway_env, ready_path="/ready", name="gw-a"))
    b = es.enter_context(vgate_process(["gateway"], tmp, env=gateway_env, ready_path="/ready", name="gw-b"))
    return a, b


def test_replicas_share_request_limits_through_redis_atomically(tmp_path: Path) -> None:
    with ExitStack() as es:
        redis = es.enter_context(redis_server(tmp_path))
        a, b = _replicas(es, tmp_path, redis, "sk-shared id=shared rpm=1 rpm_burst=10\n")
        urls = [a.url, b.url] * 15
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda u: _raw_chat(u, "sk-shared", max_tokens=1).status_code, urls))
        # Ten in the bucket for both replicas together (refill: one a minute).
        assert statuses.count(200) in (10, 11)
        assert statuses.count(429) == len(urls) - statuses.count(200)


def test_replicas_share_token_usage_through_redis(tmp_path: Path) -> None:
    with ExitStack() as es:
        redis = es.enter_context(redis_server(tmp_path))
        a, b = _replicas(es, tmp_path, redis, "sk-tok id=tok tpm=1 tpm_burst=10\n")
        assert _raw_chat(a.url, "sk-tok", max_tokens=30).status_code == 200
        # Replica A charges the usage in its next round trip for the key, or flushes it within a second.
        wait_until(
            lambda: _raw_chat(b.url, "sk-tok").status_code == 429, within=15, interval=0.3, what="B refuses"
        )
        assert _raw_chat(a.url, "sk-tok").status_code == 429


@pytest.mark.parametrize(
    ("mode", "status", "result"), [("open", 200, "failed_open"), ("closed", 503, "failed_closed")]
)
def test_when_redis_is_down_the_failure_mode_applies_and_a_metric_says_so(
    tmp_path: Path, mode: str, status: int, result: str
) -> None:
    with ExitStack() as es:
        redis = es.enter_context(redis_server(tmp_path))
        a, _ = _replicas(es, tmp_path, redis, "sk-k id=k rpm=100\n", VGATE_REDIS_FAILURE_MODE=mode)
        assert _raw_chat(a.url, "sk-k").status_code == 200
        assert metric(a.internal_url, "vgate_ratelimit_redis_up") == 1
        redis.stop()
        r = _raw_chat(a.url, "sk-k")
        assert r.status_code == status
        if status == 503:
            assert r.json()["error"]["code"] == "rate_limiter_unavailable"
            assert r.headers["retry-after"]
        assert metric(a.internal_url, "vgate_ratelimit_redis_up") == 0
        text = httpx.get(f"{a.internal_url}/metrics").text
        assert f'vgate_ratelimit_decisions_total{{result="{result}"}}' in text
        redis.start()

        def recovered() -> bool:
            ok = _raw_chat(a.url, "sk-k").status_code == 200
            return ok and metric(a.internal_url, "vgate_ratelimit_redis_up") == 1

        wait_until(recovered, within=15, interval=0.3, what="limits shared again")
        r = _raw_chat(a.url, "sk-k")
        assert r.headers["x-ratelimit-limit-requests"] == "100"
