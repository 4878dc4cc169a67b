"""Hostile input gets a 4xx in OpenAI's shape, never a 500; headers and logs stay clean.

Every case goes through the real HTTP interface of a running gateway: raw sockets where a
client library would refuse to send the attack, the official ``openai`` client where a
client would be used.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.procs import Proc, vgate_process
from tests.support.recorder import Recorder, recorder
from tests.support.waiting import wait_until

LIMIT = 65536
CONTAINERS = 1000
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway with a small body limit, in front of one dry-run worker."""
    env = {"VGATE_MAX_BODY_BYTES": str(LIMIT), "VGATE_MAX_JSON_CONTAINERS": str(CONTAINERS)}
    with ExitStack() as es:
        yield start_stack(es, tmp_path_factory.mktemp("input"), workers=1, gateway_env=env)


def _raw(port: int, head: bytes, body: bytes = b"", *, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read the answer until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except TimeoutError:
            pass
        return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"]
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_declared_oversized_body_is_413_before_it_is_sent(small: Stack) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    answer = _raw(small.gateway.port, head, b'{"model": "')  # 100 MB announced, 11 bytes sent
    assert _status(answer) == 413
    assert b"request_too_large" in answer
    assert b"x-request-id" in answer.lower()


def test_a_chunked_body_is_413_as_soon_as_it_passes_the_limit(small: Stack) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 16384
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(LIMIT // len(piece) + 2))
    answer = _raw(small.gateway.port, head, chunks)  # no terminating chunk: the gateway must not wait for it
    assert _status(answer) == 413


def test_a_body_at_the_limit_is_still_served(small: Stack) -> None:
    padding = "x" * (LIMIT - 200)
    r = httpx.post(
        f"{small.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO, "max_tokens": 2, "user": padding},
    )
    assert r.status_code == 200


HOSTILE = {
    "nested 100 deep": b'{"model": "m", "messages": ' + b"[" * 100 + b"]" * 100 + b"}",
    "nested 1100 deep": b"[" * 1100 + b"]" * 1100,
    "1,001 arrays and objects": b'{"model": "m", "messages": [' + b"[]," * 998 + b"{}]}",
    "5000-digit seed": b'{"model": "m", "messages": [], "seed": ' + b"9" * 5000 + b"}",
    "lone surrogate escape": b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "surrogate as UTF-8 bytes": b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    "invalid UTF-8": b'{"model": "\xff\xfe", "messages": []}',
    "NaN": b'{"model": "m", "messages": [], "temperature": NaN}',
    "trailing data": b'{"model": "m"} {"model": "n"}',
    "empty": b"",
    "gzip bytes": b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    "top-level array": b"[1, 2]",
}


@pytest.mark.parametrize("body", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_malformed_bodies_are_400_in_openai_shape(small: Stack, body: bytes, path: str) -> None:
    r = httpx.post(f"{small.url}{path}", content=body, headers={"content-type": "application/json"})
    error = _error(r, 400)
    assert error["type"] == "invalid_request_error"


def test_too_many_containers_is_its_own_400(small: Stack) -> None:
    body = HOSTILE["1,001 arrays and objects"]
    r = httpx.post(f"{small.url}/v1/chat/completions", content=body)
    assert _error(r, 400)["code"] == "json_too_complex"
    fits = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}] * 998}  # 1,000
    assert httpx.post(f"{small.url}/v1/chat/completions", json=fits).status_code == 200


def test_no_hostile_body_left_a_traceback(small: Stack) -> None:
    for body in HOSTILE.values():
        httpx.post(f"{small.url}/v1/chat/completions", content=body)
    log = small.gateway.log()
    assert "Traceback" not in log
    assert " 500 " not in log


def test_a_bad_content_length_is_400(small: Stack) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n"
    assert _status(_raw(small.gateway.port, head, b"{}")) == 400


def test_a_newline_in_the_path_cannot_forge_a_log_line(small: Stack) -> None:
    httpx.get(f"{small.url}/v1/x%0A2026-01-01 00:00:00,000 INFO    vgate.access [forged] GET /admin 200")
    wait_until(
        lambda: "[forged]" in small.gateway.log(), what="the access log line"
    )  # written after the answer
    forged = [line for line in small.gateway.log().splitlines() if "[forged]" in line]
    assert all(line.index("vgate.access") < line.index("[forged]") for line in forged)
    assert all("\\n" in line for line in forged)


def test_internal_endpoints_are_only_on_the_internal_port(small: Stack) -> None:
    for path in ("/stats", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(small.url + path).status_code == 404
        assert httpx.get(small.gateway.internal_url + path).status_code == 200
    for path in ("/health", "/ready"):
        assert httpx.get(small.url + path).status_code == 200
    assert "/v1/chat/completions" in httpx.get(small.gateway.internal_url + "/openapi.json").json()["paths"]


# -- what reaches the worker


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, Recorder, Proc, Proc]]:
    """A recording worker behind two gateways (one trusting loopback as a proxy), and a trap."""
    tmp = tmp_path_factory.mktemp("headers")
    with ExitStack() as es:
        worker = es.enter_context(recorder(MODEL))
        trap = es.enter_context(recorder(MODEL))
        env = {"VGATE_ENDPOINTS": worker.url, "VGATE_HEALTH_INTERVAL_S": "0.2"}
        plain = es.enter_context(
            vgate_process(["gateway"], tmp, env=env, ready_path="/ready", name="gw-plain")
        )
        trusting = es.enter_context(
            vgate_process(
                ["gateway"],
                tmp,
                env={**env, "VGATE_TRUSTED_PROXIES": "127.0.0.0/8"},
                ready_path="/ready",
                name="gw-trusting",
            )
        )
        yield worker, trap, plain, trusting


def _last_call(worker: Recorder) -> dict[str, str]:
    return worker.api_calls()[-1].headers


def test_hop_by_hop_and_connection_named_headers_stay_at_the_gateway(
    recorded: tuple[Recorder, Recorder, Proc, Proc],
) -> None:
    worker, _, plain, _ = recorded
    r = httpx.post(
        f"{plain.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={
            "connection": "keep-alive, x-internal-secret",
            "x-internal-secret": "drop me",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "upgrade": "h2c",
            "proxy-authorization": "Basic abc",
            "x-kept": "yes",
        },
    )
    assert r.status_code == 200
    seen = _last_call(worker)
    for name in ("x-internal-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert name not in seen
    assert seen["x-kept"] == "yes"
    assert seen["x-request-id"] == r.headers["x-request-id"]


def test_the_peer_is_appended_to_x_forwarded_for(recorded: tuple[Recorder, Recorder, Proc, Proc]) -> None:
    worker, _, plain, _ = recorded
    httpx.post(
        f"{plain.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"x-forwarded-for": "203.0.113.7"},
    )
    assert _last_call(worker)["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    httpx.post(f"{plain.url}/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert _last_call(worker)["x-forwarded-for"] == "127.0.0.1"


def test_forwarded_host_headers_pass_only_from_trusted_proxies(
    recorded: tuple[Recorder, Recorder, Proc, Proc],
) -> None:
    worker, _, plain, trusting = recorded
    forged = {
        "forwarded": "for=198.51.100.1;host=evil.example",
        "x-forwarded-host": "evil.example",
        "x-forwarded-proto": "https",
        "x-real-ip": "198.51.100.1",
    }
    httpx.post(f"{plain.url}/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, headers=forged)
    seen = _last_call(worker)
    assert not set(forged) & set(seen)
    httpx.post(
        f"{trusting.url}/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, headers=forged
    )
    seen = _last_call(worker)
    assert {k: seen[k] for k in forged} == forged


def test_body_fields_never_choose_the_upstream(recorded: tuple[Recorder, Recorder, Proc, Proc]) -> None:
    worker, trap, plain, _ = recorded
    client = openai.OpenAI(base_url=f"{plain.url}/v1", api_key="unused", max_retries=0)
    before = len(worker.api_calls())
    answer = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        extra_body={
            "api_base": trap.url,
            "base_url": trap.url + "/v1",
            "extra_body": {"api_base": trap.url, "base_url": trap.url},
            "metadata": {"upstream": trap.url},
        },
    )
    assert answer.choices[0].message.content == f"recorded by {worker.port}"
    assert len(worker.api_calls()) == before + 1
    assert trap.requests == []
    forwarded = json.loads(worker.api_calls()[-1].body)
    assert forwarded["api_base"] == trap.url  # passed on untouched, never acted on
