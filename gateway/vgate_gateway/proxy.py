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
from collections.abc import AsyncIterator, Mapping, Sequence

import orjson
from starlette.responses import Response

from vgate_gateway.client import (
    StaleConnection,
    Unreachable,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from vgate_gateway.error_handlers import error_response
from vgate_gateway.errors import OpenAIError, unavailable
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import REQUEST_ID_HEADER, ParsedRequest
from vgate_gateway.relay import event_stream
from vgate_gateway.routing import Router
from vgate_gateway.sse import DONE, EventFramer, error_event, usage_completion_tokens
from vgate_gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger(__name__)

# Not forwarded: hop-by-hop headers, and those the client sets for the new connection.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)


_HOP_NAMES = frozenset(h.encode() for h in _HOP_HEADERS)  # as ASGI spells them: lower-case bytes


def upstream_headers(raw: Sequence[tuple[bytes, bytes]], request_id: str) -> dict[str, str]:
    """The client's headers to send upstream, from the ASGI scope's list, in one pass."""
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw if k not in _HOP_NAMES}
    out[REQUEST_ID_HEADER] = request_id
    # Bytes are relayed as they come: a compressed answer would reach the client undeclared.
    out["accept-encoding"] = "identity"
    return out


class Proxy:
    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        pool: UpstreamPool,
        metrics: Metrics,
        *,
        stream_idle_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        self._client = client
        self._router = router
        self._pool = pool
        self._metrics = metrics
        self._idle = stream_idle_timeout_s
        self._retry_after = retry_after_s

    async def forward(self, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Answer ``req`` from a worker."""
        started = time.monotonic()
        up, resp = await self._open(req, headers)
        if req.stream and resp.status == 200:
            return event_stream(self._relay(up, resp, req, started))
        try:
            body = await resp.read()
        except UpstreamError as exc:
            self._failed(up, "stream_error")
            raise OpenAIError(502, f"The model worker broke off its answer: {exc}") from None
        finally:
            await resp.release()
            up.inflight -= 1
        self._metrics.count_upstream(up.url, resp.status)
        if resp.status >= 500:
            self._pool.failed(up)
        else:
            self._pool.passed(up)
        if resp.status == 200:
            self._count_usage(req.model, body)
            return Response(body, status_code=200, media_type=resp.content_type)
        return _relay_error(resp.status, body, resp.content_type)

    async def _open(
        self, req: ParsedRequest, headers: Mapping[str, str]
    ) -> tuple[Upstream, UpstreamResponse]:
        """Send the request; a worker that can't be reached is tried elsewhere once.

        A pooled connection the worker closed before answering is retried once on a fresh
        one: nothing has reached the client yet, and it is no sign the worker is unwell.
        """
        tried: list[str] = []
        stale_retried = False
        while True:
            up = self._router.pick(req, headers, exclude=tried)
            up.inflight += 1
            up.requests_total += 1
            try:
                return up, await self._client.post(
                    up.url + req.kind.value, req.body, headers, stream=req.stream
                )
            except StaleConnection:
                up.inflight -= 1
                if stale_retried:
                    raise self._broken(up, "stale connection twice") from None
                stale_retried = True
                log.debug("worker %s closed a pooled connection; sending again", up.url)
            except Unreachable as exc:
                up.inflight -= 1
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
                up.inflight -= 1
                self._failed(up, "timeout")
                raise OpenAIError(
                    504, "The model worker did not answer in time.", code="upstream_timeout"
                ) from None
            except UpstreamError as exc:
                up.inflight -= 1
                raise self._broken(up, str(exc)) from None
            except BaseException:
                up.inflight -= 1
                raise

    def _broken(self, up: Upstream, why: str) -> OpenAIError:
        self._failed(up, "error")
        return OpenAIError(502, f"The model worker failed: {why}", code="upstream_error")

    def _failed(self, up: Upstream, outcome: str) -> None:
        up.failures_total += 1
        self._metrics.count_upstream(up.url, outcome)
        if self._pool.failed(up):
            self._metrics.ejections.inc()
            log.warning("worker %s ejected after %d failures in a row", up.url, up.consecutive_failures)

    async def _relay(
        self, up: Upstream, resp: UpstreamResponse, req: ParsedRequest, started: float
    ) -> AsyncIterator[bytes]:
        """The worker's events as they arrive, in runs of whole events: constant work per chunk."""
        framer = EventFramer()
        first_at: float | None = None
        last_at = started
        tokens, usage_tokens, done, outcome = 0, None, False, "200"
        try:
            async for chunk in resp.chunks():
                events = framer.feed(chunk)
                if not events:
                    continue
                last_at = time.monotonic()
                if first_at is None:
                    first_at = last_at
                tokens += _tokens_in(events)
                if b'"completion_tokens"' in events:
                    usage_tokens = usage_completion_tokens(events)
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
            up.inflight -= 1
            if outcome == "200":
                self._pool.passed(up)
            if outcome:
                self._metrics.count_upstream(up.url, outcome)
            self._observe_stream(req.model, started, first_at, last_at, usage_tokens or tokens)

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

    def _count_usage(self, model: str, body: bytes) -> None:
        completion = usage_completion_tokens(body)
        if completion:
            self._metrics.per_model(model)[2].inc(completion)


def _tokens_in(events: bytes) -> int:
    """Generated tokens in a run of chunk events (vLLM sends one per decode step), by counting.

    One count of event ends, less ``[DONE]``; used only when the stream has no usage chunk,
    so a role-only first chunk or an empty final delta may count as a token there.
    """
    n = events.count(b"\n\n")
    return n - 1 if events.endswith(DONE) else n


def _stream_error(status: int, message: str, code: str) -> bytes:
    return OpenAIError(status, message, code=code).sse_event()


def _relay_error(status: int, body: bytes, content_type: str | None) -> Response:
    """A worker's error goes back with its status; its body too, in OpenAI's shape."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return Response(body, status_code=status, media_type=content_type or "application/json")
    message = obj.get("message") if isinstance(obj, dict) else None
    message = message or body.decode(errors="replace").strip() or f"The model worker answered HTTP {status}."
    return error_response(OpenAIError(status, str(message), code=f"upstream_{status}"))
