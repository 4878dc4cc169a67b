"""The gateway's status page in a real headless Chromium, against a live local stack.

The page (``GET /status`` on the internal port) polls ``/stats``: it must show each worker of
the model with its state, follow a worker's death within a few polls, list recent errors, and
run without one console error. The screenshot it leaves is a test artifact
(``$VGATE_TEST_ARTIFACTS``, default ``test-artifacts/``); with ``VGATE_UPDATE_SCREENSHOT=1``
(``make status-screenshot``) it also replaces docs/status-page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.browser import Page, chromium
from tests.support.chart import ROOT

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(os.environ.get("VGATE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
DOC_SCREENSHOT = ROOT / "docs" / "status-page.png"
ROWS = "JSON.stringify([...document.querySelectorAll('tr[data-worker]')].map(r => [r.dataset.worker, r.dataset.state]))"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Stack, Page]]:
    with ExitStack() as es:
        stack = start_stack(es, tmp_path, workers=2)
        client = stack.client()
        for i in range(6):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=8
            )
        for _ in range(2):  # the second is a cache hit
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "same"}], temperature=0
            )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "?"}])
        page = es.enter_context(chromium(tmp_path))
        page.send("Page.navigate", url=f"{stack.gateway.internal_url}/status")
        yield stack, page


def _rows(page: Page) -> list[list[str]]:
    rows: list[list[str]] = json.loads(page.evaluate(ROWS))
    return rows


def test_the_page_shows_the_workers_follows_a_death_and_logs_no_error(
    live: tuple[Stack, Page], tmp_path: Path
) -> None:
    stack, page = live
    urls = sorted(w.url for w in stack.workers)
    page.wait_for(
        f"{ROWS} === {json.dumps(json.dumps([[u, 'healthy'] for u in urls], separators=(',', ':')))}"
    )
    assert page.evaluate("document.getElementById('conn').textContent") == "live"
    title = page.evaluate(f"document.querySelector('h3[data-model=\"{MODEL}\"]').textContent")
    assert "2/2 healthy replicas" in title
    # The rejected model is in the recent errors, with its status and code.
    error = page.wait_for("document.querySelector('#errors tr[data-status=\"404\"]')?.textContent")
    assert "model_not_found" in error
    assert "no-such-model" in error
    assert page.evaluate("document.getElementById('errors').textContent").count("/ready") == 0, (
        "probes are not errors"
    )
    # Routing split: seven upstream requests spread over both workers, shares adding up to 100 %.
    shares = page.evaluate(
        "[...document.querySelectorAll('#routing .bar em')].map(e => parseFloat(e.textContent))"
    )
    assert len(shares) == 2
    assert abs(sum(shares) - 100) < 0.2

    dead = stack.workers[0]
    dead.stop(signal.SIGKILL)
    page.wait_for(f"document.querySelector('tr[data-worker=\"{dead.url}\"]')?.dataset.state === 'unhealthy'")
    assert dict(map(tuple, _rows(page))) == {dead.url: "unhealthy", stack.workers[1].url: "healthy"}
    assert "1/2 healthy replicas" in page.evaluate(
        f"document.querySelector('h3[data-model=\"{MODEL}\"]').textContent"
    )
    shot = page.screenshot(tmp_path / "status-page.png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "status-page.png")
    if os.environ.get("VGATE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOC_SCREENSHOT)
    page.evaluate("1")  # collect the events of the last poll
    assert page.errors == []


def test_the_page_draws_a_queues_section_generically(live: tuple[Stack, Page]) -> None:
    _, page = live
    page.wait_for("document.querySelectorAll('tr[data-worker]').length === 2")
    assert "no request queue" in page.evaluate("document.getElementById('queues').textContent")
    # /stats has no queues yet: the page's own renderer is given one, as the gateway will send it.
    cells = page.evaluate(
        """(() => {
            renderQueues({queues: {"m": {"depth": 3, "wait_p50_s": 0.25, "wait_p95_s": 1.5, "note": "x"}}});
            const row = document.querySelector('#queues tr[data-queue="m"]');
            const head = [...document.querySelectorAll('#queues th')].map(th => th.textContent);
            return {head, cells: [...row.children].map(td => td.textContent)};
        })()"""
    )
    assert cells == {
        "head": ["model", "depth", "wait p50 s", "wait p95 s"],
        "cells": ["m", "3", "0.250", "1.50"],
    }
    assert page.errors == []


def test_a_script_error_on_the_page_is_caught(live: tuple[Stack, Page]) -> None:
    """The console capture above would see a broken page: a drawing error is reported, not swallowed."""
    _, page = live
    page.wait_for("document.querySelectorAll('tr[data-worker]').length === 2")
    page.evaluate("setTimeout(() => render({upstreams: 'not a list'}), 0); 1")
    page.wait_for("new Promise(r => setTimeout(() => r(true), 100))")
    assert any(e.startswith("uncaught: TypeError") for e in page.errors), page.errors
