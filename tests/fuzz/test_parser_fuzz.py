"""hypothesis against the request parser: any bytes in, a parsed request or a 400 out, nothing else.

Bodies are arbitrary bytes, and JSON documents with every kind of string (lone surrogates
included), huge and tiny numbers, deep nesting. Whatever parses must also survive what the
gateway does next with it: the prompt text for routing and the cache key.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.nesting import nesting
from vgate_gateway.efficiency.cache.policy import request_key
from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.body import Containers, loads
from vgate_gateway.protocol import Kind, Request

ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(ANY_CHAR, max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = {Kind.CHAT: "messages", Kind.COMPLETIONS: "prompt", Kind.EMBEDDINGS: "input"}


def _survive(kind: Kind, body: bytes) -> None:
    refused: OpenAIError | None = None
    try:
        req = Request.checked(kind, body, loads(body, 64, 100_000))
    except OpenAIError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 400
        assert set(refused.body()["error"]) == {"message", "type", "param", "code"}
        return
    req.prompt_text().encode()  # routing hashes it: must be encodable
    request_key(kind, req.model, req.payload, tenant=None)


@pytest.mark.parametrize("kind", list(Kind))
@given(body=st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_a_400(kind: Kind, body: bytes) -> None:
    _survive(kind, body)


@pytest.mark.parametrize("kind", list(Kind))
@given(value=JSON, model=st.text(ANY_CHAR, max_size=10), extra=JSON, ascii_only=st.booleans())
def test_any_json_request_is_parsed_or_refused_with_a_400(
    kind: Kind, value: Any, model: str, extra: Any, ascii_only: bool
) -> None:
    doc = {"model": model, FIELDS[kind]: value, "extra": extra, "stream": False}
    text = json.dumps(doc, ensure_ascii=ascii_only)
    # Lone surrogates cannot be UTF-8 encoded: clients send them as \\u escapes or raw bytes.
    body = text.encode("utf-8", "surrogatepass")
    _survive(kind, body)


@given(depth=st.integers(min_value=1, max_value=3000), opener=st.sampled_from(["[", '{"a":']))
def test_any_nesting_depth_is_parsed_or_refused_with_a_400(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + "1" + closer * depth
    _survive(Kind.CHAT, f'{{"model": "m", "messages": [{{"role": "user", "content": {inner}}}]}}'.encode())


@given(digits=st.integers(min_value=1, max_value=20000))
def test_any_integer_length_is_parsed_or_refused_with_a_400(digits: int) -> None:
    _survive(Kind.COMPLETIONS, b'{"model": "m", "prompt": "x", "seed": ' + b"7" * digits + b"}")


# Strings made of what the depth check on bytes must see through: brackets, quotes, escapes.
TRICKY = st.text(st.sampled_from('[]{}",:\\ a\u00e9'), max_size=6)
NESTED = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
    max_leaves=60,
)


@given(doc=NESTED, limit=st.integers(min_value=1, max_value=12), indent=st.sampled_from([None, 0, 2]))
def test_the_depth_read_from_the_bytes_is_the_depth_of_the_document(
    doc: Any, limit: int, indent: int | None
) -> None:
    body = json.dumps(doc, indent=indent, ensure_ascii=indent is None).encode()
    assert Containers(body).deeper_than(limit) == (nesting(doc) > limit)
