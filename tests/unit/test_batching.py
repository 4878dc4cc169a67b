"""Micro-batching: when requests merge, exact usage, splitting answers, failures, cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.efficiency.batching import (
    BatchMetrics,
    Client,
    MicroBatcher,
    NotExact,
    apportion,
    batch_key,
    split_response,
)
from vgate_gateway.protocol import Answer, Kind

pytestmark = pytest.mark.timeout(10)
BOTH = frozenset({Kind.COMPLETIONS, Kind.EMBEDDINGS})
COMPLETIONS = frozenset({Kind.COMPLETIONS})


def _ids(prompt: str) -> list[int]:
    return [ord(c) for c in prompt]


class FakeWorker:
    """Answers like vLLM: a list prompt gets one choice per prompt, ``index`` in order.

    A prompt's tokens are its characters and the completion is the prompt upper-cased, so
    usage is known exactly. ``return_token_ids`` fills each choice's token ids. A prompt
    containing ``BAD`` makes the whole request a 400, as vLLM does for a too-long prompt
    anywhere in the list. While ``gate`` is set, the call with ``max_tokens`` 1 (the one that
    keeps the engine busy) waits for it, and every call does with ``hold_all``.
    """

    def __init__(self, status: int | None = None, raises: Exception | None = None, details: bool = False):
        self.calls: list[dict[str, Any]] = []
        self.clients: list[list[str]] = []
        self.cancelled = 0
        self.status = status
        self.raises = raises
        self.details = details
        self.gate: asyncio.Event | None = None
        self.hold_all = False

    async def __call__(self, kind: Kind, body: dict[str, Any], clients: Sequence[Client]) -> Answer:
        self.calls.append(body)
        self.clients.append([c.request_id for c in clients])
        try:
            held = self.gate is not None and (self.hold_all or body.get("max_tokens") == 1)
            await (self.gate.wait() if held and self.gate is not None else asyncio.sleep(0))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.raises is not None:
            raise self.raises
        field = "prompt" if kind is Kind.COMPLETIONS else "input"
        prompts = body[field] if isinstance(body[field], list) else [body[field]]
        if self.status is not None:
            return Answer(self.status, b'{"error": {"message": "unavailable"}}')
        if any("BAD" in p for p in prompts):
            return Answer(400, b'{"error": {"message": "prompt too long", "code": 400}}')
        tokens = sum(len(p) for p in prompts)
        usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
        details = {"cached_tokens": 0} if self.details else None
        request_id = clients[0].request_id
        if kind is Kind.COMPLETIONS:
            with_ids = bool(body.get("return_token_ids"))
            items = [
                {
                    "index": i,
                    "text": p.upper(),
                    "finish_reason": "stop",
                    "token_ids": _ids(p) if with_ids else None,
                    "prompt_token_ids": _ids(p) if with_ids else None,
                }
                for i, p in enumerate(prompts)
            ]
            usage.update(total_tokens=2 * tokens, completion_tokens=tokens, prompt_tokens_details=details)
            answer = {"id": f"cmpl-{request_id}", "object": "text_completion", "model": "m", "choices": items}
        else:
            items = [
                {"index": i, "object": "embedding", "embedding": [len(p)]} for i, p in enumerate(prompts)
            ]
            answer = {"id": f"embd-{request_id}", "object": "list", "model": "m", "data": items}
        return Answer(200, json.dumps({**answer, "usage": usage}).encode())


def _body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompt, "max_tokens": 8, **extra}


def _client(name: str) -> Client:
    return Client(name)


async def _busy(
    worker: FakeWorker, batcher: MicroBatcher, kind: Kind = Kind.COMPLETIONS
) -> asyncio.Task[Answer]:
    """Learn the model's answers (one lone call), then hold a call in flight on the gate."""
    body = _body("warm") if kind is Kind.COMPLETIONS else {"model": "m", "input": "warm"}
    await batcher.submit(kind, body, _client("warm"))
    worker.gate = asyncio.Event()
    busy = asyncio.create_task(batcher.submit(kind, {**body, "max_tokens": 1}, _client("busy")))
    while len(worker.calls) < 2:  # noqa: ASYNC110 - the fake worker signals nothing
        await asyncio.sleep(0)
    return busy


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (Kind.CHAT, {"model": "m", "messages": []}),
        (Kind.COMPLETIONS, _body("x", stream=True)),
        (Kind.COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}),
        (Kind.COMPLETIONS, _body("x", n=2)),
        (Kind.COMPLETIONS, _body("x", best_of=3)),
        (Kind.COMPLETIONS, _body("x", echo=True)),
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


def _merged(**usage: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-r1",
        "object": "text_completion",
        "choices": [
            {"index": 1, "text": "B", "finish_reason": "stop", "prompt_token_ids": [5], "token_ids": [6, 7]},
            {
                "index": 0,
                "text": "AA",
                "finish_reason": "length",
                "prompt_token_ids": [1, 2, 3],
                "token_ids": [4],
            },
        ],
        "usage": {
            "prompt_tokens": 4,
            "total_tokens": 7,
            "completion_tokens": 3,
            "prompt_tokens_details": None,
        }
        | usage,
        "metrics": None,
    }


def test_split_counts_each_clients_usage_from_its_own_tokens() -> None:
    first, second = split_response(
        Kind.COMPLETIONS, _merged(), ["aa", "b"], ["r1", "r2"], keep_token_ids=False
    )
    assert first["choices"] == [
        {"index": 0, "text": "AA", "finish_reason": "length", "prompt_token_ids": None, "token_ids": None}
    ]
    assert second["choices"][0]["text"] == "B"
    assert (first["id"], second["id"]) == ("cmpl-r1", "cmpl-r2")  # as each would be named alone
    assert first["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 4,
        "completion_tokens": 1,
        "prompt_tokens_details": None,
    }
    assert second["usage"]["prompt_tokens"] == 1
    assert second["usage"]["completion_tokens"] == 2
    kept = split_response(Kind.COMPLETIONS, _merged(), ["aa", "b"], ["r1", "r2"])
    assert kept[1]["choices"][0]["token_ids"] == [6, 7]


@pytest.mark.parametrize(
    "response",
    [
        {"choices": [{"index": 0}]},
        _merged(prompt_tokens=5),  # token ids that do not add up to the usage
        _merged(prompt_tokens_details={"cached_tokens": 2}),  # cached tokens of the list, not per prompt
        {**_merged(), "metrics": {"ttft": 0.1}},
        {**_merged(), "choices": [{"index": i, "text": ""} for i in range(2)]},  # no token ids
    ],
)
def test_split_refuses_what_it_cannot_split_exactly(response: dict[str, Any]) -> None:
    with pytest.raises(NotExact):
        split_response(Kind.COMPLETIONS, response, ["a", "b"])


async def test_a_lone_request_is_sent_at_once() -> None:
    worker = FakeWorker()
    # A window of a minute: the test would time out if a lone request waited for companions.
    batcher = MicroBatcher(worker, max_batch=8, wait_s=60, endpoints=BOTH)
    reply = await batcher.submit(Kind.COMPLETIONS, _body("solo"), _client("a"))
    assert worker.calls == [_body("solo")]
    assert json.loads(reply.body)["choices"][0]["text"] == "SOLO"
    for i in range(3):  # one after the other: each alone, at once
        await batcher.submit(Kind.EMBEDDINGS, {"model": "m", "input": f"e{i}"}, _client(f"e{i}"))
    assert len(worker.calls) == 4


async def test_requests_arriving_while_the_model_is_busy_are_merged_with_exact_usage() -> None:
    registry = CollectorRegistry()
    worker = FakeWorker()
    batcher = MicroBatcher(
        worker, max_batch=8, wait_s=0.01, metrics=BatchMetrics(registry), endpoints=COMPLETIONS
    )
    busy = await _busy(worker, batcher)
    prompts = ["one", "three", "four!"]
    replies = await asyncio.gather(
        *(batcher.submit(Kind.COMPLETIONS, _body(p), _client(f"r{i}")) for i, p in enumerate(prompts))
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert worker.calls[2]["prompt"] == prompts
    assert worker.calls[2]["return_token_ids"] is True
    assert worker.clients[2] == ["r0", "r1", "r2"]  # every client's request id goes with the call
    worker.gate = None
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        alone = json.loads((await batcher.submit(Kind.COMPLETIONS, _body(prompt), _client(f"r{i}"))).body)
        assert json.loads(reply.body) == alone  # usage, token-id fields, id: all as alone
    # Client requests per upstream call: warm-up, busy, the merged three, then the three alone.
    assert registry.get_sample_value("vgate_batch_size_sum", {"endpoint": Kind.COMPLETIONS}) == 8
    assert registry.get_sample_value("vgate_batch_size_count", {"endpoint": Kind.COMPLETIONS}) == 6


async def test_nothing_is_merged_before_an_answer_showed_usage_splits_exactly() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    worker.gate, worker.hold_all = asyncio.Event(), True
    first = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("first"), _client("a")))
    others = [asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body(p), _client(p))) for p in "bc"]
    while len(worker.calls) < 3:  # noqa: ASYNC110 - the fake worker signals nothing
        await asyncio.sleep(0)
    worker.gate.set()
    await asyncio.gather(first, *others)
    assert [c["prompt"] for c in worker.calls] == ["first", "b", "c"]


async def test_a_worker_reporting_cached_tokens_is_never_merged() -> None:
    worker = FakeWorker(details=True)
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p), _client(p)) for p in "ab"))
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert all(isinstance(c["prompt"], str) for c in worker.calls)


async def test_embeddings_are_merged_when_switched_on_with_apportioned_usage() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=BOTH)
    busy = await _busy(worker, batcher, Kind.EMBEDDINGS)
    inputs = ["a", "bbb"]
    replies = await asyncio.gather(
        *(batcher.submit(Kind.EMBEDDINGS, {"model": "m", "input": i}, _client(i)) for i in inputs)
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert worker.calls[2]["input"] == inputs
    answers = [json.loads(r.body) for r in replies]
    assert [a["data"][0]["embedding"] for a in answers] == [[1], [3]]
    assert [a["usage"]["prompt_tokens"] for a in answers] == [1, 3]
    assert [a["id"] for a in answers] == ["embd-a", "embd-bbb"]


async def test_embeddings_are_not_merged_by_default() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher, Kind.EMBEDDINGS)
    await asyncio.gather(
        *(batcher.submit(Kind.EMBEDDINGS, {"model": "m", "input": i}, _client(i)) for i in "ab")
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert [c["input"] for c in worker.calls[2:]] == ["a", "b"]


async def test_batch_size_bounds_each_upstream_request() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=2, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    await asyncio.gather(
        *(batcher.submit(Kind.COMPLETIONS, _body(f"p{i}"), _client(str(i))) for i in range(5))
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    sizes = sorted(len(c["prompt"]) if isinstance(c["prompt"], list) else 1 for c in worker.calls[2:])
    assert sizes == [1, 2, 2]


async def test_different_parameters_are_not_merged() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    await asyncio.gather(
        batcher.submit(Kind.COMPLETIONS, _body("a"), _client("a")),
        batcher.submit(Kind.COMPLETIONS, _body("b", max_tokens=3), _client("b")),
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert len(worker.calls) == 4


async def _merged_replies(worker: FakeWorker, prompts: str | list[str]) -> list[Any]:
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    gate = asyncio.Event()
    worker.gate = gate
    worker_status, worker_raises = worker.status, worker.raises
    worker.status = worker.raises = None
    worker.gate = None
    await batcher.submit(Kind.COMPLETIONS, _body("warm"), _client("warm"))
    worker.status, worker.raises, worker.gate = worker_status, worker_raises, gate
    busy = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("busy", max_tokens=1), _client("busy")))
    while len(worker.calls) < 2:  # noqa: ASYNC110 - the fake worker signals nothing
        await asyncio.sleep(0)
    results = await asyncio.gather(
        *(batcher.submit(Kind.COMPLETIONS, _body(p), _client(p)) for p in prompts), return_exceptions=True
    )
    gate.set()
    await asyncio.gather(busy, return_exceptions=True)
    return list(results)


async def test_one_bad_prompt_fails_only_its_own_request() -> None:
    worker = FakeWorker()
    replies = await _merged_replies(worker, ["fine", "BAD one", "also fine"])
    assert [r.status for r in replies] == [200, 400, 200]
    assert json.loads(replies[2].body)["choices"][0]["text"] == "ALSO FINE"
    assert len(worker.calls) == 2 + 4  # the batch, then each prompt alone


async def test_a_batch_wide_server_error_reaches_everyone() -> None:
    replies = await _merged_replies(FakeWorker(status=503), "abc")
    assert [r.status for r in replies] == [503, 503, 503]


async def test_a_transport_failure_reaches_everyone() -> None:
    results = await _merged_replies(FakeWorker(raises=ConnectionError("down")), "ab")
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_client_leaving_before_the_flush_leaves_the_batch() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.05, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    staying = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("stay"), _client("s")))
    leaving = asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body("leave"), _client("l")))
    await asyncio.sleep(0)
    leaving.cancel()
    worker.gate.set()  # type: ignore[union-attr]
    reply = await staying
    await busy
    assert worker.calls[2:] == [_body("stay")]
    assert json.loads(reply.body)["choices"][0]["text"] == "STAY"


async def test_the_upstream_call_is_cancelled_when_its_last_client_leaves() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=2, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    worker.hold_all = True
    clients = [asyncio.create_task(batcher.submit(Kind.COMPLETIONS, _body(p), _client(p))) for p in "ab"]
    # Flushed at two: the merged call waits on the gate.
    while len(worker.calls) < 3:  # noqa: ASYNC110 - the fake worker signals nothing
        await asyncio.sleep(0)
    clients[0].cancel()
    await asyncio.sleep(0)
    assert worker.cancelled == 0  # one client is still waiting for it
    clients[1].cancel()
    busy.cancel()  # a lone call: its client leaving cancels it too
    await asyncio.gather(*clients, busy, return_exceptions=True)
    assert worker.cancelled == 2


async def test_batching_off_sends_every_request_alone() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=1, wait_s=0.05, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    await asyncio.gather(*(batcher.submit(Kind.COMPLETIONS, _body(p), _client(p)) for p in "abc"))
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert [c["prompt"] for c in worker.calls[2:]] == ["a", "b", "c"]


async def test_partitions_are_never_merged() -> None:
    worker = FakeWorker()
    batcher = MicroBatcher(worker, max_batch=8, wait_s=0.01, endpoints=COMPLETIONS)
    busy = await _busy(worker, batcher)
    await asyncio.gather(
        batcher.submit(Kind.COMPLETIONS, _body("a"), _client("a"), partition="tenant-1"),
        batcher.submit(Kind.COMPLETIONS, _body("b"), _client("b"), partition="tenant-2"),
        batcher.submit(Kind.COMPLETIONS, _body("c"), _client("c"), partition="tenant-1"),
    )
    worker.gate.set()  # type: ignore[union-attr]
    await busy
    assert sorted(worker.clients[2:]) == [["a", "c"], ["b"]]
