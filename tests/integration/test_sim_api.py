"""The dry-run worker through the official OpenAI client: vLLM's API shapes, streaming, errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import Proc, vgate_process
from vgate_worker.settings import DEFAULT_MODEL
from vgate_worker.sim import tokenizer

pytestmark = pytest.mark.timeout(60)

NAMES = [DEFAULT_MODEL, "qwen-small"]
MAX_LEN = 4096


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["worker", "--dry-run", "--served-model-name", *NAMES, "--max-model-len", str(MAX_LEN)]
    with vgate_process(args, Path(tmp_path_factory.mktemp("sim")), env={"VGATE_SIM_SPEED": "4"}) as proc:
        yield proc


@pytest.fixture
def client(sim: Proc) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def scrape(sim: Proc) -> dict[str, float]:
    """Unlabelled view of the worker's metrics (all carry the primary model name)."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(sim.url + "/metrics").text):
        for sample in family.samples:
            assert sample.labels["model_name"] == NAMES[0]
            values.setdefault(sample.name, float(sample.value))
    return values


def test_chat_non_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=NAMES[0], messages=messages)  # type: ignore[arg-type]
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "[dry-run] echo: What is the capital of France?"
    assert choice.finish_reason == "stop"
    assert r.usage is not None
    # "[dry-run] echo:" is 7 tokens, the question 7 more (docs/simulator.md, tokenizer).
    assert r.usage.completion_tokens == 14 == tokenizer.count(choice.message.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 14
    again = client.chat.completions.create(model=NAMES[1], messages=messages)  # type: ignore[arg-type]
    assert again.choices[0].message.content == choice.message.content
    assert again.model == NAMES[1]


def test_chat_max_tokens_and_n(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=NAMES[0],
        messages=[{"role": "user", "content": "a fairly long question about many things"}],
        max_completion_tokens=4,
        n=3,
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert {c.finish_reason for c in r.choices} == {"length"}
    assert r.choices[0].message.content == "[dry-run"
    assert r.usage is not None
    assert r.usage.completion_tokens == 12


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream this back to me please"}]
    chunks = list(
        client.chat.completions.create(
            model=NAMES[0], messages=messages, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 13  # one chunk per generated token
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[dry-run] echo: stream this back to me please"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 13


def test_stream_ends_with_done_and_flushes_incrementally(sim: Proc) -> None:
    body = {
        "model": NAMES[0],
        "messages": [{"role": "user", "content": "go on"}],
        "stream": True,
        "max_tokens": 3000,
        "ignore_eos": True,
    }
    before = scrape(sim)["vllm:generation_tokens_total"]
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = r.iter_lines()
        first = [next(line for line in events if line) for _ in range(3)]
        during = scrape(sim)
        rest = [line for line in events if line]
    # Chunks reached the client while the request was still generating: nothing is buffered.
    assert during["vllm:num_requests_running"] == 1
    assert during["vllm:generation_tokens_total"] - before < 3000
    assert all(line.startswith("data: ") for line in first + rest)
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] == "length"
    assert scrape(sim)["vllm:generation_tokens_total"] - before == 3000


def test_completions_list_prompt_indices(client: openai.OpenAI) -> None:
    r = client.completions.create(model=NAMES[0], prompt=["first prompt", "second one"], n=2, max_tokens=50)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == "[dry-run] echo: first prompt"
    assert r.choices[2].text == r.choices[3].text == "[dry-run] echo: second one"
    assert r.usage is not None
    assert r.usage.prompt_tokens == 4


def test_completions_default_to_16_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(model=NAMES[0], prompt="word " * 40)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 16


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI, sim: Proc) -> None:
    a = client.embeddings.create(model=NAMES[0], input=["the same text", "other text"])
    b = client.embeddings.create(model=NAMES[0], input="the same text")
    assert [d.index for d in a.data] == [0, 1]
    assert a.data[0].embedding == pytest.approx(b.data[0].embedding, abs=1e-6)
    assert a.data[0].embedding != a.data[1].embedding
    assert len(b.data[0].embedding) == 384
    assert math.isclose(math.sqrt(sum(v * v for v in b.data[0].embedding)), 1.0, rel_tol=1e-5)
    assert a.usage.prompt_tokens == 5
    raw = httpx.post(
        sim.url + "/v1/embeddings", json={"input": "the same text", "encoding_format": "float"}
    ).json()
    assert raw["data"][0]["embedding"] == pytest.approx(b.data[0].embedding, abs=1e-6)


def test_models_in_vllms_shape(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == NAMES
    card = models[0].model_dump()
    assert card["owned_by"] == "vllm"
    assert card["root"] == NAMES[0]
    assert card["max_model_len"] == MAX_LEN


def test_prompt_longer_than_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=NAMES[0], messages=[{"role": "user", "content": "word " * MAX_LEN}], max_tokens=10
        )
    assert exc.value.status_code == 400
    assert f"maximum context length is {MAX_LEN} tokens" in exc.value.message
    body = exc.value.response.json()
    assert body["error"]["type"] == "BadRequestError"
    assert body["error"]["code"] == 400


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_max_tokens_is_400(client: openai.OpenAI, bad: int) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.chat.completions.create(
            model=NAMES[0], messages=[{"role": "user", "content": "x"}], max_tokens=bad
        )


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.response.json()["error"] == {
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", json.dumps({"model": DEFAULT_MODEL}).encode(), b'{"messages": "hello"}'],
)
def test_malformed_requests_are_400(sim: Proc, payload: bytes) -> None:
    r = httpx.post(
        sim.url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "BadRequestError"


def test_unknown_fields_are_tolerated(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=NAMES[0],
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"top_k": 3, "repetition_penalty": 1.1, "something_new": {"x": 1}},
    )
    assert r.choices[0].message.content == "[dry-run] echo: hi"
