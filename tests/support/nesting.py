"""The reference for the gateway's depth check: nesting walked on the parsed document."""

from __future__ import annotations

from typing import Any


def nesting(value: Any) -> int:
    """How many containers enclose the deepest value (0 for a scalar)."""
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    return 0
