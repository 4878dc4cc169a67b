"""Micro-batching: concurrent single-prompt requests go upstream as one list request.

Non-streaming ``/v1/completions`` and ``/v1/embeddings`` requests for the same model whose
other parameters are identical, arriving within ``wait_s`` of the first of them (and at
most ``max_batch`` of them), are sent as ONE request whose ``prompt`` / ``input`` is the
list of their prompts. vLLM answers a list prompt with one choice (or embedding) per
prompt, ``index`` in prompt order; each client gets back its own item at ``index`` 0 and
its share of the usage.

Chat and streaming requests are never merged: vLLM already batches concurrent sequences
continuously inside the engine, so merging buys nothing there, while it would couple
clients' time-to-first-token and make one slow stream hold up the others. For the list
endpoints the saving is per-request overhead (HTTP, parsing, scheduling) at the gateway
and the worker.

Usage of a merged request is apportioned: prompt tokens by prompt length, completion
tokens by output length, largest remainders first, so the clients' shares sum exactly
to what the worker reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from vgate_gateway.protocol import Kind

log = logging.getLogger(__name__)

#: The list-taking field of each batchable endpoint.
PROMPT_FIELD = {Kind.COMPLETIONS: "prompt", Kind.EMBEDDINGS: "input"}

_JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Reply:
    """An upstream answer to a whole (non-streaming) request."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


#: Sends one request upstream: (endpoint, JSON body, the first client's ``meta``) -> reply.
Send = Callable[[Kind, dict[str, Any], Any], Awaitable[Reply]]


def batch_key(kind: Kind, body: Mapping[str, Any], partition: str = "") -> str | None:
    """The group a request may be merged into, or None if it must go alone.

    ``partition`` keeps apart requests that must never share an upstream call, such as
    those of different credentials.
    """
    name = PROMPT_FIELD.get(kind)
    if name is None or body.get("stream") or not isinstance(body.get(name), str):
        return None
    # With n or best_of above 1 vLLM interleaves choices per prompt; keep those alone.
    if kind is Kind.COMPLETIONS and any(body.get(p) not in (None, 1) for p in ("n", "best_of")):
        return None
    rest = {k: v for k, v in body.items() if k != name}
    return json.dumps([kind, partition, rest], sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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


def split_response(kind: Kind, response: Mapping[str, Any], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """One client response per prompt from a list-prompt response; ValueError if it does not fit."""
    items = response.get("choices" if kind is Kind.COMPLETIONS else "data")
    if not isinstance(items, list) or len(items) != len(prompts):
        raise ValueError(f"expected {len(prompts)} items, got {type(items).__name__}")
    ordered = sorted(items, key=lambda item: int(item.get("index", 0)))
    if [int(item.get("index", 0)) for item in ordered] != list(range(len(prompts))):
        raise ValueError("item indices do not match the prompts")
    usage = response.get("usage") or {}
    prompt_tokens = apportion(int(usage.get("prompt_tokens") or 0), [len(p) for p in prompts])
    if kind is Kind.COMPLETIONS:
        outputs = [len(item.get("text") or "") for item in ordered]
        completion_tokens = apportion(int(usage.get("completion_tokens") or 0), outputs)
    else:
        completion_tokens = [0] * len(prompts)
    out = []
    for i, item in enumerate(ordered):
        share: dict[str, Any] = {"prompt_tokens": prompt_tokens[i], "total_tokens": 0}
        if kind is Kind.COMPLETIONS:
            share["completion_tokens"] = completion_tokens[i]
        share["total_tokens"] = prompt_tokens[i] + completion_tokens[i]
        one = {
            **response,
            "usage": share,
            "choices" if kind is Kind.COMPLETIONS else "data": [{**item, "index": 0}],
        }
        if isinstance(response.get("id"), str):
            one["id"] = f"{response['id']}-{i}"  # each client gets its own response id
        out.append(one)
    return out


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


@dataclass
class _Item:
    body: dict[str, Any]
    meta: Any
    future: asyncio.Future[Reply]


@dataclass
class _Group:
    kind: Kind
    items: list[_Item] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    """Collects mergeable requests for up to ``wait_s`` and sends each group as one."""

    def __init__(
        self, send: Send, *, max_batch: int, wait_s: float, metrics: BatchMetrics | None = None
    ) -> None:
        self._send = send
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._metrics = metrics
        self._groups: dict[str, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Upstream requests that carried more than one client's prompt, and those clients.
        self.merged_batches = 0
        self.merged_requests = 0

    async def submit(self, kind: Kind, body: dict[str, Any], meta: Any = None, partition: str = "") -> Reply:
        """Answer one client's request, merged with others when possible.

        ``meta`` travels to ``send`` (a merged request carries its first client's).
        """
        key = batch_key(kind, body, partition) if self.max_batch > 1 else None
        if key is None:
            return await self._send(kind, body, meta)
        loop = asyncio.get_running_loop()
        item = _Item(body, meta, loop.create_future())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(kind)
            group.timer = loop.call_later(self.wait_s, self._flush, key)
        group.items.append(item)
        if len(group.items) >= self.max_batch:
            self._flush(key)
        try:
            # Shielded: a client leaving must not cancel the batch the others wait on.
            return await asyncio.shield(item.future)
        finally:
            if not item.future.done():
                item.future.cancel()
                if group.items and self._groups.get(key) is group:
                    group.items.remove(item)  # not flushed yet: leave the batch

    def _flush(self, key: str) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        items = [i for i in group.items if not i.future.done()]
        if not items:
            return
        task = asyncio.create_task(self._run(group.kind, items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: Kind, items: list[_Item]) -> None:
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.size.labels(kind).observe(len(items))
        try:
            replies: list[Reply | BaseException]
            if len(items) == 1:
                replies = [await self._send(kind, items[0].body, items[0].meta)]
            else:
                replies = await self._send_merged(kind, items)
        except Exception as exc:  # every waiting client gets the upstream error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, reply in zip(items, replies, strict=True):
            if item.future.done():
                continue
            if isinstance(reply, BaseException):
                item.future.set_exception(reply)
            else:
                item.future.set_result(reply)
        if self._metrics is not None:
            self._metrics.seconds.labels(kind).observe(time.perf_counter() - started)

    async def _send_merged(self, kind: Kind, items: list[_Item]) -> list[Reply | BaseException]:
        name = PROMPT_FIELD[kind]
        prompts = [item.body[name] for item in items]
        self.merged_batches += 1
        self.merged_requests += len(items)
        reply = await self._send(kind, {**items[0].body, name: prompts}, items[0].meta)
        if reply.status == 200:
            try:
                parts = split_response(kind, json.loads(reply.body), prompts)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("merged %s response did not split (%s); resending singly", kind, exc)
            else:
                encoded = [json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode() for p in parts]
                return [Reply(200, body, _JSON) for body in encoded]
        elif reply.status not in (400, 422):
            return [reply] * len(items)
        # One bad prompt fails the whole list: ask again one by one so only it fails.
        singles = (self._send(kind, item.body, item.meta) for item in items)
        return list(await asyncio.gather(*singles, return_exceptions=True))
