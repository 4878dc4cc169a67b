"""Where a request stands in its model's queue: its class, weight and deadline.

The caller's key sets the class (``priority=``), the weight (``weight=``) and a default
deadline (``deadline_ms=``) in the keys file. A request may say more with two headers:

- ``x-vgate-priority: high|normal|low`` — a request may always lower its class (a batch job
  behind a key shared with interactive traffic); it may raise it only as far as the key's
  ``max_priority`` (403 ``priority_not_allowed`` beyond).
- ``x-vgate-deadline-ms: N`` — the request must reach a worker within N ms or be refused,
  at once when the queue ahead of it already says it cannot (see the dispatcher).

Neither header goes upstream. Read before the body, so a refusal costs no parsing.
"""

from __future__ import annotations

from collections.abc import Sequence

from vgate_gateway.errors import OpenAIError, invalid_request
from vgate_gateway.front.auth import PRIORITIES, ApiKey
from vgate_gateway.protocol import DEFAULT_SCHEDULE, Priority, Schedule

PRIORITY_HEADER = "x-vgate-priority"
DEADLINE_HEADER = "x-vgate-deadline-ms"
_PRIORITY = PRIORITY_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()
#: The longest deadline a header may ask for (a day): beyond it, a deadline means nothing.
MAX_DEADLINE_MS = 86_400_000


def schedule_of(key: ApiKey, headers: Sequence[tuple[bytes, bytes]], now: float) -> Schedule:
    """The schedule of a request of ``key`` with ``headers`` arriving at ``now`` (monotonic), or a 4xx."""
    priority, deadline_ms = key.priority, key.deadline_ms
    for name, value in headers:
        if name == _PRIORITY:
            priority = _priority(key, value)
        elif name == _DEADLINE:
            deadline_ms = _deadline_ms(value)
    if priority is DEFAULT_SCHEDULE.priority and deadline_ms is None and key.weight == 1.0:
        return DEFAULT_SCHEDULE
    deadline = now + deadline_ms / 1000 if deadline_ms is not None else None
    return Schedule(priority, key.weight, deadline)


def _priority(key: ApiKey, value: bytes) -> Priority:
    asked = PRIORITIES.get(value.decode("latin-1").strip().lower())
    if asked is None:
        raise invalid_request(
            f"Invalid '{PRIORITY_HEADER}' header: expected one of {', '.join(PRIORITIES)}.",
            param=PRIORITY_HEADER,
        )
    if asked < key.ceiling:
        raise OpenAIError(
            403,
            f"This API key may not ask for priority '{asked.label}' (at most '{key.ceiling.label}').",
            code="priority_not_allowed",
            param=PRIORITY_HEADER,
        )
    return asked


def _deadline_ms(value: bytes) -> int:
    text = value.decode("latin-1").strip()
    if not text.isdigit() or not 0 < int(text) <= MAX_DEADLINE_MS:
        raise invalid_request(
            f"Invalid '{DEADLINE_HEADER}' header: expected milliseconds from 1 to {MAX_DEADLINE_MS}.",
            param=DEADLINE_HEADER,
        )
    return int(text)
