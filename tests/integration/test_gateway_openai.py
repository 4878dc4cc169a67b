"""The gateway as users meet it: the official ``openai`` client against a real stack
(``vgate gateway`` in front of two ``vgate worker --dry-run`` processes on loopback)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack
from tests.support.metrics import metric

MESSAGES = [{"role": "user", "content": "Tell me about load balancing."}]


def test_chat_completion(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert r.usage is not None
    assert 0 < r.usage.completion_tokens <= 12
    assert r.model == MODEL


def test_chat_is_deterministic_for_a_prompt(stack: Stack) -> None:
    client = stack.client()
    a = (
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        .choices[0]
        .message.content
    )
    b = (
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        .choices[0]
        .message.content
    )
    assert a == b


def test_streaming_chunks_arrive_incrementally_with_usage(stack: Stack) -> None:
    text, usage = [], None
    running_at_first_chunk: float | None = None
    long_question = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))}]
    stream = stack.client().chat.completions.create(
        model=MODEL,
        messages=long_question,
        max_tokens=256,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if running_at_first_chunk is None:
            running_at_first_chunk = sum(metric(w.url, "vllm:num_requests_running") for w in stack.workers)
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == []
    assert len([t for t in text if t]) >= 5
    assert usage is not None
    assert usage.completion_tokens == 256
    # Relayed as generated, not buffered: the first chunk arrived while the worker was
    # still generating the rest.
    assert running_at_first_chunk == 1


def test_stream_ends_with_done(stack: Stack) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-1])


def test_completions_single_and_list_prompts(stack: Stack) -> None:
    client = stack.client()
    one = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert len(one.choices) == 1
    assert one.choices[0].text
    many = client.completions.create(model=MODEL, prompt=["first prompt", "second prompt"], max_tokens=5)
    assert sorted(c.index for c in many.choices) == [0, 1]


def test_embeddings(stack: Stack) -> None:
    client = stack.client()
    r = client.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == len(r.data[1].embedding) > 0
    again = client.embeddings.create(model=MODEL, input="alpha")
    assert again.data[0].embedding == pytest.approx(r.data[0].embedding)


def test_models_lists_the_served_model(stack: Stack) -> None:
    assert [m.id for m in stack.client().models.list().data] == [MODEL]


def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        stack.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{this is not json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "%s"}' % MODEL.encode(), "messages"),
    ],
)
def test_malformed_requests_are_400(stack: Stack, body: bytes, param: str | None) -> None:
    r = httpx.post(
        f"{stack.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_worker_errors_are_relayed(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError):
        stack.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)


def test_requests_spread_over_both_workers(stack: Stack) -> None:
    client = stack.client()
    before = {
        u["url"]: u["requests"] for u in httpx.get(f"{stack.gateway.internal_url}/stats").json()["upstreams"]
    }
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    after = {
        u["url"]: u["requests"] for u in httpx.get(f"{stack.gateway.internal_url}/stats").json()["upstreams"]
    }
    assert sorted(after[url] - before[url] for url in after) == [3, 3]


def test_health_ready_metrics(stack: Stack) -> None:
    health = httpx.get(f"{stack.url}/health").json()
    assert health["status"] == "ok"
    assert health["version"]
    assert httpx.get(f"{stack.url}/ready").status_code == 200
    metrics = httpx.get(f"{stack.gateway.internal_url}/metrics").text
    for name in (
        "vgate_requests_total",
        "vgate_request_latency_seconds",
        "vgate_upstream_healthy",
        "vgate_info",
    ):
        assert name in metrics
