"""How a failure talking to a worker is read: what may be sent again, and what ends the request."""

from __future__ import annotations

import aiohttp

from vgate_gateway.upstream.client import StaleConnection, Unreachable, UpstreamBroken, _translate


def test_a_connection_that_breaks_while_the_request_is_written_is_sent_again() -> None:
    # A worker shutting down closed a pooled connection as the gateway wrote to it: the
    # worker never read the request, so it goes again (a fresh connection, or another worker).
    broken = aiohttp.ClientOSError(None, "Can not write request body for http://w:8000/v1/chat/completions")
    assert isinstance(_translate(broken, sending=True), StaleConnection)
    assert isinstance(_translate(aiohttp.ClientConnectionResetError("reset"), sending=True), StaleConnection)


def test_the_same_break_once_the_answer_has_begun_ends_the_request() -> None:
    broken = aiohttp.ClientOSError(None, "connection reset")
    assert isinstance(_translate(broken), UpstreamBroken)


def test_a_refused_connection_is_unreachable_whenever_it_happens() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("w", 8000, False, True, None, None, None), OSError(111, "refused")
    )
    assert isinstance(_translate(refused, sending=True), Unreachable)
    assert isinstance(_translate(aiohttp.ServerDisconnectedError()), StaleConnection)
