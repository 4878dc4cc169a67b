"""Continuous batching: one scheduler loop per app, stepping a bounded running batch.

Each engine step follows vLLM V1's scheduler: (1) the running sequences, in the order they were
admitted, get the KV blocks their next token needs (one more block whenever a decode crosses a
block boundary); when the pool has none, a running sequence is *preempted* (its blocks freed, it
goes back to waiting and is recomputed when readmitted; with ``--scheduling-policy priority`` the
least urgent one, latest among equals, else the last admitted), and they share
``max_num_batched_tokens`` of chunked prefill in that order; (2) only when nothing was preempted,
waiting sequences are admitted in the policy's order (arrival, or ``(priority, arrival)``) while
fewer than ``max_num_seqs`` run, the token budget lasts and the KV pool holds their prompt, looking
their prompt blocks up in the prefix cache; (3) every sequence whose prefill is done gives one more
output token. A waiting sequence never preempts a running one, under either policy (vLLM V1). The
step lasts

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
from dataclasses import dataclass, field

from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.prefix_cache import Allocation, PrefixCache, block_hashes
from vgate_worker.sim.settings import SimSettings
from vgate_worker.sim.waiting import WaitingQueue, preemption_victim

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
    #: vLLM's request ``priority``: lower is served first; only the priority policy reads it.
    priority: int = 0
    #: Times it was preempted (its KV freed, to be recomputed on readmission).
    preemptions: int = 0
    #: Its prefill finished in the step being run.
    prefilled: bool = False

    @property
    def context(self) -> int:
        """Tokens whose KV the sequence needs: its prompt and what it has generated."""
        return len(self.prompt_ids) + self.generated


@dataclass
class _StepPlan:
    """What one step computes: the token budget left, prefill work, and who emits a token."""

    budget: int
    #: Prompt tokens one request's prefill may take in this step (0: no cap).
    cap: int = 0
    prefill: int = 0
    attended: float = 0.0
    kv_tokens: int = 0
    emitting: list[SimSequence] = field(default_factory=list)


class Engine:
    """The scheduler: a waiting queue (fcfs or priority), a running batch, and a KV block pool."""

    def __init__(self, settings: SimSettings, metrics: SimMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = PrefixCache(settings.kv_capacity_tokens, settings.block_size)
        # vLLM's own start-up line, so tools that read it (vgate tune's calibration) read ours too.
        log.info("KV cache size: %s tokens", f"{settings.kv_capacity_tokens:,}")
        self.waiting: WaitingQueue[SimSequence] = WaitingQueue(settings.scheduling_policy)
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
        priority: int = 0,
    ) -> SimSequence:
        """Queue a sequence; its tokens are reported on ``sink`` as they are generated.

        ``finish_reason`` only labels ``vllm:request_success_total`` when the sequence completes;
        ``priority`` orders it only under the priority policy (fcfs ignores it, as vLLM does).
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
        seq = SimSequence(
            key, prompt_ids, hashes, max(1, output_len), sink, finish_reason, lora=lora, priority=priority
        )
        self.waiting.add(seq)
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
            duration, emitting = self._plan_step()
            if not emitting and duration == 0:
                # An idle pool fits any valid request, so this is a bug: fail loudly (the
                # done-callback ends every sequence and /health turns 503) rather than hang.
                raise RuntimeError(f"the scheduler cannot run any of {len(self.waiting)} waiting sequences")
            clock = max(clock + duration / self.settings.speed, loop.time() - _MAX_LAG_S)
            await asyncio.sleep(max(0.0, clock - loop.time()))
            self._emit(emitting)
            self._publish()

    def _plan_step(self) -> tuple[float, list[SimSequence]]:
        """Schedule one step as vLLM V1 does: running sequences first, then waiting ones."""
        s = self.settings
        while True:
            # vLLM caps a long prefill's chunk only when another request could use the budget.
            crowded = len(self.running) + len(self.waiting) > 1
            cap = s.long_prefill_token_threshold if crowded and s.enable_chunked_prefill else 0
            plan = _StepPlan(budget=s.max_num_batched_tokens, cap=cap)
            scheduled, preempted = self._reserve_running()
            for seq in scheduled:
                self._plan_sequence(plan, seq)
            # vLLM admits nothing in a step that had to preempt: the pool is short already.
            while not preempted and plan.budget > 0 and (admitted := self._admit_next()) is not None:
                self._plan_sequence(plan, admitted)
            if plan.emitting or plan.prefill or not preempted:
                break  # an empty step that only preempted is planned again at once (no time passes)
        duration = step_duration(s, plan.prefill, len(plan.emitting), plan.attended, plan.kv_tokens)
        return duration, plan.emitting

    def _reserve_running(self) -> tuple[list[SimSequence], bool]:
        """Give each running sequence, in admission order, the blocks its next token needs.

        When the pool is out of blocks, preempt the policy's victim and try again; if the victim is
        the sequence itself, it and those after it wait for the next step (vLLM stops there too).
        """
        bs = self.settings.block_size
        scheduled: list[SimSequence] = []
        preempted = False
        index = 0
        while index < len(self.running):
            seq = self.running[index]
            assert seq.allocation is not None  # every running sequence holds its blocks
            short = math.ceil(seq.context / bs) - seq.allocation.blocks
            grown = self.cache.extend(seq.allocation, short) if short > 0 else seq.allocation
            if grown is not None:
                seq.allocation = grown
                scheduled.append(seq)
                index += 1
                continue
            victim = preemption_victim(self.running, self.settings.scheduling_policy)
            self._preempt(victim)
            preempted = True
            if victim is seq:
                break
            if victim in scheduled:
                scheduled.remove(victim)
                index -= 1
        return scheduled, preempted

    def _preempt(self, seq: SimSequence) -> None:
        """Free a running sequence's blocks and send it back to waiting, to be recomputed later.

        What it already streamed stays sent: on readmission it prefills its prompt and output so
        far again, then goes on with the next token.
        """
        self.running.remove(seq)
        self._release(seq)
        seq.prefill_left = 0
        seq.preemptions += 1
        self.metrics.preemptions.inc()
        self.waiting.prepend(seq)

    def _admit_next(self) -> SimSequence | None:
        """Admit the waiting queue's head when a slot and its blocks are free (else None).

        A head that does not fit blocks those behind it, as in vLLM (no skipping ahead).
        """
        if not self.waiting or len(self.running) >= self.settings.max_num_seqs:
            return None
        seq = self.waiting.peek()
        bs = self.settings.block_size
        anonymous = math.ceil(seq.context / bs) - len(seq.hashes)
        if not self.cache.can_allocate(seq.hashes, anonymous):
            return None
        self.waiting.pop()
        # vLLM always recomputes the prompt's last token, so a full hit is one block short.
        max_hit = (len(seq.prompt_ids) - 1) // bs
        seq.allocation = self.cache.allocate(seq.hashes, anonymous, max_hit)
        cached = seq.allocation.hit_blocks * bs
        seq.prefill_left = seq.context - cached
        if seq.preemptions == 0:
            seq.cached_tokens = cached
            self.metrics.queue_time.observe(time.monotonic() - seq.arrival)
            self.metrics.prefix_cache_queries.inc(len(seq.prompt_ids))
            self.metrics.prefix_cache_hits.inc(cached)
        self.running.append(seq)
        return seq

    def _plan_sequence(self, plan: _StepPlan, seq: SimSequence) -> None:
        """Its share of the step: one decode token, or a prefill chunk out of the budget left."""
        if seq.prefill_left == 0:
            plan.emitting.append(seq)
            plan.kv_tokens += seq.context
            plan.budget -= 1
            return
        budget = plan.budget
        if budget >= seq.prefill_left or (budget > 0 and self.settings.enable_chunked_prefill):
            # Without chunked prefill a prompt is prefilled whole, in a step with room for it.
            chunk = min(budget, seq.prefill_left, plan.cap or seq.prefill_left)
            plan.attended += chunk_attention(seq.context - seq.prefill_left, chunk)
            seq.prefill_left -= chunk
            plan.budget -= chunk
            plan.prefill += chunk
            if seq.prefill_left == 0:
                plan.emitting.append(seq)  # the next token is sampled at the end of its prefill
                seq.prefilled = True

    def _emit(self, emitting: list[SimSequence]) -> None:
        now = time.monotonic()
        for seq in emitting:
            if seq.done:
                continue  # cancelled while the step ran
            if seq.prefilled and seq.allocation is not None:
                # Its prefill ran in this step: its blocks are hits for others from now on.
                self.cache.mark_computed(seq.allocation)
            seq.prefilled = False
            if seq.generated == 0:
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
