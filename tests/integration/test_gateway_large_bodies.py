"""A body near the size limit does not stall the gateway for its other clients.

A gateway with its default limits (8 MiB) in front of one dry-run worker is posted a
7.5 MiB completion request of 2.7 million token ids three times back to back: the kind of
body whose depth check, cache key and routing text once held the event loop for over a
second. Meanwhile two other clients keep asking: ``GET /health``, and a small chat request
the gateway answers from its cache. Every one of their answers must come quickly.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack

#: Generous: while the posts ran the slowest answer took 0.14-0.19 s on a 2-core machine
#: busy with other work (the parse itself, in C), where such a post once paused the
#: gateway for 1.5 s (a pure-Python depth walk, cache key and routing text per token id).
SLOWEST_ANSWER_S = 0.5
POSTS = 3
SMALL = {"model": MODEL, "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def _large_body() -> bytes:
    """A cacheable completion request of about 7.5 MiB of token ids."""
    rng = random.Random(3)
    ids = [rng.randrange(100) for _ in range(2_700_000)]
    body = json.dumps(
        {"model": MODEL, "prompt": ids, "max_tokens": 1, "temperature": 0}, separators=(",", ":")
    ).encode()
    assert 7 * 2**20 < len(body) < 8 * 2**20
    return body


class Asker(threading.Thread):
    """Asks one request again and again on a keep-alive connection, timing each answer."""

    def __init__(self, port: int, method: str, path: str, body: bytes | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body = port, method, path, body
        self.took: list[float] = []
        self.statuses: set[int] = set()
        self.cache: set[str | None] = set()  # x-vgate-cache of the answers
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"content-type": "application/json"} if self.body else {}
        while not self.done.is_set():
            started = time.perf_counter()
            conn.request(self.method, self.path, body=self.body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            self.took.append(time.perf_counter() - started)
            self.statuses.add(answer.status)
            self.cache.add(answer.getheader("x-vgate-cache"))
            time.sleep(0.005)


@dataclass
class Posted:
    statuses: list[int]
    errors: list[str]
    health: Asker
    chat: Asker


@pytest.fixture(scope="module")
def posted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Posted]:
    with ExitStack() as es:
        stack: Stack = start_stack(es, tmp_path_factory.mktemp("large"), workers=1)
        body = _large_body()
        small = json.dumps(SMALL).encode()
        assert httpx.post(f"{stack.url}/v1/chat/completions", content=small).status_code == 200  # now cached
        health = Asker(stack.gateway.port, "GET", "/health")
        chat = Asker(stack.gateway.port, "POST", "/v1/chat/completions", small)
        health.start()
        chat.start()
        time.sleep(0.2)
        health.took.clear()
        chat.took.clear()
        statuses, errors = [], []
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            for _ in range(POSTS):
                r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
                statuses.append(r.status_code)
                errors.append(r.json()["error"]["message"] if r.status_code != 200 else "")
        health.done.set()
        chat.done.set()
        health.join(10)
        chat.join(10)
        yield Posted(statuses, errors, health, chat)


def test_every_large_body_reaches_the_worker(posted: Posted) -> None:
    # 2.7 million tokens are far beyond the dry-run model's context: the worker's own 400.
    assert posted.statuses == [400] * POSTS
    assert all("maximum context length" in e for e in posted.errors), posted.errors


def test_health_answers_quickly_while_large_bodies_are_posted(posted: Posted) -> None:
    assert posted.health.statuses == {200}
    assert len(posted.health.took) > 20
    assert max(posted.health.took) < SLOWEST_ANSWER_S, sorted(posted.health.took)[-5:]


def test_small_requests_are_answered_quickly_while_large_bodies_are_posted(posted: Posted) -> None:
    assert posted.chat.statuses == {200}
    assert posted.chat.cache == {"hit"}  # answered by the gateway alone, not by the busy worker
    assert len(posted.chat.took) > 20
    assert max(posted.chat.took) < SLOWEST_ANSWER_S, sorted(posted.chat.took)[-5:]
