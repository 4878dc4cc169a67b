"""Simulator settings: command-line flags over ``VGATE_SIM_*`` environment variables.

Timing defaults approximate Qwen2.5-1.5B-Instruct-AWQ on one GPU; docs/simulator.md
explains where each number comes from.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vgate_worker.settings import DEFAULT_MODEL


class SimSettings(BaseSettings):
    """Everything one simulated worker needs; validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="VGATE_SIM_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    served_model_name: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODEL])
    max_model_len: int = Field(4096, ge=16)
    max_num_seqs: int = Field(256, ge=1)
    # Prefill tokens one engine step may process (vLLM's chunked-prefill budget).
    max_num_batched_tokens: int = Field(2048, ge=16)
    kv_cache_tokens: int = Field(262_144, ge=16)
    block_size: int = Field(16, ge=1)
    # Seconds per decode step with one running sequence (1 / 650 tokens/s).
    decode_step_s: float = Field(1 / 650, gt=0)
    # Relative growth of the step time per extra running sequence (650 -> 2,500 tok/s at batch 4).
    decode_batch_slope: float = Field(0.0133, ge=0)
    prefill_tokens_per_s: float = Field(20_000.0, gt=0)
    # Divides every simulated duration: 10 runs ten times faster with the same shape.
    speed: float = Field(1.0, gt=0)
    embedding_dim: int = Field(384, ge=8)
    enable_prompt_tokens_details: bool = False
    #: Seconds before the server listens, as vLLM loading weights and warming up (a cold
    #: start): connections are refused until then, as they are by vLLM, which listens last.
    startup_delay_s: float = Field(0.0, ge=0, le=3600)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        # The environment gives one string; allow "a,b" or "a b" there.
        if isinstance(value, str):
            return [n for n in value.replace(",", " ").split() if n]
        return value

    @field_validator("served_model_name")
    @classmethod
    def _names_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one served model name is required")
        return value

    @model_validator(mode="after")
    def _kv_holds_one_request(self) -> SimSettings:
        # vLLM refuses to start when one max-length request cannot fit in the KV cache.
        if self.kv_cache_tokens < self.max_model_len + self.block_size:
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) must exceed max_model_len ({self.max_model_len})"
            )
        return self

    @property
    def model_name(self) -> str:
        """The primary name: the ``model_name`` metrics label and the models' ``root``."""
        return self.served_model_name[0]


def build_parser() -> argparse.ArgumentParser:
    """Flags mirroring vLLM's where vLLM has them; every default comes from ``SimSettings``."""
    p = argparse.ArgumentParser(
        prog="vgate worker --dry-run",
        description="Simulate a vLLM OpenAI-compatible server (no GPU, no model).",
        argument_default=argparse.SUPPRESS,
        epilog="Each flag can also be set as VGATE_SIM_<NAME> (e.g. VGATE_SIM_MAX_NUM_SEQS=2); "
        "flags win. Defaults and their sources: docs/simulator.md.",
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--served-model-name", nargs="+", dest="served_model_name")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--kv-cache-tokens", type=int, help="KV cache capacity in tokens")
    p.add_argument("--block-size", type=int)
    p.add_argument("--decode-step-s", type=float, help="seconds per decode step at batch 1")
    p.add_argument("--decode-batch-slope", type=float, help="step-time growth per extra sequence")
    p.add_argument("--prefill-tokens-per-s", type=float)
    p.add_argument("--speed", type=float, help="time multiplier: 10 = ten times faster")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--enable-prompt-tokens-details", action="store_true")
    p.add_argument(
        "--startup-delay-s",
        type=float,
        help="seconds before listening, like vLLM loading a model (default 0)",
    )
    p.add_argument("--log-level")
    # Accepted for command-line compatibility with vLLM; they change nothing here.
    p.add_argument(
        "--model",
        dest="_model",
        metavar="MODEL",
        help="served under this name unless --served-model-name is given",
    )
    for ignored in ("--quantization", "--dtype", "--gpu-memory-utilization", "--api-key"):
        p.add_argument(ignored, dest=f"_ignored_{ignored[2:]}", help=argparse.SUPPRESS)
    return p


def settings_from_argv(argv: Sequence[str]) -> SimSettings:
    """Parse flags; unset flags fall back to the environment, then to defaults."""
    ns = vars(build_parser().parse_args(list(argv)))
    given = {k: v for k, v in ns.items() if not k.startswith("_")}
    # vLLM serves a model under its --model id when no --served-model-name is given.
    if "_model" in ns and "served_model_name" not in given:
        given["served_model_name"] = [ns["_model"]]
    return SimSettings(**given)
