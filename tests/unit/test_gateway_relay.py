"""The gateway's request path against in-memory workers (a fake upstream client).

These pin down relaying: bytes pass through, streams stay streams, upstream errors
keep their status, a broken stream ends in one OpenAI error event, and a worker
that can't be reached is skipped for another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from tests.support.fake_upstreams import Answer, Call, FakeUpstreams
from vgate_gateway.app import build_app
from vgate_gateway.discovery.static import StaticDiscovery
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.client import StaleConnection

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chunk(text: str) -> bytes:
    return (
        b"data: "
        + json.dumps(
            {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
        ).encode()
        + b"\n\n"
    )


class Workers(FakeUpstreams):
    """Two fake workers; ``chat`` decides how the chat endpoint answers."""

    def __init__(self) -> None:
        super().__init__(self._route)
        self.chat: Callable[[Call], Answer] = self.ok

    @property
    def chat_calls(self) -> list[str]:
        return [c.host for c in self.calls if c.path == "/v1/chat/completions"]

    @staticmethod
    def ok(call: Call) -> Answer:
        body = json.loads(call.body)
        if body.get("stream"):
            return Answer(
                content_type="text/event-stream", stream=[_chunk("Hel"), _chunk("lo"), b"data: [DONE]\n\n"]
            )
        answer = {
            "id": "x",
            "choices": [{"message": {"content": "Hello"}}],
            "usage": {"completion_tokens": 2},
        }
        return Answer.json(answer)

    def _route(self, call: Call) -> Answer:
        if call.path in ("/health", "/metrics"):
            return Answer()
        if call.path == "/v1/models":
            return Answer.json({"object": "list", "data": [{"id": "m", "max_model_len": 4096}]})
        return self.chat(call)


@pytest.fixture
def workers() -> Workers:
    return Workers()


@pytest.fixture
def client(workers: Workers) -> Iterator[TestClient]:
    settings = GatewaySettings(routing="round-robin", health_interval_s=60)
    app = build_app(
        settings,
        discovery=StaticDiscovery(["http://w1:8000", "http://w2:8000"]),
        clients=lambda: (workers, workers),
    )
    with TestClient(app) as c:
        deadline = time.monotonic() + 5
        while not c.get("/v1/models").json()["data"]:
            assert time.monotonic() < deadline, "gateway never saw its workers"
            time.sleep(0.01)
        yield c


def _internal(client: TestClient) -> TestClient:
    """The same gateway's internal port (metrics, stats), sharing the running app's state."""
    return TestClient(client.app.internal)  # type: ignore[attr-defined]


def test_non_stream_body_is_relayed_and_request_id_forwarded(client: TestClient, workers: Workers) -> None:
    r = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-123"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello"
    assert r.headers["x-request-id"] == "abc-123"
    sent = next(c for c in workers.calls if c.path == "/v1/chat/completions")
    assert sent.headers["x-request-id"] == "abc-123"
    assert json.loads(sent.body) == CHAT


def test_generated_request_id(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert len(r.headers["x-request-id"]) == 32


def test_stream_events_pass_through_in_order(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read()
    assert body == _chunk("Hel") + _chunk("lo") + b"data: [DONE]\n\n"


def test_truncated_stream_ends_with_one_error_event(client: TestClient, workers: Workers) -> None:
    workers.chat = lambda _: Answer(content_type="text/event-stream", stream=[_chunk("Hel")])
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[0] + b"\n\n" == _chunk("Hel")
    assert len(events) == 2
    error = json.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_eof"
    assert error["type"] == "server_error"


def test_upstream_4xx_relayed_with_status_and_message_in_the_gateways_dialect_not_retried(
    client: TestClient, workers: Workers
) -> None:
    body = {"error": {"message": "too long", "type": "BadRequestError", "param": None, "code": 400}}
    workers.chat = lambda _: Answer.json(body, status=400)
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400
    # vLLM's numeric code becomes a string, as OpenAI's schema and the gateway's own errors have it.
    assert r.json() == {"error": {**body["error"], "code": "upstream_400"}}
    assert len(workers.chat_calls) == 1


def test_non_openai_upstream_error_is_reshaped(client: TestClient, workers: Workers) -> None:
    workers.chat = lambda _: Answer(500, b"engine died", "text/plain")
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "engine died"


def test_unreachable_worker_is_retried_once_elsewhere_and_ejected_after_failures_in_a_row(
    client: TestClient, workers: Workers
) -> None:
    workers.down.add("w1")
    statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(8)]
    assert statuses == [200] * 8
    assert set(workers.chat_calls) == {"w2"}
    stats = _internal(client).get("/stats").json()
    w1 = next(u for u in stats["upstreams"] if u["url"] == "http://w1:8000")
    assert w1["healthy"] is False
    assert w1["ejections"] == 1


def test_one_failed_request_does_not_eject_a_worker(client: TestClient, workers: Workers) -> None:
    workers.down.add("w1")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    workers.down.clear()
    w1 = next(u for u in _internal(client).get("/stats").json()["upstreams"] if u["url"] == "http://w1:8000")
    assert (w1["healthy"], w1["consecutive_failures"]) == (True, 1)


def test_no_reachable_worker_is_503_with_retry_after_and_panic_keeps_trying_all(
    client: TestClient, workers: Workers
) -> None:
    workers.down.update({"w1", "w2"})
    for _ in range(4):
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] in ("upstream_unreachable", "no_healthy_upstream")
    stats = _internal(client).get("/stats").json()
    assert stats["panic"] == ["m"]  # every worker out: the health view is suspect, all are tried
    workers.down.clear()
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert client.get("/ready").status_code == 200


def test_worker_5xx_answers_count_towards_ejection_4xx_do_not(client: TestClient, workers: Workers) -> None:
    workers.chat = lambda _: Answer.json(
        {"error": {"message": "bad", "type": "x", "param": None, "code": 400}}, 400
    )
    for _ in range(6):
        client.post("/v1/chat/completions", json=CHAT)
    assert all(u["healthy"] for u in _internal(client).get("/stats").json()["upstreams"])
    workers.chat = lambda _: Answer(500, b"engine died", "text/plain")
    for _ in range(6):
        client.post("/v1/chat/completions", json=CHAT)
    upstreams = _internal(client).get("/stats").json()["upstreams"]
    assert [u["ejections"] for u in upstreams] == [1, 1]


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


def test_a_stale_pooled_connection_is_sent_again_once_and_not_held_against_the_worker(
    client: TestClient, workers: Workers
) -> None:
    stale = {"left": 1}

    def closed_once(call: Call) -> Answer:
        if stale["left"]:
            stale["left"] -= 1
            raise StaleConnection("server disconnected")
        return Workers.ok(call)

    workers.chat = closed_once
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert len(workers.chat_calls) == 2
    upstreams = _internal(client).get("/stats").json()["upstreams"]
    assert all(u["consecutive_failures"] == 0 and u["failures"] == 0 for u in upstreams)


def test_a_connection_closed_twice_is_a_502_in_openai_shape(client: TestClient, workers: Workers) -> None:
    def always_closed(call: Call) -> Answer:
        raise StaleConnection("server disconnected")

    workers.chat = always_closed
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
