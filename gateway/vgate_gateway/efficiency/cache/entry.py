"""A cache entry, and how its bytes are re-stamped for the request that replays it.

A replay carries every field the worker sent, with two changes: the response ``id`` is
the one the worker gives the replaying request (vLLM names a response after its request
id) and ``created`` is the current time.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

from vgate_gateway.protocol import Usage


@dataclass(frozen=True)
class Entry:
    """A stored answer: the worker's bytes, how to re-stamp them, their media type and usage."""

    body: bytes
    stamp: Stamp
    media_type: str = "application/json"
    #: A stream's usage as read when it passed (a JSON answer's is read from its body).
    usage: Usage | None = None


_ID = re.compile(rb'"id":\s*"([^"\\]*)"')
_CREATED = re.compile(rb'"created":\s*(\d+)')


@dataclass(frozen=True)
class Stamp:
    """Rewrites an answer's ``id`` and ``created`` for another request, in its bytes.

    The tokens are found once, in the answer's first object; every occurrence is replaced
    (each chunk of a stream repeats them), at the cost of a byte search per chunk.
    """

    id_token: bytes = b""
    prefix: str = ""
    created_token: bytes = b""

    @classmethod
    def of(cls, first: bytes) -> Stamp:
        """The stamp of an answer whose first JSON object (or SSE event) is ``first``."""
        found_id, found_created = _ID.search(first), _CREATED.search(first)
        id_token = found_id.group(0) if found_id else b""
        name = found_id.group(1).decode(errors="replace") if found_id else ""
        prefix = name.split("-", 1)[0] if "-" in name else ""
        return cls(id_token, prefix, found_created.group(0) if found_created else b"")

    def for_request(self, request_id: str, created: int | None = None) -> Restamp:
        """What to replace for a request with ``request_id``, created now (or at ``created``)."""
        pairs = []
        if self.id_token:
            name = f"{self.prefix}-{request_id}" if self.prefix and request_id else _fresh(self.prefix)
            pairs.append((self.id_token, b'"id":' + json.dumps(name).encode()))
        if self.created_token:
            when = int(time.time()) if created is None else created
            pairs.append((self.created_token, b'"created":' + str(when).encode()))
        return Restamp(tuple(pairs))


def _fresh(prefix: str) -> str:
    return f"{prefix or 'resp'}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Restamp:
    """The replacements for one response; :meth:`apply` to each chunk of it."""

    pairs: tuple[tuple[bytes, bytes], ...] = ()

    def apply(self, chunk: bytes) -> bytes:
        for old, new in self.pairs:
            chunk = chunk.replace(old, new)
        return chunk
