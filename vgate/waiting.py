"""Waiting for state that nothing signals: the one poll loop, sync and async.

Benchmarks, ``vgate`` tooling and every test tier wait the same way: call a probe until
it returns something truthy, return that, and on timeout fail with what was awaited and
the probe's last answer (or the last error it was allowed to raise), so a failure says
more than "timed out".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    what: str,
    *,
    within: float,
    interval: float = 0.1,
    retry: tuple[type[BaseException], ...] = (),
    fail: type[Exception] = TimeoutError,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``probe`` until it returns something truthy; return that.

    An exception of a type in ``retry`` counts as "not yet" (a command that fails until the
    object exists); any other goes through. After ``within`` seconds, raises ``fail`` naming
    ``what`` and the last answer or error.
    """
    deadline = clock() + within
    last: object = None
    while True:
        try:
            result = probe()
        except retry as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if clock() >= deadline:
            raise fail(f"timed out after {within:g}s waiting for {what} (last: {last!r})")
        sleep(interval)


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    within: float,
    interval: float = 0.05,
    fail: type[Exception] = TimeoutError,
) -> T:
    """The async :func:`wait_for`: ``probe`` may be a plain or an async function.

    A probe that hangs is cancelled at the deadline too.
    """
    last: object = None
    try:
        async with asyncio.timeout(within):
            while True:
                held: object = probe()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return cast(T, held)
                last = held
                await asyncio.sleep(interval)
    except TimeoutError:
        raise fail(f"timed out after {within:g}s waiting for {what} (last: {last!r})") from None
