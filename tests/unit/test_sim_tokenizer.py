"""The simulator's tokenizer: the one token count behind usage, context limits and the prefix cache."""

from __future__ import annotations

import pytest

from vgate_worker.sim import tokenizer
from vgate_worker.sim.content import build_reply, render_chat


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "  leading and trailing  ", "multi\nline\ttext", "naïve café — ünïcode", "a+b=c; x:=y"],
)
def test_pieces_rebuild_the_text(text: str) -> None:
    assert "".join(tokenizer.pieces(text)) == text.rstrip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Hello", 1),
        ("Hello, world!", 4),
        ("don't", 3),
        ("<|im_start|>user", 2),
        ("3.14", 3),
    ],
)
def test_count(text: str, expected: int) -> None:
    assert tokenizer.count(text) == expected


def test_ids_are_stable_and_whitespace_sensitive() -> None:
    assert tokenizer.encode("the cat") == tokenizer.encode("the cat")
    assert tokenizer.encode("cat") != tokenizer.encode(" cat")
    # Equal pieces share an id wherever they occur.
    a, b = tokenizer.encode("dog dog")[1], tokenizer.encode("a dog")[1]
    assert a == b


def test_generated_text_recounts_to_its_usage() -> None:
    reply = build_reply("count me in, please", max_tokens=100)
    assert tokenizer.count(reply.text) == reply.tokens
    padded = build_reply("count me in", max_tokens=37, ignore_eos=True)
    assert padded.tokens == 37
    assert tokenizer.count(padded.text) == 37


def test_chat_prompt_counts_template_tokens() -> None:
    prompt = render_chat([("user", "hi")])
    # default system turn + user turn + assistant header are all counted
    assert tokenizer.count(prompt) > tokenizer.count("hi") + 10
    assert prompt.endswith("<|im_start|>assistant\n")
