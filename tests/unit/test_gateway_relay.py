"""The gateway's request path against in-memory workers (httpx MockTransport).

These pin down relaying: bytes pass through, streams stay streams, upstream errors
keep their status, a broken stream ends in one OpenAI error event, and a worker
that can't be reached is skipped for another.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from vgate_gateway.app import build_app
from vgate_gateway.discovery.static import StaticDiscovery
from vgate_gateway.settings import GatewaySettings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chunk(text: str) -> bytes:
    return (
        b"data: "
        + json.dumps(
            {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
        ).encode()
        + b"\n\n"
    )


class Workers:
    """Two fake workers; ``behaviour`` decides how the chat endpoint answers per worker host."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[str] = []
        self.chat: Callable[[httpx.Request], httpx.Response] = self.ok

    @staticmethod
    def ok(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for word in ("Hel", "lo"):
                    yield _chunk(word)
                yield b"data: [DONE]\n\n"

            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())
        answer = {
            "id": "x",
            "choices": [{"message": {"content": "Hello"}}],
            "usage": {"completion_tokens": 2},
        }
        return httpx.Response(200, json=answer, headers={"x-worker": request.url.host})

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path in ("/health", "/metrics"):
            return httpx.Response(200)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "max_model_len": 4096}]})
        self.calls.append(host)
        return self.chat(request)


@pytest.fixture
def workers() -> Workers:
    return Workers()


@pytest.fixture
def client(workers: Workers) -> Iterator[TestClient]:
    settings = GatewaySettings(routing="round-robin", health_interval_s=60)
    app = build_app(
        settings,
        discovery=StaticDiscovery(["http://w1:8000", "http://w2:8000"]),
        transport=httpx.MockTransport(workers),
    )
    with TestClient(app) as c:
        deadline = time.monotonic() + 5
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.01)
        yield c


def _internal(client: TestClient) -> TestClient:
    """The same gateway's internal port (metrics, stats), sharing the running app's state."""
    return TestClient(client.app.state.internal_app)  # type: ignore[attr-defined]


def test_non_stream_body_is_relayed_and_request_id_forwarded(client: TestClient, workers: Workers) -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return Workers.ok(request)

    workers.chat = record
    r = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-123"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello"
    assert r.headers["x-request-id"] == "abc-123"
    assert seen[0].headers["x-request-id"] == "abc-123"
    assert json.loads(seen[0].content) == CHAT


def test_generated_request_id(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert len(r.headers["x-request-id"]) == 32


def test_stream_events_pass_through_in_order(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read()
    assert body == _chunk("Hel") + _chunk("lo") + b"data: [DONE]\n\n"


def test_truncated_stream_ends_with_one_error_event(client: TestClient, workers: Workers) -> None:
    async def cut_short() -> AsyncIterator[bytes]:
        yield _chunk("Hel")

    workers.chat = lambda _: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=cut_short()
    )
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[0] + b"\n\n" == _chunk("Hel")
    assert len(events) == 2
    error = json.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_eof"
    assert error["type"] == "server_error"


def test_upstream_4xx_relayed_with_status_and_body_not_retried(client: TestClient, workers: Workers) -> None:
    body = {"error": {"message": "too long", "type": "BadRequestError", "param": None, "code": 400}}
    workers.chat = lambda _: httpx.Response(400, json=body)
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400
    assert r.json() == body
    assert len(workers.calls) == 1


def test_non_openai_upstream_error_is_reshaped(client: TestClient, workers: Workers) -> None:
    workers.chat = lambda _: httpx.Response(500, text="engine died")
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "engine died"


def test_unreachable_worker_is_retried_once_elsewhere(client: TestClient, workers: Workers) -> None:
    workers.down.add("w1")
    statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4)]
    assert statuses == [200] * 4
    assert set(workers.calls) == {"w2"}
    stats = _internal(client).get("/stats").json()
    w1 = next(u for u in stats["upstreams"] if u["url"] == "http://w1:8000")
    assert w1["healthy"] is False


def test_no_reachable_worker_is_503_with_retry_after(client: TestClient, workers: Workers) -> None:
    workers.down.update({"w1", "w2"})
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "upstream_unreachable"
    # Both are now known down: the next request is refused without trying.
    r = client.post("/v1/chat/completions", json=CHAT)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "no_healthy_upstream")
    assert workers.calls == []


def test_framework_errors_speak_openai(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_metrics_count_requests_tokens_and_upstreams(client: TestClient) -> None:
    client.post("/v1/chat/completions", json=CHAT)
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        r.read()
    text = _internal(client).get("/metrics").text
    assert 'vgate_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 2.0' in text
    assert 'vgate_tokens_generated_total{model="m"} 4.0' in text
    assert 'vgate_upstream_healthy{upstream="http://w1:8000"} 1.0' in text
    assert "vgate_ttft_seconds_count" in text
    assert 'vgate_info{version="' in text
