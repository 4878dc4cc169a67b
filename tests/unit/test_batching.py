"""Micro-batching: grouping, the merged request, splitting answers and usage, failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.batching import (
    BatchMetrics,
    MicroBatcher,
    Reply,
    apportion,
    batch_key,
    split_response,
)
from vgate_gateway.protocol import Kind

pytestmark = pytest.mark.timeout(10)


class FakeWorker:
    """Answers like vLLM: a list prompt gets one choice per prompt, ``index`` in order.

    A prompt containing ``BAD`` makes the whole request a 400, as vLLM does for a
    too-long prompt anywhere in the list.
    """

    def __init__(self, status: int | None = None, raises: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.metas: list[Any] = []
        self.status = status
        self.raises = raises

    async def __call__(self, kind: Kind, body: dict[str, Any], meta: Any) -> Reply:
        self.calls.append(body)
        self.metas.append(meta)
        await asyncio.sleep(0)
        if self.raises is not None:
            raise self.raises
        field = "prompt" if kind is Kind.COMPLETIONS else "input"
        prompts = body[field] if isinstance(body[field], list) else [body[field]]
        if self.status is not None:
            return Reply(self.status, b'{"error": {"message": "unavailable"}}')
        if any("BAD" in p for p in prompts):
            return Reply(400, b'{"error": {"message": "prompt too long", "code": 400}}')
        usage = {"prompt_tokens": sum(len(p) for p in prompts)}
        if kind is Kind.COMPLETIONS:
            items = [{"index": i, "text": p.upper(), "finish_reason": "stop"} for i, p in enumerate(prompts)]
            usage["completion_tokens"] = sum(len(p) for p in prompts)
            usage["total_tokens"] = 2 * usage["prompt_tokens"]
            answer = {"id": "cmpl-9", "object": "text_completion", "model": "m", "choices": items}
        else:
            items = [
                {"index": i, "object": "embedding", "embedding": [len(p)]} for i, p in enumerate(prompts)
            ]
            usage["total_tokens"] = usage["prompt_tokens"]
            answer = {"id": "embd-9", "object": "list", "model": "m", "data": items}
        return Reply(200, json.dumps({**answer, "usage": usage}).encode())


def _body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompt, "max_tokens": 8, **extra}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (Kind.CHAT, {"model": "m", "messages": []}),
        (Kind.COMPLETIONS, _body("x", stream=True)),
        (Kind.COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}),
        (Kind.COMPLETIONS, _body("x", n=2)),
        (Kind.COMPLETIONS, _body("x", best_of=3)),
        (Kind.EMBEDDINGS, {"model": "m", "input": ["a"]}),
    ],
)
def test_requests_that_are_never_merged(kind: Kind, body: dict[str, Any]) -> None:
    assert batch_key(kind, body) is None


def test_only_identical_non_prompt_parameters_share_a_group() -> None:
    assert batch_key(Kind.COMPLETIONS, _body("a")) == batch_key(Kind.COMPLETIONS, _body("b"))
    assert batch_key(Kind.COMPLETIONS, _body("a")) != batch_key(Kind.COMPLETIONS, _body("a", max_tokens=9))
    assert batch_key(Kind.COMPLETIONS, _body("a")) != batch_key(
        Kind.COMPLETIONS, {**_body("a"), "model": "n"}
    )
    embeddings = {"model": "m", "input": "a"}
    assert batch_key(Kind.EMBEDDINGS, embeddings) == batch_key(Kind.EMBEDDINGS, {**embeddings, "input": "zz"})


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (10, [1, 1], [5, 5]),
        (10, [1, 2, 2], [2, 4, 4]),
        (7, [1, 1, 1], [3, 2, 2]),
        (5, [0, 0], [3, 2]),
        (0, [3], [0]),
    ],
)
def test_apportion_sums_to_the_total(total: int, weights: list[int], parts: list[int]) -> None:
    assert apportion(total, weights) == parts


def test_split_gives_each_prompt_its_own_choice_at_index_zero() -> None:
    response = {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [
            {"index": 1, "text": "B", "finish_reason": "stop"},
            {"index": 0, "text": "AA", "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    }
    first, second = split_response(Kind.COMPLETIONS, response, ["aa", "b"])
    assert first["choices"] == [{"index": 0, "text": "AA", "finish_reason": "stop"}]
    assert second["choices"][0]["text"] == "B"
    assert first["id"] != second["id"]
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert second["usage"]["prompt_tokens"] + first["usage"]["prompt_tokens"] == 9


def test_split_refuses_a_response_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        split_response(Kind.COMPLETIONS, {"choices": [{"index": 0}]}, ["a", "b"])
    with pytest.raises(ValueError, match="indices"):
        split_response(Kind.EMBEDDINGS, {"data": [{"index": 0}, {"index": 0}]}, ["a", "b"])


async def test_concurrent_requests_go_upstream_as_one() -> None:
    registry = CollectorRegistry()
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05, metrics=BatchMetrics(registry))
    prompts = ["one", "two", "three", "four"]
    replies = await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p)) for p in prompts))
    assert len(worker.calls) == 1
    assert worker.calls[0]["prompt"] == prompts
    for prompt, reply in zip(prompts, replies, strict=True):
        answer = json.loads(reply.body)
        assert reply.status == 200
        assert answer["choices"] == [{"index": 0, "text": prompt.upper(), "finish_reason": "stop"}]
    total = sum(json.loads(r.body)["usage"]["prompt_tokens"] for r in replies)
    assert total == sum(map(len, prompts))
    assert registry.get_sample_value("vgate_batch_size_sum", {"endpoint": Kind.COMPLETIONS}) == 4
    assert (
        registry.get_sample_value("vgate_batch_processing_seconds_count", {"endpoint": Kind.COMPLETIONS}) == 1
    )


async def test_embeddings_are_merged_too() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05)
    inputs = ["a", "bbb"]
    replies = await asyncio.gather(
        *(batcher.submit(Kind.EMBEDDINGS, {"model": "m", "input": i}) for i in inputs)
    )
    assert len(worker.calls) == 1
    assert [json.loads(r.body)["data"][0]["embedding"] for r in replies] == [[1], [3]]
    assert [json.loads(r.body)["data"][0]["index"] for r in replies] == [0, 0]


async def test_batch_size_bounds_each_upstream_request() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=2, wait_s=0.05)
    await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(f"p{i}")) for i in range(5)))
    assert sorted(len(c["prompt"]) if isinstance(c["prompt"], list) else 1 for c in worker.calls) == [1, 2, 2]


async def test_a_lone_request_goes_as_sent_after_the_window() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.001)
    reply = await batcher.submit(Kind.COMPLETIONS, _body("solo"))
    assert worker.calls == [_body("solo")]
    assert json.loads(reply.body)["choices"][0]["text"] == "SOLO"


async def test_different_parameters_are_not_merged() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.02)
    await asyncio.gather(
        batcher.submit(Kind.COMPLETIONS, _body("a")),
        batcher.submit(Kind.COMPLETIONS, _body("b", max_tokens=3)),
    )
    assert len(worker.calls) == 2


async def test_one_bad_prompt_fails_only_its_own_request() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05)
    prompts = ["fine", "BAD one", "also fine"]
    replies = await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p)) for p in prompts))
    assert [r.status for r in replies] == [200, 400, 200]
    assert json.loads(replies[2].body)["choices"][0]["text"] == "ALSO FINE"
    assert len(worker.calls) == 4  # the batch, then each prompt alone


async def test_a_batch_wide_server_error_reaches_everyone() -> None:
    worker = FakeWorker(status=503)
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05)
    replies = await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p)) for p in "abc"))
    assert [r.status for r in replies] == [503, 503, 503]
    assert len(worker.calls) == 1


async def test_a_transport_failure_reaches_everyone() -> None:
    worker = FakeWorker(raises=ConnectionError("down"))
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05)
    results = await asyncio.gather(
        *(batcher.submit(Kind.COMPLETIONS, _body(p)) for p in "ab"), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_client_leaving_before_the_flush_leaves_the_batch() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05)
    staying = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("stay")))
    leaving = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("leave")))
    await asyncio.sleep(0)
    leaving.cancel()
    reply = await staying
    assert worker.calls == [_body("stay")]
    assert json.loads(reply.body)["choices"][0]["text"] == "STAY"


async def test_batching_off_sends_every_request_alone() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=1, wait_s=0.05)
    await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p)) for p in "abc"))
    assert [c["prompt"] for c in worker.calls] == ["a", "b", "c"]


async def test_partitions_are_never_merged_and_meta_travels() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.02)
    await asyncio.gather(
        batcher.submit(Kind.COMPLETIONS, _body("a"), meta="key-1", partition="tenant-1"),
        batcher.submit(Kind.COMPLETIONS, _body("b"), meta="key-2", partition="tenant-2"),
        batcher.submit(Kind.COMPLETIONS, _body("c"), meta="key-3", partition="tenant-1"),
    )
    assert sorted(map(str, worker.metas)) == ["key-1", "key-2"]
    assert sorted(
        c["prompt"] if isinstance(c["prompt"], str) else "+".join(c["prompt"]) for c in worker.calls
    ) == [
        "a+c",
        "b",
    ]
