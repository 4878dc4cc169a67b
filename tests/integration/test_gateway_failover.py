"""Workers come and go under the gateway: traffic follows the healthy ones."""

from __future__ import annotations

import signal
import threading

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, WORKER_ARGS, Stack
from tests.support.procs import vgate_process
from tests.support.waiting import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def _ask(stack: Stack) -> str | None:
    r = stack.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    return r.choices[0].message.content


def test_a_stopped_worker_gets_no_traffic_and_a_restarted_one_is_used_again(own_stack: Stack) -> None:
    stack = own_stack
    first, second = stack.workers
    first.stop()
    # Immediately after the stop, before any health check notices: every request still succeeds.
    for _ in range(6):
        assert _ask(stack)
    assert httpx.get(f"{stack.url}/ready").status_code == 200

    second.stop()
    with pytest.raises(openai.APIStatusError) as info:
        _ask(stack)
    assert info.value.status_code == 503
    assert info.value.response.headers.get("retry-after")
    # The gateway itself still answers: it stays in its Service, the model answers its own 503.
    assert httpx.get(f"{stack.url}/ready").status_code == 200

    with vgate_process(WORKER_ARGS, stack.tmp_path, port=first.port, name="worker0-again"):
        wait_until(lambda: MODEL in httpx.get(f"{stack.url}/v1/models").text, what="the model served again")
        assert _ask(stack)
        upstreams = {
            u["url"]: u for u in httpx.get(f"{stack.gateway.internal_url}/stats").json()["upstreams"]
        }
        assert upstreams[first.url]["healthy"] is True
        assert upstreams[second.url]["healthy"] is False


def test_a_worker_dying_mid_stream_ends_the_stream_with_an_error(own_stack: Stack) -> None:
    stack = own_stack
    # One worker only, so the stream certainly goes to the one we kill.
    stack.workers[1].stop()
    wait_until(
        lambda: (
            len(
                [
                    u
                    for u in httpx.get(f"{stack.gateway.internal_url}/stats").json()["upstreams"]
                    if u["healthy"]
                ]
            )
            == 1
        ),
        what="one healthy upstream",
    )
    stream = stack.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
    )
    received: list[object] = []
    killer = threading.Timer(0.3, stack.workers[0].stop, kwargs={"sig": signal.SIGKILL})  # a crash
    killer.start()
    try:
        with pytest.raises(openai.APIError) as info:
            received.extend(stream)
    finally:
        killer.join()
    assert received  # the stream had started: the failure came as an event, not a status
    assert info.value.code in ("upstream_eof", "upstream_error")
