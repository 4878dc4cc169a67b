"""Work on a large body runs in a worker thread; a small body's stays on the event loop."""

from __future__ import annotations

import threading

from vgate_gateway.offload import OFF_LOOP_BYTES, off_loop_if_large


async def test_only_large_bodies_leave_the_loop_thread() -> None:
    def where(tag: str) -> tuple[str, threading.Thread]:
        return tag, threading.current_thread()

    assert await off_loop_if_large(OFF_LOOP_BYTES - 1, where, "small") == (
        "small",
        threading.current_thread(),
    )
    tag, thread = await off_loop_if_large(OFF_LOOP_BYTES, where, tag="large")
    assert tag == "large"
    assert thread is not threading.current_thread()
