"""What the cache may answer, and the key it answers by.

Only requests whose answer is reproducible are cached by default: embeddings, and
completions with ``temperature`` 0 or an explicit ``seed``. A client overrides this per
request with the ``x-vgate-cache`` header (``bypass`` or ``force``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import Enum
from typing import Any

import orjson

from vgate_gateway.protocol import CACHE_HEADER, Kind

#: Finish reasons of answers worth replaying; ``tool_calls``, ``abort`` etc. are not cached.
CACHEABLE_FINISH = frozenset({"stop", "length"})


class CacheMode(Enum):
    """What a request asked of the cache."""

    DEFAULT = "default"
    BYPASS = "bypass"
    FORCE = "force"


def parse_cache_mode(header: str | None) -> CacheMode:
    """Read the ``x-vgate-cache`` request header; raises ValueError on an unknown value."""
    if header is None or not header.strip():
        return CacheMode.DEFAULT
    value = header.strip().lower()
    if value in ("bypass", "force"):
        return CacheMode(value)
    raise ValueError(f"invalid {CACHE_HEADER} header {header!r}: use 'bypass' or 'force'")


def is_deterministic(kind: Kind, body: Mapping[str, Any]) -> bool:
    """Whether the same request is expected to produce the same answer."""
    if kind is Kind.EMBEDDINGS:
        return True
    temperature = body.get("temperature")
    if body.get("seed") is not None:
        return True
    # An absent temperature means the model's default (1.0, or the model's generation config).
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


def is_cacheable(kind: Kind, body: Mapping[str, Any], mode: CacheMode) -> bool:
    """Whether the cache (and in-flight dedup) may answer this request."""
    if mode is CacheMode.BYPASS:
        return False
    return mode is CacheMode.FORCE or is_deterministic(kind, body)


def request_key(kind: Kind, model: str, body: Mapping[str, Any], tenant: str | None = None) -> str:
    """SHA-256 over the endpoint kind, model, tenant and the canonical JSON of the request.

    Every field is part of the key, delivery fields too (``stream``, ``stream_options``):
    an entry is replayed exactly as the worker sent it. Only a string ``user`` is dropped
    (the end user's name changes nothing in the answer; any other value is one the worker
    validates, so it stays).
    """
    normalized = {k: v for k, v in body.items() if not (k == "user" and isinstance(v, str))}
    canonical = orjson.dumps([kind, model, tenant, normalized], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def response_cacheable(kind: Kind, response: Mapping[str, Any]) -> bool:
    """Whether an upstream answer is complete and successful enough to replay."""
    if "error" in response or response.get("object") == "error":
        return False
    if kind is Kind.EMBEDDINGS:
        return isinstance(response.get("data"), list) and bool(response["data"])
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH for c in choices)
