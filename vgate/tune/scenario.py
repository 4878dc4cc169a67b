"""The workload language: genai-bench's traffic scenarios, a prompts file, and the load sweep.

    D(100,100)              every request: 100 prompt tokens, 100 output tokens
    N(480,240)/(300,150)    prompt and output lengths drawn from normal distributions (mean, sd)
    U(50,150)/(20,80)       uniform lengths between min and max
    FILE.jsonl              real prompts: {"prompt": "...", "output_tokens": 128} a line

The text is genai-bench's (``D``, ``N``, ``U``); a scenario is pure data, sampled with a seeded
RNG, so a tuning run sends the same requests to every configuration it compares. The load is a
concurrency sweep (``--concurrency 1,4``: that many clients, each sending its next request as
soon as the last one ends) or a request-rate sweep (``--rate 2,8``: Poisson arrivals).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class ScenarioError(ValueError):
    """A scenario, sweep or prompts file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Shape:
    """One request's size: prompt tokens and the output tokens it asks for (``max_tokens``)."""

    prompt_tokens: int
    output_tokens: int
    #: A real prompt from a prompts file; ``None``: synthesise ``prompt_tokens`` of text.
    prompt: str | None = None


@dataclass(frozen=True)
class Deterministic:
    input_tokens: int
    output_tokens: int

    def text(self) -> str:
        return f"D({self.input_tokens},{self.output_tokens})"

    def draw(self, rng: random.Random) -> Shape:
        return Shape(self.input_tokens, self.output_tokens)


@dataclass(frozen=True)
class Normal:
    mean_in: float
    sd_in: float
    mean_out: float
    sd_out: float

    def text(self) -> str:
        return f"N({self.mean_in:g},{self.sd_in:g})/({self.mean_out:g},{self.sd_out:g})"

    def draw(self, rng: random.Random) -> Shape:
        # genai-bench clips at one token: a length is never zero or negative.
        return Shape(
            max(1, round(rng.gauss(self.mean_in, self.sd_in))),
            max(1, round(rng.gauss(self.mean_out, self.sd_out))),
        )


@dataclass(frozen=True)
class Uniform:
    min_in: int
    max_in: int
    min_out: int
    max_out: int

    def text(self) -> str:
        return f"U({self.min_in},{self.max_in})/({self.min_out},{self.max_out})"

    def draw(self, rng: random.Random) -> Shape:
        return Shape(rng.randint(self.min_in, self.max_in), rng.randint(self.min_out, self.max_out))


@dataclass(frozen=True)
class Prompts:
    """Real prompts, replayed in random order (with replacement once every prompt has been sent)."""

    path: str
    entries: tuple[Shape, ...]

    def text(self) -> str:
        return self.path

    def draw(self, rng: random.Random) -> Shape:
        return rng.choice(self.entries)


Scenario = Deterministic | Normal | Uniform | Prompts

_NUM = r"\s*(\d+(?:\.\d+)?)\s*"
_PAIR = rf"\({_NUM},{_NUM}\)"
_FORMS = {
    "D": re.compile(rf"D{_PAIR}"),
    "N": re.compile(rf"N{_PAIR}/{_PAIR}"),
    "U": re.compile(rf"U{_PAIR}/{_PAIR}"),
}


def parse_scenario(text: str) -> Scenario:
    """``D(in,out)``, ``N(mean,sd)/(mean,sd)``, ``U(min,max)/(min,max)`` or a ``.jsonl`` path."""
    spec = text.strip()
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return load_prompts(Path(spec))
    form = spec[:1].upper()
    match = _FORMS[form].fullmatch(spec.upper()) if form in _FORMS else None
    if match is None:
        raise ScenarioError(
            f"scenario {text!r}: expected D(in,out), N(mean_in,sd_in)/(mean_out,sd_out), "
            "U(min_in,max_in)/(min_out,max_out) or a .jsonl file of prompts"
        )
    nums = [float(g) for g in match.groups()]
    if form == "N":
        if nums[0] < 1 or nums[2] < 1 or nums[1] < 0 or nums[3] < 0:
            raise ScenarioError(f"scenario {text!r}: means must be at least 1 and deviations not negative")
        return Normal(*nums)
    ints = [_whole(n, text) for n in nums]
    if form == "D":
        return Deterministic(*ints)
    if ints[0] > ints[1] or ints[2] > ints[3]:
        raise ScenarioError(f"scenario {text!r}: each range must be (min,max) with min <= max")
    return Uniform(*ints)


def _whole(value: float, text: str) -> int:
    if value != int(value) or value < 1:
        raise ScenarioError(f"scenario {text!r}: token counts must be whole numbers of at least 1")
    return int(value)


def load_prompts(path: Path) -> Prompts:
    """Read a JSONL prompts file; each line needs ``prompt`` and may give ``output_tokens`` (128)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ScenarioError(f"prompts file {path}: {exc.strerror or exc}") from None
    entries: list[Shape] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, out = row["prompt"], int(row.get("output_tokens", 128))
        except (ValueError, KeyError, TypeError) as exc:
            raise ScenarioError(
                f"{path}:{number}: expected {{'prompt': str, 'output_tokens': int}} ({exc})"
            ) from None
        if not isinstance(prompt, str) or not prompt or out < 1:
            raise ScenarioError(f"{path}:{number}: the prompt must be text and output_tokens at least 1")
        entries.append(Shape(len(prompt.split()), out, prompt))
    if not entries:
        raise ScenarioError(f"prompts file {path} has no prompts")
    return Prompts(str(path), tuple(entries))


def sample(scenario: Scenario, count: int, seed: int) -> list[Shape]:
    """``count`` request shapes; the same seed gives the same list, for every configuration."""
    rng = random.Random(seed)
    return [scenario.draw(rng) for _ in range(count)]


# --- the load sweep ----------------------------------------------------------------------------

LoadKind = Literal["concurrency", "rate"]


@dataclass(frozen=True)
class Sweep:
    """The load levels each configuration is measured at, lightest first."""

    kind: LoadKind
    levels: tuple[float, ...]

    def label(self, level: float) -> str:
        return f"c={level:g}" if self.kind == "concurrency" else f"{level:g} req/s"


def parse_sweep(kind: LoadKind, text: str) -> Sweep:
    """``1,4,16`` clients, or ``0.5,2,8`` requests per second."""
    try:
        levels = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ScenarioError(f"--{kind} {text!r}: expected numbers separated by commas") from None
    if not levels or levels[0] <= 0:
        raise ScenarioError(f"--{kind} {text!r}: give at least one level, each above zero")
    if kind == "concurrency" and any(level != int(level) for level in levels):
        raise ScenarioError(f"--concurrency {text!r}: a number of clients is a whole number")
    return Sweep(kind, tuple(levels))


def requests_for(sweep: Sweep, level: float, per_level: int, minimum: Sequence[int] = (8,)) -> int:
    """Requests to send at one level: enough for every client to send several."""
    floor = max(minimum)
    if sweep.kind == "concurrency":
        return max(per_level, floor, int(level) * 4)
    return max(per_level, floor)
