"""Micro-batching: concurrent single-prompt requests go upstream as one list request.

Only while the engine is already busy. A request for a model with no call of this batcher
in flight is sent at once, alone. Requests that arrive while an earlier call to the same
model is in flight, and whose other parameters are identical, are held for at most
``wait_s`` (or until ``max_batch`` of them are there) and sent as ONE request whose
``prompt`` / ``input`` is the list of their prompts. vLLM answers a list prompt with one
choice (or embedding) per prompt, ``index`` in prompt order; each client gets back its
own item at ``index`` 0, under the id the worker would have given it alone.

**Usage is exact or there is no merge.** A merged completion asks vLLM for each choice's
``prompt_token_ids`` and ``token_ids`` (``return_token_ids``), so each client's usage is
counted from its own tokens, exactly what it gets alone; the token ids are removed again
unless the clients asked for them. A model whose answers carry what a merged answer
cannot split per prompt (``prompt_tokens_details``, per-request ``metrics``) is never
merged, and nothing is merged for a model before one of its answers has shown that.
vLLM reports only the total usage of a list of embedding inputs, so embeddings are
merged only when switched on, and then their usage is apportioned (by prompt length).

**Cancellation.** A client that leaves gives up its place at once; the upstream call of a
batch is cancelled (closing its connection, which makes vLLM abort it) when no client of
it remains.

Chat and streaming requests are never merged: vLLM batches continuously inside the engine,
and merging streams would tie clients' time-to-first-token together. What merging saves on
completions is per-request work in vLLM's API server (parsing, tokenizing, scheduling).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram

from vgate_gateway.protocol import PROMPT_FIELD, Answer, Kind

log = logging.getLogger(__name__)

#: The endpoints whose prompt field (:data:`~vgate_gateway.protocol.PROMPT_FIELD`) takes a
#: list, so that one upstream call can carry several clients' prompts.
BATCHABLE = frozenset({Kind.COMPLETIONS, Kind.EMBEDDINGS})

#: Per-request answer fields a merged answer cannot attribute to one prompt (vLLM reports
#: ``prompt_tokens_details`` of the last prompt only and drops ``metrics`` for list prompts).
UNSPLITTABLE = ("metrics", "kv_transfer_params", "ec_transfer_params")


@dataclass(frozen=True)
class Client:
    """Who a request is for: its request id and what the sender needs (``meta``)."""

    request_id: str
    meta: Any = None


#: Sends one request upstream: (endpoint, JSON body, the clients it answers) -> its whole answer.
#: The first client's ``meta`` carries the call; every client's request id goes with it.
Send = Callable[[Kind, dict[str, Any], Sequence[Client]], Awaitable[Answer]]


class NotExact(ValueError):
    """A merged answer that cannot be split into what each client would get alone."""


def batch_key(kind: Kind, body: Mapping[str, Any], partition: str = "") -> str | None:
    """The group a request may be merged into, or None if it must go alone.

    ``partition`` keeps apart requests that must never share an upstream call, such as
    those of different credentials.
    """
    if kind not in BATCHABLE:
        return None
    name = PROMPT_FIELD[kind]
    if body.get("stream") or not isinstance(body.get(name), str):
        return None
    # With n or best_of above 1 vLLM interleaves choices per prompt; echo with
    # return_token_ids echoes no prompt text. Keep those alone.
    if kind is Kind.COMPLETIONS and (
        any(body.get(p) not in (None, 1) for p in ("n", "best_of")) or body.get("echo")
    ):
        return None
    rest = {k: v for k, v in body.items() if k != name}
    return orjson.dumps([kind, partition, rest], option=orjson.OPT_SORT_KEYS).decode()


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder); the parts sum to ``total``."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _items(kind: Kind, response: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    items = response.get("choices" if kind is Kind.COMPLETIONS else "data")
    if not isinstance(items, list) or len(items) != count:
        raise NotExact(f"expected {count} items, got {type(items).__name__}")
    ordered = sorted(items, key=lambda item: int(item.get("index", 0)))
    if [int(item.get("index", 0)) for item in ordered] != list(range(count)):
        raise NotExact("item indices do not match the prompts")
    return ordered


def _completion_usages(
    ordered: list[dict[str, Any]], usage: Mapping[str, Any], keep_ids: bool | None
) -> list[dict[str, Any]]:
    """Each choice's own usage, counted from the token ids vLLM returned for it.

    ``keep_ids``: True keeps the token ids, False sets them to null (as vLLM answers
    without them), None removes the fields (as workers that never send them answer).
    """
    if usage.get("prompt_tokens_details") is not None:
        raise NotExact("cached-token counts are reported for the list, not per prompt")
    counts = []
    for item in ordered:
        prompt_ids, output_ids = item.get("prompt_token_ids"), item.get("token_ids")
        if not isinstance(prompt_ids, list) or not isinstance(output_ids, list):
            raise NotExact("the worker did not return token ids")
        counts.append((len(prompt_ids), len(output_ids)))
        if keep_ids is False:
            item["prompt_token_ids"] = item["token_ids"] = None
        elif keep_ids is None:
            del item["prompt_token_ids"], item["token_ids"]
    if (sum(p for p, _ in counts), sum(c for _, c in counts)) != (
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
    ):
        raise NotExact("per-choice token counts do not add up to the usage")
    return [{**usage, "prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c} for p, c in counts]


def split_response(
    kind: Kind,
    response: Mapping[str, Any],
    prompts: Sequence[str],
    ids: Sequence[str] | None = None,
    keep_token_ids: bool | None = True,
) -> list[dict[str, Any]]:
    """One client response per prompt from a list-prompt response; :class:`NotExact` if it does not fit.

    Completions get exact usage from the returned token ids; embeddings get the reported
    prompt tokens apportioned by prompt length. ``ids`` are the clients' request ids: vLLM
    names a response after the request id it was sent with, so each client's answer gets
    the name it would have had alone.
    """
    ordered = _items(kind, response, len(prompts))
    if any(response.get(name) is not None for name in UNSPLITTABLE):
        raise NotExact("the answer carries per-request fields")
    usage = response.get("usage") or {}
    if kind is Kind.COMPLETIONS:
        usages = _completion_usages(ordered, usage, keep_token_ids)
    else:
        shares = apportion(int(usage.get("prompt_tokens") or 0), [len(p) for p in prompts])
        usages = [{**usage, "prompt_tokens": s, "total_tokens": s} for s in shares]
    out = []
    for i, item in enumerate(ordered):
        one = {
            **response,
            "usage": usages[i],
            "choices" if kind is Kind.COMPLETIONS else "data": [{**item, "index": 0}],
        }
        one["id"] = _client_id(response.get("id"), ids, i)
        out.append(one)
    return out


def _client_id(merged: Any, ids: Sequence[str] | None, i: int) -> Any:
    if not isinstance(merged, str):
        return merged
    if ids and merged.endswith(f"-{ids[0]}"):
        return merged[: len(merged) - len(ids[0])] + ids[i]  # "cmpl-<first id>" -> "cmpl-<its id>"
    return f"{merged}-{i}"


@dataclass(frozen=True)
class Shape:
    """What one lone completion showed of its model's answers."""

    #: Merged answers split exactly: nothing per-request that a list answer lumps together.
    exact: bool
    #: Choices carry ``token_ids`` / ``prompt_token_ids`` (null) even when not asked for.
    null_token_ids: bool


def learn_shape(body: bytes) -> Shape | None:
    """From one lone completion: how its model answers; None when the answer is no JSON object."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    usage, choices = answer.get("usage"), answer.get("choices")
    usage = usage if isinstance(usage, dict) else {}
    exact = usage.get("prompt_tokens_details") is None and all(answer.get(n) is None for n in UNSPLITTABLE)
    choices = choices if isinstance(choices, list) else []
    null_ids = bool(choices) and isinstance(choices[0], dict) and "token_ids" in choices[0]
    return Shape(exact, null_ids)


class BatchMetrics:
    """The batcher's Prometheus series, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.size = Histogram(
            "vgate_batch_size",
            "Requests sent upstream together as one list request",
            ["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.seconds = Histogram(
            "vgate_batch_processing_seconds",
            "Time from sending a batch upstream to having every client's answer",
            ["endpoint"],
            registry=registry,
        )
        # Each endpoint's series exist from the start, at 0: a rate() sees the first batch too.
        for kind in BATCHABLE:
            self.size.labels(kind)
            self.seconds.labels(kind)


@dataclass
class _Item:
    body: dict[str, Any]
    client: Client
    future: asyncio.Future[Answer]


@dataclass
class _Group:
    kind: Kind
    model: str
    items: list[_Item] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    #: The running upstream call, once flushed.
    task: asyncio.Task[None] | None = None


class MicroBatcher:
    """Sends lone requests at once and merges those that arrive while the model is busy."""

    def __init__(
        self,
        send: Send,
        *,
        max_batch: int,
        wait_s: float,
        endpoints: frozenset[Kind],
        metrics: BatchMetrics | None = None,
    ) -> None:
        self._send = send
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.endpoints = endpoints
        self._metrics = metrics
        self._groups: dict[str, _Group] = {}
        self._busy: dict[str, int] = {}  # model -> upstream calls of this batcher in flight
        #: model -> how its answers look (absent: not known yet).
        self._shapes: dict[str, Shape] = {}
        #: Upstream requests that carried more than one client's prompt, and those clients.
        self.merged_batches = 0
        self.merged_requests = 0

    async def submit(self, kind: Kind, body: dict[str, Any], client: Client, partition: str = "") -> Answer:
        """Answer one client's request, merged with others when that costs it nothing.

        Cancelling the caller (the client left) withdraws the request; the upstream call
        is cancelled when it was the last client of it.
        """
        model = str(body.get("model"))
        key = self._key(kind, model, body, partition)
        group = self._groups.get(key) if key is not None else None
        if key is None or (group is None and not self._busy.get(model)):
            return await self._lone(kind, model, body, client)
        loop = asyncio.get_running_loop()
        item = _Item(body, client, loop.create_future())
        if group is None:
            group = self._groups[key] = _Group(kind, model)
            group.timer = loop.call_later(self.wait_s, self._flush, key)
        group.items.append(item)
        if len(group.items) >= self.max_batch:
            self._flush(key)
        try:
            return await item.future
        finally:
            if not item.future.done():
                item.future.cancel()
            self._leave(key, group, item)

    def _key(self, kind: Kind, model: str, body: Mapping[str, Any], partition: str) -> str | None:
        if self.max_batch <= 1 or kind not in self.endpoints:
            return None
        # Completions merge only once the model's answers are known to split exactly.
        shape = self._shapes.get(model)
        if kind is Kind.COMPLETIONS and (shape is None or not shape.exact):
            return None
        return batch_key(kind, body, partition)

    def _leave(self, key: str, group: _Group, item: _Item) -> None:
        """A client is done or gone; a batch nobody waits for any more is cancelled."""
        if group.task is None:
            if item in group.items:
                group.items.remove(item)
            if not group.items and self._groups.get(key) is group:
                self._close(key, group)
            return
        if all(i.future.done() for i in group.items) and not group.task.done():
            group.task.cancel()

    def _close(self, key: str, group: _Group) -> None:
        del self._groups[key]
        if group.timer is not None:
            group.timer.cancel()

    async def _lone(self, kind: Kind, model: str, body: dict[str, Any], client: Client) -> Answer:
        if self._metrics is not None:
            self._metrics.size.labels(kind).observe(1)
        self._busy[model] = self._busy.get(model, 0) + 1
        try:
            reply = await self._send(kind, body, [client])
        finally:
            self._release(model)
        if reply.status == 200 and kind is Kind.COMPLETIONS and model not in self._shapes:
            shape = learn_shape(reply.body)
            if shape is not None:
                self._shapes[model] = shape
        return reply

    def _release(self, model: str) -> None:
        left = self._busy.get(model, 0) - 1
        if left > 0:
            self._busy[model] = left
        else:
            self._busy.pop(model, None)

    def _flush(self, key: str) -> None:
        group = self._groups.get(key)
        if group is None or group.task is not None:
            return
        self._close(key, group)
        group.items = [i for i in group.items if not i.future.done()]
        if group.items:
            group.task = asyncio.create_task(self._run(group), name="batch")

    async def _run(self, group: _Group) -> None:
        started = time.perf_counter()
        items, kind = group.items, group.kind
        if self._metrics is not None:
            self._metrics.size.labels(kind).observe(len(items))
        self._busy[group.model] = self._busy.get(group.model, 0) + 1
        try:
            replies: list[Answer | BaseException]
            if len(items) == 1:
                replies = [await self._send(kind, items[0].body, [items[0].client])]
            else:
                replies = await self._send_merged(group)
        except Exception as exc:  # every waiting client gets the upstream error
            replies = [exc] * len(items)
        finally:
            self._release(group.model)
        for item, reply in zip(items, replies, strict=True):
            if item.future.done():
                continue
            if isinstance(reply, BaseException):
                item.future.set_exception(reply)
            else:
                item.future.set_result(reply)
        if self._metrics is not None:
            self._metrics.seconds.labels(kind).observe(time.perf_counter() - started)

    async def _send_merged(self, group: _Group) -> list[Answer | BaseException]:
        kind, items = group.kind, group.items
        name = PROMPT_FIELD[kind]
        prompts = [item.body[name] for item in items]
        clients = [item.client for item in items]
        first = items[0].body
        merged = {**first, name: prompts}
        keep_ids: bool | None = True
        if kind is Kind.COMPLETIONS and not first.get("return_token_ids"):
            merged["return_token_ids"] = True
            shape = self._shapes.get(group.model)
            keep_ids = False if shape is not None and shape.null_token_ids else None
        self.merged_batches += 1
        self.merged_requests += len(items)
        log.info(
            "merged %d %s requests into one upstream call: %s",
            len(items),
            kind.value,
            ",".join(c.request_id for c in clients),
        )
        reply = await self._send(kind, merged, clients)
        if reply.status == 200:
            try:
                ids = [c.request_id for c in clients]
                parts = split_response(kind, json.loads(reply.body), prompts, ids, keep_ids)
            except NotExact as exc:
                log.warning(
                    "merged %s answer does not split exactly (%s); not merging for %s", kind, exc, group.model
                )
                self._shapes[group.model] = Shape(False, False)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("merged %s answer did not split (%s); resending singly", kind, exc)
            else:
                encoded = [json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode() for p in parts]
                return [Answer(200, body) for body in encoded]
        elif reply.status not in (400, 422):
            return [reply] * len(items)
        # One bad prompt fails the whole list, or the answer did not split: ask one by one.
        singles = (self._send(kind, item.body, [item.client]) for item in items)
        return list(await asyncio.gather(*singles, return_exceptions=True))
