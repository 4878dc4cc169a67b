"""Efficiency that never costs the client, through real processes on loopback: merged
completions bill exactly what each request would alone, a lone request never waits,
a client that leaves frees the worker on every endpoint, replays are the worker's own
answer under the new request's id, and a client that stops reading a shared stream is
dropped instead of buffered."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.metrics import ametric
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(300)

#: The issue's bound: the worker stops generating within one second of the client leaving.
CANCELLED_WITHIN_S = 1.0
AUTH = {"authorization": "Bearer unused"}
#: The fan-out lag bound of the stalled-reader test.
LAG = 16 * 2**20


def _start(
    es: ExitStack, tmp_path: Path, worker_args: list[str], gateway_env: dict[str, str], workers: int = 2
) -> Stack:
    args = ["worker", "--dry-run", "--served-model-name", MODEL, *worker_args]
    env = {"VGATE_LOG_JSON": "true", **gateway_env}
    return start_stack(es, tmp_path, workers, env, worker_args=args)


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Workers at a twentieth of real speed: a long answer takes far longer than the bound."""
    with ExitStack() as es:
        yield _start(es, tmp_path_factory.mktemp("slow"), ["--speed", "0.02"], {"VGATE_BATCH_WAIT_MS": "50"})


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prefix-aware routing, a batching window of 30 s, workers at a few times real speed."""
    env = {"VGATE_ROUTING": "prefix-aware", "VGATE_BATCH_WAIT_MS": "30000", "VGATE_BATCH_SIZE": "3"}
    with ExitStack() as es:
        yield _start(es, tmp_path_factory.mktemp("fast"), ["--speed", "0.5"], env)


@asynccontextmanager
async def _http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=AUTH) as http:
        http.stats_url = f"{stack.gateway.internal_url}/stats"  # type: ignore[attr-defined]
        yield http


async def _stats(http: httpx.AsyncClient) -> httpx.Response:
    """The gateway's /stats, on its internal port."""
    return await http.get(http.stats_url)  # type: ignore[attr-defined]


async def _running(http: httpx.AsyncClient, stack: Stack) -> float:
    return sum([await ametric(http, w.url, "vllm:num_requests_running") for w in stack.workers])


def _completion(prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, **extra}


def _chat(text: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


async def _busy(http: httpx.AsyncClient, stack: Stack, prompt: str) -> asyncio.Task[httpx.Response]:
    """One lone answer (the gateway learns how the model answers), then a long one kept in flight."""
    (
        await http.post("/v1/completions", json=_completion(prompt + " warm", 2, temperature=1))
    ).raise_for_status()
    before = await _running(http, stack)
    long = _completion(prompt + " busy", 2000, temperature=1, ignore_eos=True)
    task = asyncio.create_task(http.post("/v1/completions", json=long))
    await eventually(lambda: _more_running(http, stack, before), within=10)
    return task


async def _more_running(http: httpx.AsyncClient, stack: Stack, than: float) -> bool:
    return await _running(http, stack) > than


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# -- 1. batching only where it pays, never at a client's expense ------------------------------


async def test_merged_completions_report_each_clients_own_usage(fast: Stack) -> None:
    async with _http(fast) as http:
        busy = await _busy(http, fast, "usage")
        merged_before = await ametric(http, fast.gateway.internal_url, "vgate_batch_size_sum", missing=0)
        calls_before = await ametric(http, fast.gateway.internal_url, "vgate_batch_size_count", missing=0)
        prompts = ["Hi", "a much longer prompt that needs quite a few more tokens than the others do", "Yo!"]
        bodies = [_completion(p, 16, temperature=0.5) for p in prompts]
        together = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
        assert await ametric(http, fast.gateway.internal_url, "vgate_batch_size_sum") - merged_before == 3
        assert (
            await ametric(http, fast.gateway.internal_url, "vgate_batch_size_count") - calls_before == 1
        )  # one upstream call
        await _stop(busy)
        alone = [await http.post("/v1/completions", json=b) for b in bodies]  # nothing in flight: each alone
    for merged, single in zip(together, alone, strict=True):
        assert merged.status_code == single.status_code == 200
        mine, theirs = merged.json(), single.json()
        assert mine["usage"] == theirs["usage"]  # prompt_tokens_details included, as the worker reports it
        assert mine["choices"] == theirs["choices"]
        assert mine["usage"]["completion_tokens"] <= 16


async def test_a_worker_that_reports_cached_tokens_is_never_merged(tmp_path: Path) -> None:
    env = {"VGATE_BATCH_WAIT_MS": "200"}
    with ExitStack() as es:
        stack = _start(es, tmp_path, ["--speed", "0.5", "--enable-prompt-tokens-details"], env, workers=1)
        async with _http(stack) as http:
            busy = await _busy(http, stack, "details")
            prompts = ["details one", "details two", "details three"]
            together = await asyncio.gather(
                *(http.post("/v1/completions", json=_completion(p, 8, temperature=0.5)) for p in prompts)
            )
            await _stop(busy)
            assert (await _stats(http)).json()["batching"]["merged_batches"] == 0
            for reply in together:
                assert reply.json()["usage"]["prompt_tokens_details"] is not None


async def test_a_lone_request_is_sent_at_once_not_after_the_window(fast: Stack) -> None:
    # The peer is a chat request of the same size, which is never batched: a lone completion
    # that waited for companions would be slower than it by the whole window.
    completions: list[float] = []
    chats: list[float] = []
    embeddings: list[float] = []
    async with _http(fast) as http:
        window_s = (await _stats(http)).json()["batching"]["wait_ms"] / 1000
        for i in range(5):
            for into, path, body in (
                (completions, "/v1/completions", _completion(f"lone {i}", 4, temperature=1)),
                (chats, "/v1/chat/completions", _chat(f"lone {i}", 4, temperature=1)),
                (embeddings, "/v1/embeddings", {"model": MODEL, "input": f"lone {i}", "user": str(i)}),
            ):
                reply = await http.post(path, json=body, headers={"x-vgate-cache": "bypass"})
                assert reply.status_code == 200
                into.append(reply.elapsed.total_seconds())
    assert statistics.median(completions) < statistics.median(chats) + window_s / 2
    assert statistics.median(embeddings) < statistics.median(chats) + window_s / 2


# -- 2. cancellation everywhere ------------------------------------------------------------------


LEAVING = [
    pytest.param(
        "/v1/completions", _completion("leave me", 1000, temperature=1, ignore_eos=True), id="completion-t1"
    ),
    pytest.param(
        "/v1/completions", _completion("leave me", 1000, temperature=0, ignore_eos=True), id="completion-t0"
    ),
    pytest.param("/v1/embeddings", {"model": MODEL, "input": "leave " * 3000}, id="embedding"),
    pytest.param(
        "/v1/chat/completions", _chat("leave me", 1000, temperature=1, ignore_eos=True), id="chat-t1"
    ),
    pytest.param(
        "/v1/chat/completions", _chat("leave me", 1000, temperature=0, ignore_eos=True), id="chat-t0"
    ),
    pytest.param(
        "/v1/completions",
        _completion("leave me", 1000, temperature=0, ignore_eos=True, stream=True),
        id="stream",
    ),
]


@pytest.mark.parametrize(("path", "body"), LEAVING)
async def test_a_client_that_leaves_frees_the_worker_within_a_second(
    slow: Stack, path: str, body: dict[str, Any]
) -> None:
    async with _http(slow) as http:
        await eventually(lambda: _idle(http, slow), within=10)
        leaving = asyncio.create_task(http.post(path, json=body))
        await eventually(lambda: _more_running(http, slow, 0), within=10)
        await _stop(leaving)  # the client hangs up
        await eventually(lambda: _idle(http, slow), within=CANCELLED_WITHIN_S)


async def _idle(http: httpx.AsyncClient, stack: Stack) -> bool:
    return await _running(http, stack) == 0


async def test_a_merged_batch_is_cancelled_when_all_its_clients_left(slow: Stack) -> None:
    async with _http(slow) as http:
        await eventually(lambda: _idle(http, slow), within=10)
        busy = await _busy(http, slow, "batch")
        calls_before = await ametric(http, slow.gateway.internal_url, "vgate_batch_size_count", missing=0)
        bodies = [_completion(f"merged {i}", 1000, temperature=1, ignore_eos=True) for i in range(2)]
        clients = [asyncio.create_task(http.post("/v1/completions", json=b)) for b in bodies]
        await eventually(lambda: _batched(http, slow, calls_before), within=10)
        await eventually(lambda: _more_running(http, slow, 2), within=10)  # the busy one and the merged two
        for task in [*clients, busy]:
            await _stop(task)
        await eventually(lambda: _idle(http, slow), within=CANCELLED_WITHIN_S)


async def _batched(http: httpx.AsyncClient, stack: Stack, before: float) -> bool:
    return await ametric(http, stack.gateway.internal_url, "vgate_batch_size_count", missing=0) > before


async def test_identical_clients_that_all_leave_cancel_the_shared_call(slow: Stack) -> None:
    body = _completion("shared and abandoned", 1000, temperature=0, ignore_eos=True)
    async with _http(slow) as http:
        await eventually(lambda: _idle(http, slow), within=10)
        shared_before = await ametric(
            http, slow.gateway.internal_url, "vgate_deduplicated_requests_total", missing=0
        )
        clients = [asyncio.create_task(http.post("/v1/completions", json=body)) for _ in range(3)]
        await eventually(lambda: _shared(http, slow, shared_before + 2), within=10)
        await eventually(lambda: _more_running(http, slow, 0), within=10)
        await _stop(clients[0])
        assert await _running(http, slow) == 1  # the others still wait for it
        for task in clients[1:]:
            await _stop(task)
        await eventually(lambda: _idle(http, slow), within=CANCELLED_WITHIN_S)


async def _shared(http: httpx.AsyncClient, stack: Stack, at_least: float) -> bool:
    return (
        await ametric(http, stack.gateway.internal_url, "vgate_deduplicated_requests_total", missing=0)
        >= at_least
    )


# -- 3. merged calls route on the first prompt and carry every client's request id ------------------


async def test_a_merged_call_routes_on_its_first_prompt_and_names_every_client(fast: Stack) -> None:
    prefix = "The bicycle shop's support assistant answers questions about repairs and parts. " * 8
    async with _http(fast) as http:
        before = [u["requests"] for u in (await _stats(http)).json()["upstreams"]]
        busy = await _busy(http, fast, prefix)  # both on the worker that now holds the prefix
        ids = [f"client-{i}-of-merged-call" for i in range(3)]
        replies = await asyncio.gather(
            *(
                http.post(
                    "/v1/completions",
                    json=_completion(prefix + f"q{i}", 4, temperature=0.7),
                    headers={"x-request-id": rid},
                )
                for i, rid in enumerate(ids)
            )
        )
        await _stop(busy)
        after = [u["requests"] for u in (await _stats(http)).json()["upstreams"]]
    assert [r.status_code for r in replies] == [200, 200, 200]
    # warm-up, busy and the merged call: all on the worker holding the prefix.
    assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 3]
    assert [r.json()["id"] for r in replies] == [f"cmpl-{rid}" for rid in ids]  # as each would be named alone
    merged = [line for line in fast.gateway.log().splitlines() if "merged 3" in line]
    assert merged
    assert all(rid in merged[-1] for rid in ids)


# -- 4. a faithful cache ---------------------------------------------------------------------------


async def test_a_request_the_worker_rejects_never_gets_a_cached_200(fast: Stack) -> None:
    body = _chat("stream options without a stream", 6, temperature=0)
    async with _http(fast) as http:
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert (await http.post("/v1/chat/completions", json=body)).headers["x-vgate-cache"] == "hit"
        invalid = {**body, "stream_options": {"include_usage": True}}
        for _ in range(2):
            reply = await http.post("/v1/chat/completions", json=invalid)
            assert reply.status_code == 400
            assert "stream" in reply.json()["error"]["message"].lower()


def _events(raw: bytes) -> list[Any]:
    return [
        block[6:] if block == "data: [DONE]" else json.loads(block[6:])
        for block in raw.decode().split("\n\n")
        if block.startswith("data: ")
    ]


def _unstamped(obj: Any) -> Any:
    return {k: v for k, v in obj.items() if k not in ("id", "created")} if isinstance(obj, dict) else obj


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="json"),
        pytest.param({"stream": True}, id="stream"),
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, id="stream-usage"),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            id="stream-continuous-usage",
        ),
    ],
)
async def test_a_replay_is_the_workers_own_answer_under_a_fresh_id(
    fast: Stack, extra: dict[str, Any]
) -> None:
    body = _chat(f"replay me {sorted(extra)}", 8, temperature=0, **extra)
    async with _http(fast) as http:
        worker = fast.workers[0].url
        direct = await http.post(
            worker + "/v1/chat/completions", json=body, headers={"x-request-id": "direct"}
        )
        miss = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "first"})
        hit = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "second"})
    assert [miss.headers["x-vgate-cache"], hit.headers["x-vgate-cache"]] == ["miss", "hit"]
    if body.get("stream"):
        replayed, own = _events(hit.content), _events(direct.content)
        assert [_unstamped(e) for e in replayed] == [_unstamped(e) for e in own]
        stamped = [e for e in replayed if isinstance(e, dict)]
    else:
        assert _unstamped(hit.json()) == _unstamped(direct.json())
        stamped = [hit.json()]
    assert {e["id"] for e in stamped} == {"chatcmpl-second"}  # the id the worker gives this request
    assert all(e["created"] >= _events_created(miss) for e in stamped)


def _events_created(resp: httpx.Response) -> int:
    if resp.headers["content-type"].startswith("application/json"):
        return int(resp.json()["created"])
    return min(int(e["created"]) for e in _events(resp.content) if isinstance(e, dict))


async def test_followers_of_a_shared_call_get_their_own_ids(fast: Stack) -> None:
    async with _http(fast) as http:
        for extra in ({}, {"stream": True}):
            body = _chat(f"shared ids {extra}", 60, temperature=0, ignore_eos=True, **extra)
            shared_before = await ametric(
                http, fast.gateway.internal_url, "vgate_deduplicated_requests_total", missing=0
            )
            replies = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json=body, headers={"x-request-id": f"follower-{i}"})
                    for i in range(3)
                )
            )
            assert (
                await ametric(http, fast.gateway.internal_url, "vgate_deduplicated_requests_total")
                > shared_before
            )
            for i, reply in enumerate(replies):
                objs = _events(reply.content) if extra else [reply.json()]
                assert {o["id"] for o in objs if isinstance(o, dict)} == {f"chatcmpl-follower-{i}"}


# -- 5. bounded fan-out --------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


@pytest.fixture
def flood(tmp_path: Path) -> Iterator[Stack]:
    """A worker producing a long stream of big chunks (~8 MB/s); a lag bound of 16 MiB
    (two seconds of this stream) lets a reader that keeps up ride out a busy moment."""
    with ExitStack() as es:
        env = {"VGATE_DEDUP_MAX_LAG_BYTES": str(LAG)}
        yield _start(es, tmp_path, ["--speed", "0.5"], env, workers=1)


def _stalled_request(url: str, body: dict[str, Any]) -> socket.socket:
    """An HTTP request whose client never reads the answer (its receive window fills up)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer unused\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


async def test_a_client_that_stops_reading_a_shared_stream_is_dropped_and_memory_stays_bounded(
    flood: Stack,
) -> None:
    # Twelve 40 kB words: 12 of every 19 generated tokens carry one, so the stream is ~100 MB.
    words = " ".join(chr(ord("a") + i) * 40_000 for i in range(12))
    body = _chat(words, 4000, temperature=0, ignore_eos=True, stream=True)
    pid = flood.gateway.popen.pid  # type: ignore[union-attr]
    rss_before = _rss_bytes(pid)
    stalled = _stalled_request(flood.url, body)
    async with _http(flood) as http:
        await eventually(lambda: _shared_flight(http, flood), within=10)
        received, peak = 0, 0
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.headers["x-vgate-cache"] == "miss"
            tail = b""
            async for chunk in resp.aiter_bytes():
                received += len(chunk)
                tail = (tail + chunk)[-200:]
                peak = max(peak, _rss_bytes(pid))
        assert tail.endswith(b"data: [DONE]\n\n")  # the reader that keeps up gets the whole answer
        assert await ametric(http, flood.gateway.internal_url, "vgate_deduplicated_requests_total") == 1
    assert received > 90 * 2**20
    # The stalled client holds nothing in the gateway beyond the lag bound: far below what was sent.
    assert peak - rss_before < 3 * LAG, f"RSS grew by {(peak - rss_before) / 2**20:.0f} MiB"
    assert b"stream_lagged" in _read_until(stalled, b"stream_lagged")  # dropped with an OpenAI error event


def _read_until(sock: socket.socket, marker: bytes, within: float = 20.0) -> bytes:
    """What the socket delivers until ``marker`` (or the end, or ``within`` seconds of silence)."""
    sock.settimeout(within)
    tail = b""
    try:
        while chunk := sock.recv(1 << 20):
            tail = (tail + chunk)[-4096:]
            if marker in tail:
                break
    except TimeoutError:
        pass
    finally:
        sock.close()
    return tail


async def _shared_flight(http: httpx.AsyncClient, stack: Stack) -> bool:
    return (await _stats(http)).json()["dedup"]["in_flight"] == 1


def test_only_completions_are_merged_by_default(fast: Stack) -> None:
    batching = httpx.get(fast.gateway.internal_url + "/stats").json()["batching"]
    assert batching["endpoints"] == ["/v1/completions"]  # embeddings' usage cannot be split exactly
