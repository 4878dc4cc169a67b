"""One request's trip through the engine: validation of the budget, waiting, streaming.

Chat and text completions differ only in how a choice is rendered; a ``Dialect`` holds
those differences and everything else (n, several prompts, usage, cancellation on
client disconnect, Server-Sent Events framing) lives here once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from vgate_worker.sim.content import Reply
from vgate_worker.sim.engine import Engine, SimSequence, TokenEvent
from vgate_worker.sim.protocol import ApiError


def check_context(prompt_len: int, max_tokens: int | None, max_model_len: int) -> int:
    """The output budget, or vLLM's context-length 400 when the request cannot fit."""
    if max_tokens is None:
        if prompt_len >= max_model_len:
            raise ApiError(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_len} tokens in the messages, Please reduce the length of the messages.",
                param="messages",
            )
        return max_model_len - prompt_len
    if prompt_len + max_tokens > max_model_len:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens",
        )
    return max_tokens


@dataclass(frozen=True)
class Choice:
    """One output sequence: its OpenAI ``index``, the prompt it continues, and its text."""

    index: int
    prompt: int
    reply: Reply


@dataclass(frozen=True)
class Dialect:
    """How one API renders choices: chat (``delta``/``message``) or text completions."""

    object_name: str
    chunk_object: str
    id_prefix: str
    render_choice: Callable[[Choice], dict[str, Any]]
    open_delta: Callable[[int], dict[str, Any] | None]
    delta: Callable[[int, str, str | None, str | None], dict[str, Any]]


@dataclass
class Generation:
    """The sequences of one request, submitted together and read from one queue."""

    engine: Engine
    model: str
    prompts: list[list[int]]
    choices: list[Choice]
    details: bool = False
    #: Return each choice's prompt and output token ids (vLLM's ``return_token_ids``).
    token_ids: bool = False
    id: str = ""
    #: The LoRA adapter the request names, if any (``model`` is then the adapter's name).
    lora: str | None = None
    #: vLLM's request priority (lower first), read only by the priority scheduling policy.
    priority: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    sink: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    seqs: list[SimSequence] = field(default_factory=list)
    prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        # Each prompt counted once, however many choices continue it.
        self.prompt_tokens = sum(len(p) for p in self.prompts)

    def start(self) -> None:
        """Submit every choice to the engine."""
        for c in self.choices:
            prompt = self.prompts[c.prompt]
            seq = self.engine.submit(
                c.index,
                prompt,
                c.reply.tokens,
                self.sink,
                c.reply.finish_reason,
                lora=self.lora,
                priority=self.priority,
            )
            self.seqs.append(seq)

    def cancel(self) -> None:
        """Free every slot still held (the client left or the response is complete)."""
        for seq in self.seqs:
            self.engine.cancel(seq)

    def counts(self, completion: int | None = None) -> dict[str, Any]:
        """Token counts: every choice's output, or ``completion`` tokens so far.

        Alone, this is a streamed chunk's running usage (``continuous_usage_stats``): vLLM
        builds it from the three counts and never adds prompt-token details to it.
        """
        if completion is None:
            completion = sum(c.reply.tokens for c in self.choices)
        prompt = self.prompt_tokens
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}

    def usage(self) -> dict[str, Any]:
        """The whole answer's usage as vLLM writes it in a response body.

        vLLM dumps the body with every field, so ``prompt_tokens_details`` is there, null
        unless ``--enable-prompt-tokens-details`` is on.
        """
        usage = self.counts()
        usage["prompt_tokens_details"] = self._details()
        return usage

    def stream_usage(self) -> dict[str, Any]:
        """The usage of a stream's last chunk: vLLM drops null fields there (OpenAI's schema has
        no null ``prompt_tokens_details``), so the key is left out unless details are on."""
        usage = self.counts()
        details = self._details()
        if details is not None:
            usage["prompt_tokens_details"] = details
        return usage

    def _details(self) -> dict[str, int] | None:
        if not self.details:
            return None
        first: dict[int, int] = {}
        for c, seq in zip(self.choices, self.seqs, strict=True):
            first.setdefault(c.prompt, seq.cached_tokens)
        return {"cached_tokens": sum(first.values())}

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Token events until every sequence has finished."""
        remaining = len(self.seqs)
        while remaining:
            key, index = await self.sink.get()
            if index is None:
                remaining -= 1
            yield key, index


async def complete(gen: Generation, dialect: Dialect, request: Request) -> dict[str, Any] | None:
    """Run to the end and build the whole response; ``None`` if the client disconnected first."""
    gen.start()
    drain = asyncio.ensure_future(_drain(gen))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({drain, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not drain.done():
            drain.cancel()
            gen.cancel()
    if not drain.done() or drain.cancelled():
        return None
    choices = [dialect.render_choice(c) for c in gen.choices]
    if gen.token_ids:  # vLLM's return_token_ids: each choice's prompt and output token ids
        for rendered, c in zip(choices, gen.choices, strict=True):
            rendered["prompt_token_ids"] = gen.prompts[c.prompt]
            rendered["token_ids"] = c.reply.token_ids()
    return {
        "id": gen.id,
        "object": dialect.object_name,
        "created": gen.created,
        "model": gen.model,
        "choices": choices,
        "usage": gen.usage(),
    }


async def unless_disconnected(request: Request, work: Awaitable[None]) -> bool:
    """Run ``work`` to the end (True), or cancel it when the client disconnects first (False)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        return False
    task.result()
    return True


async def _drain(gen: Generation) -> None:
    async for _ in gen.events():
        pass


async def _disconnected(request: Request) -> None:
    # After the body is read, the server's next receive() is the disconnect message.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream(
    gen: Generation, dialect: Dialect, include_usage: bool, continuous: bool
) -> AsyncIterator[str]:
    """Server-Sent Events shaped like vLLM's; cancelling the iterator frees the slots."""
    by_index = {c.index: c for c in gen.choices}

    # The envelope is the same for every chunk: serialise it once (this is the per-token hot path).
    envelope = {"id": gen.id, "object": dialect.chunk_object, "created": gen.created, "model": gen.model}
    head = "data: " + json.dumps(envelope, separators=(",", ":"))[:-1] + ',"choices":'

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        tail = "" if usage is None else ',"usage":' + json.dumps(usage, separators=(",", ":"))
        return head + json.dumps(choices, separators=(",", ":")) + tail + "}\n\n"

    gen.start()
    emitted = 0
    try:
        async for key, index in gen.events():
            if index is None:
                continue
            # Like vLLM, the role chunk goes out with the first token, so the first byte marks TTFT.
            opening = dialect.open_delta(key) if index == 0 else None
            if opening is not None:
                yield chunk([opening])
            choice = by_index[key]
            deltas = choice.reply.deltas
            text = deltas[index] if index < len(deltas) else ""
            last = index + 1 >= choice.reply.tokens
            finish = choice.reply.finish_reason if last else None
            stop = choice.reply.stop_reason if last else None
            emitted += 1
            # Usage so far, as vLLM's continuous_usage_stats reports it.
            usage = gen.counts(completion=emitted) if continuous else None
            yield chunk([dialect.delta(key, text, finish, stop)], usage)
        if include_usage:
            yield chunk([], gen.stream_usage())
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()


def new_id(prefix: str) -> str:
    """A vLLM-style response id."""
    return f"{prefix}-{uuid.uuid4().hex}"
