"""Reading the settings tables of the docs: the default a row writes, as the code would write it."""

from __future__ import annotations

import re
from typing import Any


def documented_default(value: Any) -> str:
    """How a table of settings writes a default: ``true``, ``30`` (not ``30.0``), ``0.5``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table_default(doc: str, variable: str, column: int) -> str | None:
    """The first backticked word in ``column`` of ``variable``'s row, if it has one."""
    row = re.search(rf"^\| `{variable}` \|(.*)$", doc, re.M)
    assert row is not None, variable
    cell = row.group(1).split(" | ")[column]
    found = re.match(r"\s*`([^`]*)`", cell)
    return found.group(1) if found else None
