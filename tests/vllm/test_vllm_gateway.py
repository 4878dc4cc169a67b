"""The OpenAI API through the gateway, answered by two real vLLM workers (AWQ where vLLM can run it)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.metrics import metric
from tests.vllm.conftest import MAX_MODEL_LEN, VllmStack

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def test_models_lists_the_served_name(vllm_stack: VllmStack) -> None:
    ids = [m.id for m in vllm_stack.client().models.list().data]
    assert vllm_stack.model in ids


def test_chat_completion(vllm_stack: VllmStack) -> None:
    reply = vllm_stack.client().chat.completions.create(
        model=vllm_stack.model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
        # Without EOS the length is exact, whatever the tiny model happens to generate.
        extra_body={"ignore_eos": True},
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    # ChatML wraps the 3-token message in role markers: the prompt is longer than the message.
    assert reply.usage.prompt_tokens > 5
    assert reply.model == vllm_stack.model


def test_greedy_answers_agree_across_workers(vllm_stack: VllmStack) -> None:
    """Both workers load the same checkpoint: greedy output is the same wherever a request lands."""

    def greedy(client: openai.OpenAI, **extra: Any) -> str:
        reply = client.completions.create(
            model=vllm_stack.model, prompt="The gateway routes", max_tokens=8, temperature=0, **extra
        )
        return reply.choices[0].text

    # Each worker directly, then the gateway with its result cache bypassed so repeats reach a worker.
    texts = [greedy(vllm_stack.client(w)) for w in vllm_stack.workers]
    bypass = {"x-vgate-cache": "bypass"}
    texts += [greedy(vllm_stack.client(), extra_headers=bypass) for _ in range(4)]
    assert len(set(texts)) == 1, texts


def test_streaming_chat_reports_usage_last(vllm_stack: VllmStack) -> None:
    stream = vllm_stack.client().chat.completions.create(
        model=vllm_stack.model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert len(content_chunks) >= 2  # streamed, not one buffered answer
    assert content_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


def test_completion(vllm_stack: VllmStack) -> None:
    reply = vllm_stack.client().completions.create(
        model=vllm_stack.model, prompt="Kubernetes restarts a pod", max_tokens=6, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6


def test_prompt_longer_than_max_model_len_is_a_relayed_400(vllm_stack: VllmStack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        vllm_stack.client().completions.create(
            model=vllm_stack.model, prompt="word " * (MAX_MODEL_LEN + 50), max_tokens=4
        )
    assert info.value.status_code == 400
    assert f"maximum context length is {MAX_MODEL_LEN}" in str(info.value.message)


def test_unknown_model_is_an_openai_error(vllm_stack: VllmStack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        vllm_stack.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert info.value.status_code == 404


def test_gateway_spreads_requests_over_both_workers(vllm_stack: VllmStack) -> None:
    """Round-robin through the gateway: each real vLLM worker finishes its share, counted by vLLM itself."""
    name = "vllm:request_success_total"
    before = [metric(w.url, name, missing=0) for w in vllm_stack.workers]
    client = vllm_stack.client()
    for i in range(6):
        client.completions.create(
            model=vllm_stack.model,
            prompt=f"Request number {i} goes to",
            max_tokens=2,
            extra_headers={"x-vgate-cache": "bypass"},
        )
    served = [metric(w.url, name) - b for w, b in zip(vllm_stack.workers, before, strict=True)]
    assert sum(served) == 6
    assert min(served) >= 2, served
