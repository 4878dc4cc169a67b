"""In-flight dedup: one upstream call per key, fan-out, leaving, failure, bounds."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.efficiency.dedup import Deduplicator, DedupMetrics, FlightWriter, SubscriberLagged
from vgate_gateway.protocol import Answer

#: Far more than any stream these tests write, so no subscriber lags unless a test says so.
MAX_LAG = 1 << 20

pytestmark = pytest.mark.timeout(10)


class Upstream:
    """A producer driven step by step by the test: each ``release()`` lets one chunk out."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.calls = 0
        self.cancelled = False
        self.gate = asyncio.Semaphore(0)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    async def __call__(self, writer: FlightWriter) -> None:
        self.calls += 1
        try:
            writer.start(Answer(200, headers={"content-type": "text/event-stream"}))
            for i, chunk in enumerate(self.chunks):
                await self.gate.acquire()
                if self.fail_after is not None and i >= self.fail_after:
                    raise ConnectionResetError("worker went away")
                writer.push(chunk)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def _collect(dedup: Deduplicator, key: str, upstream: Upstream) -> tuple[bool, Answer, bytes]:
    sub = dedup.join(key, upstream)
    try:
        head = await sub.head()
        body = b"".join([c async for c in sub.chunks()])
        return sub.leader, head, body
    finally:
        sub.close()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_identical_concurrent_requests_share_one_call() -> None:
    registry = CollectorRegistry()
    dedup = Deduplicator(max_lag_bytes=MAX_LAG, metrics=DedupMetrics(registry))
    upstream = Upstream([b"a", b"b", b"c"])
    tasks = [asyncio.create_task(_collect(dedup, "k", upstream)) for _ in range(50)]
    await _settle()
    upstream.release(3)
    results = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert sum(leader for leader, _, _ in results) == 1
    assert {(head.status, body) for _, head, body in results} == {(200, b"abc")}
    assert registry.get_sample_value("vgate_deduplicated_requests_total", {"endpoint": ""}) == 49
    assert len(dedup) == 0  # finished flights are forgotten


async def test_late_follower_gets_the_chunks_so_far_then_live_ones() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)
    upstream = Upstream([b"1", b"2", b"3", b"4"])
    leader = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    upstream.release(2)
    await _settle()
    follower = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    upstream.release(2)
    assert (await leader)[2] == b"1234"
    assert (await follower)[2] == b"1234"
    assert upstream.calls == 1


async def test_call_continues_for_followers_when_the_leader_leaves() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)
    upstream = Upstream([b"x", b"y", b"z"])
    leader = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    follower = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    leader.cancel()  # the leader's client disconnected
    await _settle()
    upstream.release(3)
    assert (await follower)[2] == b"xyz"
    assert not upstream.cancelled
    assert upstream.calls == 1


async def test_call_is_cancelled_when_the_last_subscriber_leaves() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)
    upstream = Upstream([b"x", b"y"])
    first = asyncio.create_task(_collect(dedup, "k", upstream))
    second = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    first.cancel()
    second.cancel()
    await _settle()
    assert upstream.cancelled
    assert len(dedup) == 0
    # The next identical request starts afresh rather than joining a dead call.
    third = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    upstream.release(2)
    assert (await third)[2] == b"xy"
    assert upstream.calls == 2


async def test_upstream_failure_reaches_every_subscriber() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)
    upstream = Upstream([b"a", b"b"], fail_after=1)
    tasks = [asyncio.create_task(_collect(dedup, "k", upstream)) for _ in range(5)]
    await _settle()
    upstream.release(2)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert upstream.calls == 1


async def test_failure_before_the_head_raises_from_head() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)

    async def broken(writer: FlightWriter) -> None:
        raise ConnectionRefusedError("no worker")

    sub = dedup.join("k", broken)
    with pytest.raises(ConnectionRefusedError):
        await sub.head()
    sub.close()


async def test_different_keys_do_not_share() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG)
    a, b = Upstream([b"a"]), Upstream([b"b"])
    tasks = [asyncio.create_task(_collect(dedup, "ka", a)), asyncio.create_task(_collect(dedup, "kb", b))]
    await _settle()
    a.release()
    b.release()
    assert [r[2] for r in await asyncio.gather(*tasks)] == [b"a", b"b"]


async def test_flight_table_is_bounded() -> None:
    dedup = Deduplicator(max_lag_bytes=MAX_LAG, max_flights=1)
    a, b = Upstream([b"a"]), Upstream([b"b"])
    tasks = [asyncio.create_task(_collect(dedup, "ka", a))]
    tasks += [asyncio.create_task(_collect(dedup, "kb", b)) for _ in range(2)]
    await _settle()
    assert len(dedup) == 1
    a.release()
    b.release(2)
    results = await asyncio.gather(*tasks)
    assert [r[2] for r in results] == [b"a", b"b", b"b"]
    assert b.calls == 2  # over the bound, identical requests simply each go upstream


async def test_big_response_stops_taking_followers_but_finishes_for_subscribers() -> None:
    dedup = Deduplicator(max_lag_bytes=10)
    upstream = Upstream([b"0123456789", b"abcdef", b"!"])
    first = asyncio.create_task(_collect(dedup, "k", upstream))
    second = asyncio.create_task(_collect(dedup, "k", upstream))
    await _settle()
    for _ in range(2):  # 16 bytes: over the bound (the readers keep up)
        upstream.release()
        await _settle()
    assert len(dedup) == 0
    late = asyncio.create_task(_collect(dedup, "k", upstream))  # starts its own call
    await _settle()
    for _ in range(4):
        upstream.release()
        await _settle()
    assert (await first)[2] == (await second)[2] == b"0123456789abcdef!"
    assert (await late)[2] == b"0123456789abcdef!"
    assert upstream.calls == 2


async def test_a_stalled_subscriber_is_dropped_and_the_others_continue() -> None:
    dedup = Deduplicator(max_lag_bytes=10)
    upstream = Upstream([b"x" * 4] * 20)
    reader = asyncio.create_task(_collect(dedup, "k", upstream))
    stalled = dedup.join("k", upstream)  # subscribes, never reads
    flight = dedup._flights["k"]
    await _settle()
    held = []
    for _ in range(20):
        upstream.release()
        await _settle()
        held.append(flight.buffered)
    assert (await reader)[2] == b"x" * 80
    assert max(held) <= 10 + 4  # the lag bound plus the newest chunk, however long the answer
    with pytest.raises(SubscriberLagged):
        _ = [c async for c in stalled.chunks()]
    stalled.close()
    assert upstream.calls == 1


async def test_the_call_is_cancelled_when_every_subscriber_fell_behind() -> None:
    dedup = Deduplicator(max_lag_bytes=10)
    upstream = Upstream([b"x" * 8] * 10)
    stalled = [dedup.join("k", upstream) for _ in range(2)]
    await _settle()
    for _ in range(10):
        upstream.release()
        await _settle()
    assert upstream.cancelled
    for sub in stalled:
        with pytest.raises(SubscriberLagged):
            _ = [c async for c in sub.chunks()]
        sub.close()
