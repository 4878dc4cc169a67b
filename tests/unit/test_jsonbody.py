"""The depth check on raw request bytes agrees with the nesting of the parsed document."""

from __future__ import annotations

import json
import random

import pytest

from tests.support.nesting import nesting
from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.body import Containers, loads


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b'{"model": "m", "prompt": [1, 2, 3]}', 2),
        (b'{"a": [{"b": [1, 2]}]}', 4),
        (b'{"a": [{"b": [[1]]}]}', 5),
        (b"[[], [[]], [], [[[]]], {}]", 4),
        (b'{"a": "[[[[[[", "b": "]]]]]]{{{{"}', 1),  # brackets in strings are text
        (b'["\\"[[[[", "\\\\", "[[\\\\\\"[["]', 1),  # escaped quotes and backslashes
        (b'{"k,:": [":,", [","]], "": ""}', 3),  # strings of commas and colons, empty strings
        (b'"just a string [["', 0),
        (b"[" * 64 + b"]" * 64, 64),
        (b"[" * 65 + b"]" * 65, 65),
        (b"[" + b"[[[[]]]]," * 40 + b"[[[[[]]]]]]", 6),
        (b" [ [ ] , \n [ [ ] ] ] ", 3),
    ],
)
def test_depth_is_read_from_the_bytes(body: bytes, depth: int) -> None:
    assert nesting(json.loads(body)) == depth
    for limit in (1, 2, 3, 4, 5, 6, 64, 65):
        assert Containers(body).deeper_than(limit) == (depth > limit), limit


def test_siblings_of_every_depth_merge_to_the_deepest() -> None:
    # Adjacent subtrees of differing depths, so merging siblings grows the runs it left.
    rng = random.Random(5)
    for _ in range(300):
        parts = ["[" * d + "]" * d for d in (rng.randrange(1, 70) for _ in range(rng.randrange(1, 12)))]
        body = ("[" + ",".join(parts) + "]").encode()
        depth = nesting(json.loads(body))
        assert Containers(body).deeper_than(64) == (depth > 64)
        assert Containers(body).deeper_than(depth) is False
        assert Containers(body).deeper_than(depth - 1) is True


def test_a_very_deep_body_is_refused_without_recursion() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert Containers(deep).deeper_than(64)
    with pytest.raises(OpenAIError) as caught:
        loads(b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}", 64, 100_000)
    assert (caught.value.status, caught.value.code) == (400, "json_too_deep")


def test_a_body_of_too_many_containers_is_refused_before_it_is_parsed() -> None:
    messages = b",".join([b'{"role": "user", "content": "hi"}'] * 101)
    body = b'{"model": "m", "messages": [' + messages + b"]}"
    assert loads(body, 64, 103)["messages"][100] == {"role": "user", "content": "hi"}  # 103 containers
    with pytest.raises(OpenAIError) as caught:
        loads(body, 64, 102)
    assert (caught.value.status, caught.value.code) == (400, "json_too_complex")


def test_brackets_inside_strings_do_not_count_as_containers() -> None:
    body = b'{"model": "m", "prompt": "' + b"[{" * 5000 + b'"}'
    assert loads(body, 64, 64)["prompt"] == "[{" * 5000
