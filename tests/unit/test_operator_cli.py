"""``vgate operator``'s start-up: peered replicas get distinct kopf priorities.

Bad flags and settings are refused as a process in ``tests/integration/test_operator_cli.py``.
"""

from __future__ import annotations

import pytest


def test_peered_replicas_get_distinct_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf pauses every peer when two share a priority: replicas of one Deployment must not tie."""
    import kopf

    from vgate_operator import cli

    seen: list[dict[str, object]] = []

    async def no_problem() -> None:
        return None

    monkeypatch.setattr(cli, "_credentials_problem", no_problem)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.append(kwargs))
    for _ in range(3):
        assert cli.main(["--peering", "vgate"]) == 0
    assert cli.main(["--peering", "vgate", "--priority", "7"]) == 0
    priorities = [kw["priority"] for kw in seen]
    assert len(set(priorities[:3])) == 3
    assert priorities[3] == 7
    assert {kw["peering_name"] for kw in seen} == {"vgate"}
