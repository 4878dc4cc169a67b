"""Continuous batching: one scheduler loop per app, stepping a bounded running batch.

Each engine step (1) admits waiting sequences in FIFO order while fewer than
``max_num_seqs`` run and the KV pool has room, looking their prompt blocks up in the
prefix cache; (2) spends up to ``max_num_batched_tokens`` of prefill on the uncached
prompt tokens of admitted sequences (chunked prefill); (3) gives every sequence that
has finished its prefill one more output token. The step lasts

    prefill_tokens / prefill_tokens_per_s + prefill_attention_s * attended
    + decode_step_s * (1 + decode_batch_slope * (b - 1)) + decode_kv_s * kv_tokens

for ``b`` sequences emitting a token, divided by ``speed``: ``attended`` sums, over the step's
prefill chunks, chunk x (context already computed + chunk / 2), the pairs its attention scores
(quadratic in a prompt's length); ``kv_tokens`` sums the contexts of the sequences decoding. Both
attention terms are 0 by default (a GPU); calibrated to vLLM's CPU backend they are not. Steps are paced against a
monotonic clock, so oversleeping in one step is made up in the next and throughput
stays right even when single sleeps are coarse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.prefix_cache import Allocation, PrefixCache, block_hashes
from vgate_worker.sim.settings import SimSettings

log = logging.getLogger(__name__)

# Largest lag the pacing clock may accumulate before it forgets it (seconds of real time).
_MAX_LAG_S = 0.05

# (key, index of the token just generated) or (key, None) when the sequence ends.
TokenEvent = tuple[int, int | None]


def step_duration(
    settings: SimSettings, prefill_tokens: int, batch: int, attended: float = 0.0, kv_tokens: int = 0
) -> float:
    """Simulated seconds of one engine step (before ``speed``): prefill work plus one decode pass."""
    duration = prefill_tokens / settings.prefill_tokens_per_s + settings.prefill_attention_s * attended
    if batch > 0:
        duration += settings.decode_step_s * (1 + settings.decode_batch_slope * (batch - 1))
        duration += settings.decode_kv_s * kv_tokens
    return duration


def chunk_attention(done: int, chunk: int) -> float:
    """Query x key pairs a prefill chunk scores: each of its tokens attends to all before it."""
    return chunk * (done + chunk / 2)


@dataclass(eq=False)
class SimSequence:
    """One sequence in the engine: a prompt and the number of tokens it will generate."""

    key: int
    prompt_ids: list[int]
    hashes: list[int]
    output_len: int
    sink: asyncio.Queue[TokenEvent]
    finish_reason: str = "stop"
    arrival: float = field(default_factory=time.monotonic)
    allocation: Allocation | None = None
    cached_tokens: int = 0
    prefill_left: int = 0
    generated: int = 0
    done: bool = False
    #: The LoRA adapter the sequence runs with, if any.
    lora: str | None = None


class Engine:
    """The scheduler: a FIFO waiting queue, a running batch, and a KV block pool."""

    def __init__(self, settings: SimSettings, metrics: SimMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = PrefixCache(settings.kv_capacity_tokens, settings.block_size)
        # vLLM's own start-up line, so tools that read it (vgate tune's calibration) read ours too.
        log.info("KV cache size: %s tokens", f"{settings.kv_capacity_tokens:,}")
        self.waiting: deque[SimSequence] = deque()
        self.running: list[SimSequence] = []
        #: Embedding requests being computed (outside the decode batch).
        self.pooling = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lora_labels: tuple[str, str, str] | None = None

    async def start(self) -> None:
        """Start the scheduler loop (call from the app's lifespan)."""
        self._task = asyncio.create_task(self._loop(), name="vgate-sim-engine")
        self._task.add_done_callback(self._loop_exited)

    def _loop_exited(self, task: asyncio.Task[None]) -> None:
        # A crashed scheduler must not leave handlers waiting forever: end every sequence.
        if task.cancelled():
            return
        log.error("scheduler loop stopped", exc_info=task.exception())
        self._end_all()

    async def stop(self) -> None:
        """Stop the loop and end every pending sequence so no handler waits forever."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None  # a crashed loop was already reported by _loop_exited
        self._end_all()

    def _end_all(self) -> None:
        for seq in [*self.waiting, *self.running]:
            self._finish(seq)
        self.waiting.clear()
        self.running.clear()

    @property
    def alive(self) -> bool:
        """Whether the scheduler loop is running (what ``/health`` reports)."""
        return self._task is not None and not self._task.done()

    def submit(
        self,
        key: int,
        prompt_ids: list[int],
        output_len: int,
        sink: asyncio.Queue[TokenEvent],
        finish_reason: str = "stop",
        lora: str | None = None,
    ) -> SimSequence:
        """Queue a sequence; its tokens are reported on ``sink`` as they are generated.

        ``finish_reason`` only labels ``vllm:request_success_total`` when the sequence completes.
        """
        if not self.alive:
            raise RuntimeError("the simulated engine is not running")
        # Without prefix caching no block is shared: every one is the sequence's own; an adapter's
        # KV blocks are its own (vLLM's block hash includes the LoRA id).
        hashes = (
            block_hashes(prompt_ids, self.settings.block_size, salt=lora)
            if self.settings.enable_prefix_caching
            else []
        )
        seq = SimSequence(key, prompt_ids, hashes, max(1, output_len), sink, finish_reason, lora=lora)
        self.waiting.append(seq)
        self._publish()
        self._wake.set()
        return seq

    def cancel(self, seq: SimSequence) -> None:
        """Drop a sequence whose client went away, freeing its slot and KV blocks at once."""
        if seq.done:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
        self._release(seq)
        seq.done = True
        self._publish()
        self._wake.set()

    async def pause_for_prefill(self, tokens: int) -> None:
        """Wait as long as prefilling ``tokens`` takes, for requests outside the batch (embeddings).

        Counted as a running request meanwhile, as vLLM counts a pooling request; cancelling
        the wait (the client left) ends it.
        """
        self.pooling += 1
        self._publish()
        try:
            seconds = step_duration(self.settings, tokens, 0, chunk_attention(0, tokens))
            await asyncio.sleep(seconds / self.settings.speed)
        finally:
            self.pooling -= 1
            self._publish()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
            self._admit()
            duration, emitting = self._plan_step()
            if not emitting and duration == 0:
                # An idle pool fits any valid request, so this is a bug: fail loudly (the
                # done-callback ends every sequence and /health turns 503) rather than hang.
                raise RuntimeError(f"the scheduler cannot run any of {len(self.waiting)} waiting sequences")
            clock = max(clock + duration / self.settings.speed, loop.time() - _MAX_LAG_S)
            await asyncio.sleep(max(0.0, clock - loop.time()))
            self._emit(emitting)
            self._publish()

    def _admit(self) -> None:
        bs = self.settings.block_size
        while self.waiting and len(self.running) < self.settings.max_num_seqs:
            seq = self.waiting[0]
            hashes = seq.hashes
            total_blocks = math.ceil((len(seq.prompt_ids) + seq.output_len) / bs)
            anonymous = total_blocks - len(hashes)
            if not self.cache.can_allocate(hashes, anonymous):
                break  # head-of-line blocking, as vLLM's FCFS scheduler does
            self.waiting.popleft()
            # vLLM always recomputes the prompt's last token, so a full hit is one block short.
            max_hit = (len(seq.prompt_ids) - 1) // bs
            seq.allocation = self.cache.allocate(hashes, anonymous, max_hit)
            seq.cached_tokens = seq.allocation.hit_blocks * bs
            seq.prefill_left = len(seq.prompt_ids) - seq.cached_tokens
            self.metrics.prefix_cache_queries.inc(len(seq.prompt_ids))
            self.metrics.prefix_cache_hits.inc(seq.cached_tokens)
            self.running.append(seq)

    def _plan_step(self) -> tuple[float, list[SimSequence]]:
        s = self.settings
        budget = s.max_num_batched_tokens
        prefill = kv_tokens = 0
        attended = 0.0
        emitting: list[SimSequence] = []
        for seq in self.running:
            if seq.prefill_left == 0:
                emitting.append(seq)
                kv_tokens += len(seq.prompt_ids) + seq.generated
            elif budget >= seq.prefill_left or (budget > 0 and s.enable_chunked_prefill):
                # Without chunked prefill a prompt is prefilled whole, in a step with room for it.
                chunk = min(budget, seq.prefill_left)
                attended += chunk_attention(len(seq.prompt_ids) - seq.prefill_left, chunk)
                seq.prefill_left -= chunk
                budget -= chunk
                prefill += chunk
                if seq.prefill_left == 0:
                    emitting.append(seq)  # the first token is sampled at the end of its prefill
        return step_duration(s, prefill, len(emitting), attended, kv_tokens), emitting

    def _emit(self, emitting: list[SimSequence]) -> None:
        now = time.monotonic()
        for seq in emitting:
            if seq.done:
                continue  # cancelled while the step ran
            if seq.generated == 0:
                if seq.allocation is not None:
                    self.cache.mark_computed(seq.allocation)
                self.metrics.time_to_first_token.observe(now - seq.arrival)
                self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            seq.sink.put_nowait((seq.key, seq.generated))
            seq.generated += 1
            self.metrics.generation_tokens.inc()
            if seq.generated >= seq.output_len:
                self.running.remove(seq)
                self.metrics.e2e_latency.observe(now - seq.arrival)
                self.metrics.request_success.labels(self.settings.model_name, seq.finish_reason).inc()
                self._finish(seq)

    def _finish(self, seq: SimSequence) -> None:
        if seq.done:
            return
        self._release(seq)
        seq.done = True
        seq.sink.put_nowait((seq.key, None))

    def _release(self, seq: SimSequence) -> None:
        if seq.allocation is not None:
            self.cache.free(seq.allocation)
            seq.allocation = None

    def _publish(self) -> None:
        self.metrics.num_requests_running.set(len(self.running) + self.pooling)
        self.metrics.num_requests_waiting.set(len(self.waiting))
        self.metrics.kv_cache_usage.set(self.cache.usage())
        if self.settings.enable_lora:
            self._publish_lora()

    def _publish_lora(self) -> None:
        """``vllm:lora_requests_info``, as vLLM sets it: the adapters in use as labels, the time as value."""
        running = sorted({s.lora for s in self.running if s.lora})
        waiting = sorted({s.lora for s in self.waiting if s.lora})
        labels = (str(self.settings.max_loras), ",".join(running), ",".join(waiting))
        if labels != self._lora_labels:
            self._lora_labels = labels
            self.metrics.lora_requests_info.labels(*labels).set_to_current_time()
