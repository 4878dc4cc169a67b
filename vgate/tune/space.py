"""The search space: the vLLM engine settings a VGateDeployment carries, and the values to try.

A setting is named as vLLM names its flag (``max-num-seqs``); ``--grid name=v1,v2`` gives the
values, and the grid is their product. Each setting reaches an engine as that ``vgate worker``
flag (the launcher passes it to vLLM, the simulator honours it), and knows which
``spec.models[]`` field of the VGateDeployment carries it, so the winner becomes a patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Value = int | float | bool | str
Config = Mapping[str, Value]


class SpaceError(ValueError):
    """A ``--grid`` that names an unknown setting or gives a value it cannot take."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["int", "float", "bool", "str"]
    #: ``spec.models[]`` field (camelCase) of a VGateDeployment; ``None``: not carried by the CR.
    cr_field: str | None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def parse(self, text: str) -> Value:
        """One value from the command line, checked against the setting's range."""
        raw = text.strip()
        try:
            if self.kind == "bool":
                if raw.lower() not in {"true", "false", "on", "off", "1", "0"}:
                    raise ValueError(raw)
                return raw.lower() in {"true", "on", "1"}
            value: Value = int(raw) if self.kind == "int" else float(raw) if self.kind == "float" else raw
        except ValueError:
            raise SpaceError(f"{self.name}={text!r}: expected {self.kind}") from None
        if self.choices and value not in self.choices:
            raise SpaceError(f"{self.name}={text!r}: one of {', '.join(self.choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            low_ok = self.minimum is None or value >= self.minimum
            high_ok = self.maximum is None or value <= self.maximum
            if not (low_ok and high_ok):
                raise SpaceError(f"{self.name}={text!r}: must be within [{self.minimum:g}, {self.maximum:g}]")
        return value

    def flag(self, value: Value) -> list[str]:
        """The ``vgate worker`` arguments that set ``value``."""
        if isinstance(value, bool):
            return [f"--{self.name}" if value else f"--no-{self.name}"]
        return [f"--{self.name}", str(value)]


PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param(
            "max-num-seqs", "int", "maxNumSeqs", minimum=1, maximum=4096, help="sequences batched per step"
        ),
        Param(
            "max-num-batched-tokens",
            "int",
            "maxNumBatchedTokens",
            minimum=16,
            maximum=1_048_576,
            help="tokens one engine step may process (prefill budget)",
        ),
        Param(
            "gpu-memory-utilization",
            "float",
            "gpuMemoryUtilization",
            minimum=0.05,
            maximum=1.0,
            help="share of GPU memory vLLM takes; what weights and activations leave is KV cache",
        ),
        Param(
            "enable-chunked-prefill", "bool", "enableChunkedPrefill", help="split long prefills over steps"
        ),
        Param(
            "long-prefill-token-threshold",
            "int",
            "longPrefillTokenThreshold",
            minimum=1,
            maximum=1_048_576,
            help="prompt tokens one prefill takes per step while others are scheduled",
        ),
        Param(
            "enable-prefix-caching", "bool", "enablePrefixCaching", help="reuse KV blocks of shared prefixes"
        ),
        Param("kv-cache-dtype", "str", "kvCacheDtype", choices=("auto", "fp8"), help="fp8 halves KV memory"),
        Param(
            "kv-cache-memory-bytes",
            "int",
            None,
            minimum=1 << 20,
            maximum=1 << 44,
            help="KV cache size outright; vLLM's CPU backend sizes its cache this way "
            "(VLLM_CPU_KVCACHE_SPACE is its older, whole-GiB form)",
        ),
    )
}


def parse_grid(items: Iterable[str]) -> dict[str, tuple[Value, ...]]:
    """``name=v1,v2`` items into the values to try per setting (each setting once)."""
    grid: dict[str, tuple[Value, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().removeprefix("--")
        if not sep or not values.strip():
            raise SpaceError(f"--grid {item!r}: expected NAME=V1,V2,... (e.g. max-num-seqs=8,32)")
        if name not in PARAMS:
            raise SpaceError(f"--grid {item!r}: unknown setting {name!r}; known: {', '.join(PARAMS)}")
        if name in grid:
            raise SpaceError(f"--grid: {name} given twice")
        parsed = [PARAMS[name].parse(v) for v in values.split(",") if v.strip()]
        grid[name] = tuple(dict.fromkeys(parsed))  # in the order given, without repeats
    if not grid:
        raise SpaceError("give at least one --grid NAME=V1,V2,...")
    return grid


def expand(grid: Mapping[str, Sequence[Value]]) -> list[dict[str, Value]]:
    """Every combination, the first setting varying slowest (the order a full grid runs in)."""
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def coordinates(grid: Mapping[str, Sequence[Value]], config: Config) -> tuple[float, ...]:
    """A configuration as a point in the unit cube: each setting's index among its values, scaled.

    The strategies compare configurations by these ordinal positions, so ``max-num-seqs`` 8, 16,
    32 are equally spaced whatever the numbers: the grid's author chose the spacing.
    """
    point = []
    for name, values in grid.items():
        n = len(values)
        point.append(values.index(config[name]) / (n - 1) if n > 1 else 0.5)
    return tuple(point)


def key(config: Config) -> str:
    """A stable, readable identity: ``max-num-seqs=8,max-num-batched-tokens=512``."""
    return ",".join(f"{name}={_text(value)}" for name, value in config.items())


def _text(value: Value) -> str:
    return (
        str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def worker_args(config: Config) -> list[str]:
    """The ``vgate worker`` flags that apply ``config`` (the launcher passes them on to vLLM)."""
    return [arg for name, value in config.items() for arg in PARAMS[name].flag(value)]


def cr_fields(config: Config) -> dict[str, Value]:
    """The ``spec.models[]`` fields a VGateDeployment patch sets for ``config``."""
    return {PARAMS[n].cr_field or n: v for n, v in config.items() if PARAMS[n].cr_field is not None}
