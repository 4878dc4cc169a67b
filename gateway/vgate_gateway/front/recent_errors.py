"""A bounded ring of the gateway's latest error answers, for ``/stats`` and the status page.

Each entry is what an operator needs to see a pattern — when, which status and error code,
which model and endpoint — and nothing a client sent beyond the model name (cut short): never
a prompt, a header or a key. The ring holds at most :data:`CAPACITY` entries per serving
process, so a flood of errors costs constant memory.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

import orjson

#: Most errors kept; older ones fall off.
CAPACITY = 50
#: Longest model name kept (it is client text when the model does not exist).
MAX_MODEL_CHARS = 80
#: Error bodies longer than this are not parsed for their code (the gateway's own are short).
MAX_PARSED_BODY = 4096
#: The paths named as they are; any other becomes "other" (a client chooses paths).
KNOWN_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})


@dataclass(frozen=True)
class ErrorEntry:
    time: float
    status: int
    code: str | None
    model: str | None
    endpoint: str


class RecentErrors:
    """The last :data:`CAPACITY` error answers, and a count of all of them by status."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._ring: deque[ErrorEntry] = deque(maxlen=capacity)
        self._by_status: Counter[int] = Counter()

    def record(self, status: int, body: bytes | None, model: str | None, path: str) -> None:
        """Note one error answer: its status, the code from its OpenAI error body, the model asked for."""
        self._by_status[status] += 1
        self._ring.append(
            ErrorEntry(
                time=round(time.time(), 3),
                status=status,
                code=error_code(body),
                model=model[:MAX_MODEL_CHARS] if model is not None else None,
                endpoint=path if path in KNOWN_PATHS else "other",
            )
        )

    def snapshot(self) -> dict[str, Any]:
        """Newest first, for ``/stats``."""
        return {
            "capacity": self._ring.maxlen,
            "total_by_status": {str(s): n for s, n in sorted(self._by_status.items())},
            "recent": [asdict(e) for e in reversed(self._ring)],
        }


def error_code(body: bytes | None) -> str | None:
    """``error.code`` (else ``error.type``) of an OpenAI error body; None for anything else."""
    if not body or len(body) > MAX_PARSED_BODY:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return str(code)[:MAX_MODEL_CHARS] if code is not None else None
