"""Forwarding to workers: pick, connect (retrying once elsewhere), relay.

The client's body bytes go upstream untouched and the worker's bytes come back
untouched: a non-streaming answer as one body, a stream event by event as each
arrives. Failures are OpenAI errors — a status before the first byte, one SSE
error event after it — and the upstream connection is always closed when the
client goes away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import orjson

from vgate_gateway.errors import OpenAIError, unavailable
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import Answer, Request, Usage, with_engine_priority
from vgate_gateway.sse import DONE, EventFramer, error_event, usage_in
from vgate_gateway.upstream.client import (
    StaleConnection,
    Unreachable,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from vgate_gateway.upstream.dispatch import Dispatcher
from vgate_gateway.upstream.pool import Upstream, UpstreamPool

log = logging.getLogger(__name__)


class Proxy:
    def __init__(
        self,
        client: UpstreamClient,
        dispatch: Dispatcher,
        pool: UpstreamPool,
        metrics: Metrics,
        *,
        stream_idle_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        self._client = client
        self._dispatch = dispatch
        self._pool = pool
        self._metrics = metrics
        self._idle = stream_idle_timeout_s
        self._retry_after = retry_after_s

    async def forward(self, req: Request) -> Answer:
        """Answer ``req`` from a worker (a :data:`~vgate_gateway.protocol.Handler`)."""
        started = time.monotonic()
        up, resp = await self._open(req)
        if req.stream and resp.status == 200:
            usage = Usage()
            return Answer.stream(self._relay(up, resp, req, started, usage), usage)
        try:
            body = await resp.read()
        except UpstreamError as exc:
            self._failed(up, "stream_error")
            raise OpenAIError(502, f"The model worker broke off its answer: {exc}") from None
        finally:
            await resp.release()
            self._dispatch.release(req, up)
        self._metrics.count_upstream(up.url, resp.status)
        if resp.status >= 500:
            self._pool.failed(up)
        else:
            self._pool.passed(up)
        if resp.status != 200:
            return Answer.error(relayed_error(resp.status, body))
        answer = Answer(200, body, headers={"content-type": resp.content_type})
        if answer.usage.completion_tokens:
            self._metrics.per_model(req.model)[2].inc(answer.usage.completion_tokens)
        self._dispatch.served(req, answer.usage)
        return answer

    async def _open(self, req: Request) -> tuple[Upstream, UpstreamResponse]:
        """Send the request; a worker that can't be reached is tried elsewhere once.

        A pooled connection the worker closed before answering is retried once on a fresh
        one: nothing has reached the client yet, and it is no sign the worker is unwell.
        """
        tried: list[str] = []
        stale_retried = False
        while True:
            up = self._dispatch.take_free(req, tried) or await self._dispatch.acquire(req, tried)
            body = req.body
            if req.engine_priority is not None:  # set at dispatch; the keys of cache and dedup never see it
                body = with_engine_priority(body, req.payload, req.engine_priority)
            try:
                return up, await self._client.post(
                    up.url + req.kind.value, body, req.headers, stream=req.stream
                )
            except StaleConnection:
                self._dispatch.release(req, up)
                if stale_retried:
                    raise self._broken(up, "stale connection twice") from None
                stale_retried = True
                log.debug("worker %s closed a pooled connection; sending again", up.url)
            except Unreachable as exc:
                self._dispatch.release(req, up)
                self._failed(up, "connect_error")
                log.warning("worker %s unreachable (%s), attempt %d", up.url, exc, len(tried) + 1)
                tried.append(up.url)
                if len(tried) >= 2:
                    raise unavailable(
                        f"Could not reach a worker for model '{req.model}', after trying another one. "
                        "Retry shortly.",
                        code="upstream_unreachable",
                        retry_after_s=self._retry_after,
                    ) from None
            except UpstreamTimeout:
                self._dispatch.release(req, up)
                self._failed(up, "timeout")
                raise OpenAIError(
                    504, "The model worker did not answer in time.", code="upstream_timeout"
                ) from None
            except UpstreamError as exc:
                self._dispatch.release(req, up)
                raise self._broken(up, str(exc)) from None
            except BaseException:
                self._dispatch.release(req, up)
                raise

    def _broken(self, up: Upstream, why: str) -> OpenAIError:
        self._failed(up, "error")
        return OpenAIError(502, f"The model worker failed: {why}", code="upstream_error")

    def _failed(self, up: Upstream, outcome: str) -> None:
        self._metrics.count_upstream(up.url, outcome)
        if self._pool.failed(up, traffic=True):
            self._metrics.ejections.inc()
            log.warning("worker %s ejected after %d failures in a row", up.url, up.consecutive_failures)

    async def _relay(
        self, up: Upstream, resp: UpstreamResponse, req: Request, started: float, usage: Usage
    ) -> AsyncIterator[bytes]:
        """The worker's events as they arrive, in runs of whole events: constant work per chunk.

        The usage chunk is read here, once, into ``usage``, which the answer shares with
        everyone who needs it (the key's token limit, the cache, the metrics).
        """
        framer = EventFramer()
        first_at: float | None = None
        last_at = started
        done, outcome = False, "200"
        try:
            async for chunk in resp.chunks():
                events = framer.feed(chunk)
                if not events:
                    continue
                last_at = time.monotonic()
                if first_at is None:
                    first_at = last_at
                    self._dispatch.first_token(req)
                usage.events += _tokens_in(events)
                if b'"completion_tokens"' in events:
                    usage.take(usage_in(events))
                done = DONE in events or error_event(events)
                yield events
                if done:
                    break
            if not done:
                outcome = "stream_error"
                yield _stream_error(
                    502, "The model worker closed the stream before it finished.", "upstream_eof"
                )
        except UpstreamTimeout:
            outcome = "timeout"
            yield _stream_error(
                504, f"The model worker sent nothing for {self._idle:g}s.", "upstream_timeout"
            )
        except UpstreamError as exc:
            self._failed(up, "stream_error")
            outcome = ""  # counted by _failed
            yield _stream_error(502, f"Lost the model worker mid-stream: {exc}.", "upstream_error")
        finally:
            await resp.release()
            self._dispatch.release(req, up)
            self._dispatch.served(req, usage)
            if outcome == "200":
                self._pool.passed(up)
            if outcome:
                self._metrics.count_upstream(up.url, outcome)
            self._observe_stream(
                req.model, started, first_at, last_at, usage.completion_tokens or usage.events
            )

    def _observe_stream(
        self, model: str, started: float, first_at: float | None, last_at: float, tokens: int
    ) -> None:
        if first_at is None:
            return
        ttft, tpot, generated = self._metrics.per_model(model)
        ttft.observe(first_at - started)
        if tokens > 1:
            tpot.observe((last_at - first_at) / (tokens - 1))
        generated.inc(tokens)


def _tokens_in(events: bytes) -> int:
    """Generated tokens in a run of chunk events (vLLM sends one per decode step), by counting.

    One count of event ends, less ``[DONE]``; used only when the stream has no usage chunk,
    so a role-only first chunk or an empty final delta may count as a token there.
    """
    n = events.count(b"\n\n")
    return n - 1 if events.endswith(DONE) else n


def _stream_error(status: int, message: str, code: str) -> bytes:
    return OpenAIError(status, message, code=code).sse_event()


def relayed_error(status: int, body: bytes) -> OpenAIError:
    """A worker's error in the gateway's own dialect: its status, message, type and param kept.

    vLLM writes ``code`` as the HTTP status (a number) where OpenAI's schema and the
    gateway's own errors have a string or null: it becomes ``upstream_<status>``, as for a
    worker that answered no OpenAI error at all.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        error = obj if isinstance(obj, dict) else {}  # vLLM's older flat shape: {"object": "error", ...}
    message = (
        error.get("message")
        or body.decode(errors="replace").strip()
        or f"The model worker answered HTTP {status}."
    )
    code = error.get("code")
    kind, param = error.get("type"), error.get("param")
    return OpenAIError(
        status,
        str(message),
        code=code if isinstance(code, str) and code else f"upstream_{status}",
        param=param if isinstance(param, str) else None,
        type_=kind if isinstance(kind, str) and kind else None,
    )
