"""What the simulated model "says": deterministic replies, the chat template, embeddings.

The reply to a prompt is ``[dry-run] echo: <last user text>``, cut to the token budget.
With vLLM's ``ignore_eos`` or ``min_tokens`` it is padded by repeating itself, so a
benchmark can ask for exactly N output tokens.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vgate_worker.sim import tokenizer

ECHO_PREFIX = "[dry-run] echo:"
# Qwen2.5's chat template inserts this system message when the request has none.
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclass(frozen=True)
class Reply:
    """The generated text, as the delta each generated token contributes."""

    deltas: tuple[str, ...]
    finish_reason: str
    stop_reason: str | None = None

    @property
    def text(self) -> str:
        """The whole completion text."""
        return "".join(self.deltas)

    @property
    def tokens(self) -> int:
        """Completion tokens (vLLM counts at least one even when the text is empty)."""
        return max(1, len(self.deltas))

    def token_ids(self) -> list[int]:
        """The ids of the generated tokens (an empty text is the end-of-text token alone)."""
        return [tokenizer.token_id(piece) for piece in self.deltas] or [tokenizer.token_id("<|endoftext|>")]


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """The prompt Qwen2.5's ChatML template builds, ending with the assistant's turn."""
    parts = []
    if not messages or messages[0][0] != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    parts += [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def build_reply(
    source: str,
    max_tokens: int,
    *,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    stop: Sequence[str] = (),
    lora: str | None = None,
) -> Reply:
    """The deterministic completion for ``source`` within ``max_tokens``; a LoRA adapter names itself."""
    prefix = ECHO_PREFIX if lora is None else f"[dry-run lora {lora}] echo:"
    base = tokenizer.pieces(f"{prefix} {source}")
    target = max_tokens if ignore_eos else max(len(base), min(min_tokens, max_tokens))
    out = list(base)
    while len(out) < target:
        # Repeat the reply, each repetition a new sentence-like run of pieces.
        out += [" " + base[0].lstrip(), *base[1:]]
    out = out[: max(target, len(base))]
    finish = "stop"
    if len(out) > max_tokens:
        out, finish = out[:max_tokens], "length"
    elif ignore_eos:
        finish = "length"
    return _apply_stop(out, finish, stop)


def _apply_stop(pieces: list[str], finish: str, stop: Sequence[str]) -> Reply:
    """Cut the text before the earliest stop string, as vLLM does (the stop string is not returned)."""
    text = "".join(pieces)
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return Reply(tuple(pieces), finish)
    cut, word = min(hits)
    end = cut + len(word)
    deltas: list[str] = []
    pos = 0
    for piece in pieces:
        if pos >= end:
            break  # generation stops at the token that completes the stop string
        deltas.append(piece[: max(0, cut - pos)])
        pos += len(piece)
    return Reply(tuple(deltas), "stop", word)


def embed(token_ids: Sequence[int], dim: int) -> list[float]:
    """A unit vector from hashed token features: equal texts give equal vectors, similar ones similar."""
    vec = [0.0] * dim
    for tid in token_ids:
        for k in range(4):
            h = (tid * 0x9E3779B1 + k * 0x85EBCA77) & 0xFFFFFFFF
            vec[h % dim] += 1.0 if (h >> 20) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:
        vec[0], norm = 1.0, 1.0
    return [v / norm for v in vec]


def encode_base64(vec: Sequence[float]) -> str:
    """The ``encoding_format=base64`` form: little-endian float32, as OpenAI and vLLM send it."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
