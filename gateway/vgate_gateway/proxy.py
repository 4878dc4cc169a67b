"""Forwarding to workers: pick, connect (retrying once elsewhere), relay.

The client's body bytes go upstream untouched and the worker's bytes come back
untouched: a non-streaming answer as one body, a stream event by event as each
arrives. Failures are OpenAI errors — a status before the first byte, one SSE
error event after it — and the upstream connection is always closed when the
client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping

import anyio
import httpx
from starlette.responses import Response

from vgate_gateway.errors import OpenAIError, unavailable
from vgate_gateway.metrics import Metrics
from vgate_gateway.protocol import ParsedRequest
from vgate_gateway.routing import Router
from vgate_gateway.sse import EventSplitter, event_stream, inspect_event
from vgate_gateway.upstreams import Upstream

log = logging.getLogger(__name__)

# Not forwarded: hop-by-hop headers, and those httpx sets for the new connection.
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
# Errors that mean the request never reached a worker: safe to try another one.
_NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def upstream_headers(headers: Mapping[str, str], request_id: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
    out["x-request-id"] = request_id
    return out


class Proxy:
    def __init__(
        self,
        client: httpx.AsyncClient,
        router: Router,
        metrics: Metrics,
        *,
        stream_idle_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        self._client = client
        self._router = router
        self._metrics = metrics
        self._idle = stream_idle_timeout_s
        self._retry_after = retry_after_s

    async def forward(self, req: ParsedRequest, headers: Mapping[str, str]) -> Response:
        """Answer ``req`` from a worker."""
        started = time.monotonic()
        up, resp = await self._open(req, headers)
        if req.stream and resp.status_code == 200:
            return event_stream(self._relay(up, resp, req, started))
        try:
            body = await resp.aread()
        except httpx.HTTPError as exc:
            self._metrics.count_upstream(up.url, "stream_error")
            raise OpenAIError(502, f"The model worker broke off its answer: {type(exc).__name__}") from None
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            up.inflight -= 1
        self._metrics.count_upstream(up.url, resp.status_code)
        if resp.status_code == 200:
            self._count_usage(req.model, body)
            return Response(body, status_code=200, media_type=resp.headers.get("content-type"))
        return _relay_error(resp.status_code, body, resp.headers.get("content-type"))

    async def _open(self, req: ParsedRequest, headers: Mapping[str, str]) -> tuple[Upstream, httpx.Response]:
        """Send the request; a worker that can't be reached is marked down and another tried once."""
        tried: list[str] = []
        for attempt in range(2):
            up = self._router.pick(req, headers, exclude=tried)
            up.inflight += 1
            up.requests_total += 1
            request = self._client.build_request(
                "POST", up.url + req.kind.value, content=req.body, headers=headers
            )
            try:
                return up, await self._client.send(request, stream=True)
            except _NOT_DELIVERED as exc:
                up.inflight -= 1
                up.mark_failed()
                self._metrics.count_upstream(up.url, "connect_error")
                log.warning("worker %s unreachable (%s), attempt %d", up.url, type(exc).__name__, attempt + 1)
                tried.append(up.url)
            except httpx.TimeoutException:
                up.inflight -= 1
                self._metrics.count_upstream(up.url, "timeout")
                raise OpenAIError(
                    504, "The model worker did not answer in time.", code="upstream_timeout"
                ) from None
            except httpx.HTTPError as exc:
                up.inflight -= 1
                up.failures_total += 1
                self._metrics.count_upstream(up.url, "error")
                raise OpenAIError(
                    502, f"The model worker failed: {type(exc).__name__}", code="upstream_error"
                ) from None
            except BaseException:
                up.inflight -= 1
                raise
        raise unavailable(
            f"Could not reach a worker for model '{req.model}', after trying another one. Retry shortly.",
            code="upstream_unreachable",
            retry_after_s=self._retry_after,
        )

    async def _relay(
        self, up: Upstream, resp: httpx.Response, req: ParsedRequest, started: float
    ) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        first_at: float | None = None
        last_at = started
        tokens, usage_tokens, done, outcome = 0, None, False, "200"
        chunks = resp.aiter_bytes()
        try:
            while not done:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), self._idle)
                except StopAsyncIteration:
                    break
                for event in splitter.feed(chunk):
                    info = inspect_event(event)
                    if info.tokens:
                        last_at = time.monotonic()
                        first_at = first_at or last_at
                        tokens += info.tokens
                    if info.usage_completion_tokens is not None:
                        usage_tokens = info.usage_completion_tokens
                    done = done or info.done or info.error
                    yield event
            if not done:
                outcome = "stream_error"
                yield _stream_error(
                    502, "The model worker closed the stream before it finished.", "upstream_eof"
                )
        except TimeoutError:
            outcome = "timeout"
            yield _stream_error(
                504, f"The model worker sent nothing for {self._idle:g}s.", "upstream_timeout"
            )
        except httpx.HTTPError as exc:
            outcome = "stream_error"
            up.failures_total += 1
            yield _stream_error(
                502, f"Lost the model worker mid-stream: {type(exc).__name__}.", "upstream_error"
            )
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            up.inflight -= 1
            self._metrics.count_upstream(up.url, outcome)
            self._observe_stream(req.model, started, first_at, last_at, usage_tokens or tokens)

    def _observe_stream(
        self, model: str, started: float, first_at: float | None, last_at: float, tokens: int
    ) -> None:
        if first_at is None:
            return
        self._metrics.ttft.labels(model).observe(first_at - started)
        if tokens > 1:
            self._metrics.tpot.labels(model).observe((last_at - first_at) / (tokens - 1))
        self._metrics.tokens_generated.labels(model).inc(tokens)

    def _count_usage(self, model: str, body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
            completion = int(usage.get("completion_tokens") or 0)
        except (ValueError, AttributeError, TypeError):
            return
        if completion:
            self._metrics.tokens_generated.labels(model).inc(completion)


def _stream_error(status: int, message: str, code: str) -> bytes:
    return OpenAIError(status, message, code=code).sse_event()


def _relay_error(status: int, body: bytes, content_type: str | None) -> Response:
    """A worker's error goes back with its status; its body too, in OpenAI's shape."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return Response(body, status_code=status, media_type=content_type or "application/json")
    message = obj.get("message") if isinstance(obj, dict) else None
    message = message or body.decode(errors="replace").strip() or f"The model worker answered HTTP {status}."
    return OpenAIError(status, str(message), code=f"upstream_{status}").response()
