"""The status page and the recent errors are served on the internal port only."""

from __future__ import annotations

import httpx

from tests.integration.conftest import Stack


def test_status_page_is_internal_and_stats_lists_recent_errors(stack: Stack) -> None:
    public = httpx.get(f"{stack.url}/status")
    assert public.status_code == 404
    assert public.json()["error"]["code"] == "not_found"
    page = httpx.get(f"{stack.gateway.internal_url}/status")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"

    bad = httpx.post(
        f"{stack.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    errors = httpx.get(f"{stack.gateway.internal_url}/stats").json()["errors"]
    newest = errors["recent"][0]
    assert (newest["status"], newest["endpoint"]) == (400, "/v1/chat/completions")
    answered = bad.json()["error"]
    assert newest["code"] == (answered["code"] or answered["type"])
    assert errors["total_by_status"]["404"] >= 1  # the public /status above
