"""Per-key limits: requests per minute and tokens per minute, as token buckets with a burst.

Each key has two buckets. The requests bucket holds up to ``rpm_burst`` requests and refills
at ``rpm`` a minute; a request takes one. The tokens bucket holds up to ``tpm_burst`` tokens
and refills at ``tpm`` a minute; a request is admitted while it is not empty, and the real
usage (prompt + completion tokens) is charged when the answer ends, so a long answer can put
the bucket in debt (at most one burst deep) and the key waits until it refills.

Two backends decide the same way: :class:`LocalLimiter` in-process, and :class:`RedisLimiter`
shared by every gateway replica through Redis. The Redis one runs one Lua script per request
(one round trip): the script refills, charges the usage this replica has recorded for the key
since its last call, and takes the request, atomically on the server with the server's clock.
Usage of keys that send nothing more is flushed in the background.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.auth import ApiKey

log = logging.getLogger(__name__)

FailureMode = Literal["open", "closed"]


@dataclass(frozen=True)
class Limits:
    """One key's limits; 0 means unlimited."""

    rpm: int = 0
    tpm: int = 0
    rpm_burst: int = 0
    tpm_burst: int = 0

    @property
    def active(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    @property
    def request_capacity(self) -> int:
        return self.rpm_burst or self.rpm

    @property
    def token_capacity(self) -> int:
        return self.tpm_burst or self.tpm


def limits_for(key: ApiKey, default: Limits) -> Limits:
    """The key's own limits where it sets them, the gateway's otherwise."""
    return Limits(
        rpm=key.rpm if key.rpm is not None else default.rpm,
        tpm=key.tpm if key.tpm is not None else default.tpm,
        rpm_burst=key.rpm_burst if key.rpm_burst is not None else default.rpm_burst,
        tpm_burst=key.tpm_burst if key.tpm_burst is not None else default.tpm_burst,
    )


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: admitted or not, and what is left (``None``: not limited)."""

    allowed: bool
    limits: Limits
    #: Bucket levels after the decision.
    requests_left: float | None
    tokens_left: float | None

    def retry_after_s(self) -> float:
        """Until the bucket that refused the request admits one again."""
        waits = [0.0]
        lim = self.limits
        if self.requests_left is not None and self.requests_left < 1:
            waits.append((1 - self.requests_left) * 60 / lim.rpm)
        if self.tokens_left is not None and self.tokens_left < 1:
            waits.append((1 - self.tokens_left) * 60 / lim.tpm)
        return max(waits)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` headers for the buckets that apply."""
        out: list[tuple[bytes, bytes]] = []
        lim = self.limits
        for name, level, rate, cap in (
            ("requests", self.requests_left, lim.rpm, lim.request_capacity),
            ("tokens", self.tokens_left, lim.tpm, lim.token_capacity),
        ):
            if level is None:
                continue
            reset = max(0.0, cap - level) * 60 / rate
            out += [
                (f"x-ratelimit-limit-{name}".encode(), str(rate).encode()),
                (f"x-ratelimit-remaining-{name}".encode(), str(max(0, math.floor(level))).encode()),
                (f"x-ratelimit-reset-{name}".encode(), duration(reset).encode()),
            ]
        return out

    def error(self) -> OpenAIError:
        wait = self.retry_after_s()
        which = "requests" if self.requests_left is not None and self.requests_left < 1 else "tokens"
        per_minute = self.limits.rpm if which == "requests" else self.limits.tpm
        return OpenAIError(
            429,
            f"Rate limit reached: {per_minute} {which} per minute for this API key. "
            f"Try again in {duration(wait)}.",
            code="rate_limit_exceeded",
            type_=which,
            headers={
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(math.ceil(wait * 1000)),
            },
        )


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    head = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{head}{secs}s"


def refill(level: float, elapsed_s: float, per_minute: int, capacity: int) -> float:
    return min(float(capacity), level + max(0.0, elapsed_s) * per_minute / 60)


def decide(
    limits: Limits, requests: float | None, tokens: float | None, admit: bool = True
) -> tuple[bool, float | None, float | None]:
    """Take one request from refilled levels: (allowed, requests left, tokens left)."""
    allowed = True
    if admit:
        if requests is not None and requests < 1:
            allowed = False
        if tokens is not None and tokens < 1:
            allowed = False
        if allowed and requests is not None:
            requests -= 1
    return allowed, requests, tokens


class Limiter(Protocol):
    async def admit(self, key_id: str, limits: Limits) -> Decision: ...

    def charge(self, key_id: str, limits: Limits, tokens: int) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "vgate_ratelimit_decisions",
            "Rate-limit decisions: allowed, limited, or failed_open / failed_closed while Redis is unreachable",
            ["result"],
            registry=registry,
        )
        self.limited = Counter(
            "vgate_ratelimit_limited",
            "Requests refused with 429, by API key id",
            ["key_id"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "vgate_ratelimit_redis_up",
            "1 while the shared rate limiter's Redis answers, 0 while the failure mode applies",
            registry=registry,
        )
        self.tokens_charged = Counter(
            "vgate_ratelimit_tokens_charged", "Tokens charged to API keys' buckets", registry=registry
        )

        self.admit_seconds = Histogram(
            "vgate_ratelimit_admit_seconds",
            "Time one rate-limit decision takes (for Redis: the round trip and the script)",
            buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=registry,
        )

    def count(self, key_id: str, allowed: bool) -> None:
        self.decisions.labels("allowed" if allowed else "limited").inc()
        if not allowed:
            self.limited.labels(key_id).inc()


class LocalLimiter:
    """Buckets in this process; with several replicas each enforces the limit on its own."""

    def __init__(self, metrics: RateLimitMetrics, clock: object = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        # key id -> [requests level, tokens level, stamp]; bounded by the configured keys.
        self._buckets: dict[str, list[float]] = {}

    def _levels(self, key_id: str, limits: Limits) -> list[float]:
        now = self._clock()  # type: ignore[operator]
        state = self._buckets.get(key_id)
        if state is None:
            state = self._buckets[key_id] = [limits.request_capacity, limits.token_capacity, now]
        elapsed = now - state[2]
        state[0] = refill(state[0], elapsed, limits.rpm, limits.request_capacity)
        state[1] = refill(state[1], elapsed, limits.tpm, limits.token_capacity)
        state[2] = now
        return state

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        with self._metrics.admit_seconds.time():
            return self._admit(key_id, limits)

    def _admit(self, key_id: str, limits: Limits) -> Decision:
        state = self._levels(key_id, limits)
        allowed, requests, tokens = decide(
            limits, state[0] if limits.rpm else None, state[1] if limits.tpm else None
        )
        if requests is not None:
            state[0] = requests
        self._metrics.count(key_id, allowed)
        return Decision(allowed, limits, requests, tokens)

    def charge(self, key_id: str, limits: Limits, tokens: int) -> None:
        if not limits.tpm or tokens <= 0:
            return
        state = self._levels(key_id, limits)
        state[1] = max(state[1] - tokens, -float(limits.token_capacity))
        self._metrics.tokens_charged.inc(tokens)

    async def run(self) -> None:
        return None

    async def close(self) -> None:
        return None


# KEYS: requests bucket, tokens bucket. ARGV: rpm, requests capacity, tpm, tokens capacity,
# tokens to charge, 1 to take a request (0: only charge). Levels go back as strings: Redis
# truncates Lua numbers to integers. A limit of 0 leaves its bucket alone.
_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local function level(key, per_minute, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * per_minute / 60)
end
local function store(key, lvl, per_minute, cap)
  redis.call('HSET', key, 'l', string.format('%.17g', lvl), 't', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((cap - lvl) * 60000 / per_minute) + 1000)
end
local rpm, rcap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm, tcap = tonumber(ARGV[3]), tonumber(ARGV[4])
local charge, admit = tonumber(ARGV[5]), ARGV[6] == '1'
local req, tok = nil, nil
if rpm > 0 then req = level(KEYS[1], rpm, rcap) end
if tpm > 0 then tok = math.max(level(KEYS[2], tpm, tcap) - charge, -tcap) end
local allowed = 1
if admit then
  if req and req < 1 then allowed = 0 end
  if tok and tok < 1 then allowed = 0 end
  if allowed == 1 and req then req = req - 1 end
  if req then store(KEYS[1], req, rpm, rcap) end
end
if tok then store(KEYS[2], tok, tpm, tcap) end
return {allowed, req and string.format('%.17g', req) or '', tok and string.format('%.17g', tok) or ''}
"""


class RedisLimiter:
    """Buckets in Redis, shared by every replica; ``failure_mode`` applies while Redis is away."""

    def __init__(
        self,
        url: str,
        metrics: RateLimitMetrics,
        *,
        failure_mode: FailureMode,
        prefix: str,
        timeout_s: float,
        retry_after_s: int,
        flush_interval_s: float = 1.0,
    ) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._script = self._redis.register_script(_SCRIPT)
        self._errors = (redis.RedisError, OSError, TimeoutError)
        self._metrics = metrics
        self._mode = failure_mode
        self._prefix = prefix
        self._flush_interval_s = flush_interval_s
        self._retry_after_s = retry_after_s
        #: Usage recorded here and not yet sent: key id -> (limits, tokens).
        self._pending: dict[str, tuple[Limits, int]] = {}
        #: While Redis is failing, it is asked again only after this (monotonic) time.
        self._down_until = 0.0
        metrics.redis_up.set(1)

    def _keys(self, key_id: str) -> list[str]:
        # One hash tag: both buckets land on the same Redis Cluster slot.
        return [f"{self._prefix}rl:{{{key_id}}}:requests", f"{self._prefix}rl:{{{key_id}}}:tokens"]

    def _args(self, limits: Limits, charge: int, admit: bool) -> list[int]:
        return [
            limits.rpm,
            limits.request_capacity,
            limits.tpm,
            limits.token_capacity,
            charge,
            1 if admit else 0,
        ]

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        with self._metrics.admit_seconds.time():
            return await self._admit(key_id, limits)

    async def _admit(self, key_id: str, limits: Limits) -> Decision:
        if time.monotonic() < self._down_until:
            return self._degraded(limits)
        _, charge = self._pending.pop(key_id, (limits, 0))
        try:
            allowed, requests, tokens = await self._script(
                keys=self._keys(key_id), args=self._args(limits, charge, admit=True)
            )
        except self._errors as exc:
            self._record(key_id, limits, charge)
            self._failed(exc)
            return self._degraded(limits)
        self._up()
        decision = Decision(bool(int(allowed)), limits, _level(requests), _level(tokens))
        self._metrics.count(key_id, decision.allowed)
        return decision

    def charge(self, key_id: str, limits: Limits, tokens: int) -> None:
        if limits.tpm and tokens > 0:
            self._record(key_id, limits, tokens)
            self._metrics.tokens_charged.inc(tokens)

    def _record(self, key_id: str, limits: Limits, tokens: int) -> None:
        if tokens > 0:
            _, before = self._pending.get(key_id, (limits, 0))
            self._pending[key_id] = (limits, before + tokens)

    async def flush(self) -> None:
        """Send the usage of keys that made no request since it was recorded (one pipeline)."""
        if not self._pending or time.monotonic() < self._down_until:
            return
        pending, self._pending = self._pending, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id, (limits, tokens) in pending.items():
                    await self._script(
                        keys=self._keys(key_id), args=self._args(limits, tokens, admit=False), client=pipe
                    )
                await pipe.execute()
        except self._errors as exc:  # keep the usage for the next try
            for key_id, (limits, tokens) in pending.items():
                self._record(key_id, limits, tokens)
            self._failed(exc)
            return
        self._up()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await self._redis.aclose()

    def _degraded(self, limits: Limits) -> Decision:
        if self._mode == "closed":
            self._metrics.decisions.labels("failed_closed").inc()
            raise OpenAIError(
                503,
                "The rate limiter is unavailable, so requests are refused for now. Retry shortly.",
                code="rate_limiter_unavailable",
                type_="service_unavailable_error",
                headers={"retry-after": str(self._retry_after_s)},
            )
        self._metrics.decisions.labels("failed_open").inc()
        return Decision(True, limits, None, None)

    def _failed(self, exc: BaseException) -> None:
        if self._down_until == 0.0:
            log.warning(
                "rate limiter: Redis unreachable (%s); failing %s until it answers",
                type(exc).__name__,
                self._mode,
            )
        self._metrics.redis_up.set(0)
        self._down_until = time.monotonic() + 1.0

    def _up(self) -> None:
        if self._down_until:
            log.warning("rate limiter: Redis answers again; limits are shared again")
        self._down_until = 0.0
        self._metrics.redis_up.set(1)


def _level(value: str) -> float | None:
    return float(value) if value != "" else None
