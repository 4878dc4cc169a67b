"""Simulator settings: command-line flags over ``VGATE_SIM_*`` environment variables.

Timing defaults approximate Qwen2.5-1.5B-Instruct-AWQ on one GPU; docs/simulator.md
explains where each number comes from.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vgate_worker.settings import DEFAULT_MODEL, SchedulingPolicy


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
    #: KV-cache capacity in tokens; unset: what the memory model below leaves for it.
    kv_cache_tokens: int | None = Field(None, ge=16)
    block_size: int = Field(16, ge=1)
    # The memory model, as vLLM sizes its KV cache: the share of the GPU it may take, less the
    # weights and activations, divided by the bytes one token's keys and values need.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    gpu_memory_gib: float = Field(24.0, gt=0)
    #: Weights plus peak activations (Qwen2.5-1.5B-AWQ: about 1.1 GiB of weights).
    non_kv_memory_gib: float = Field(2.0, ge=0)
    #: 28 layers x 2 KV heads x 128 dims x (key + value) x 2 bytes.
    kv_bytes_per_token: int = Field(28_672, ge=1)
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    #: vLLM's ``--kv-cache-memory-bytes``: the KV cache's size outright, instead of the GPU share
    #: (its CPU backend also takes it as VLLM_CPU_KVCACHE_SPACE, in whole GiB).
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    enable_chunked_prefill: bool = True
    #: vLLM's ``--long-prefill-token-threshold``: while more than one request is running or
    #: waiting, one request's prefill takes at most this many tokens a step, so a short prompt
    #: is not stuck behind a long one's chunk (0: no cap, vLLM's default).
    long_prefill_token_threshold: int = Field(0, ge=0)
    #: vLLM's ``--scheduling-policy``: ``fcfs`` admits in arrival order and ignores a request's
    #: ``priority``; ``priority`` admits by ``(priority, arrival)`` and preempts the least urgent.
    scheduling_policy: SchedulingPolicy = "fcfs"
    enable_prefix_caching: bool = True
    # Seconds per decode step with one running sequence (1 / 650 tokens/s).
    decode_step_s: float = Field(1 / 650, gt=0)
    # Relative growth of the step time per extra running sequence (650 -> 2,500 tok/s at batch 4).
    decode_batch_slope: float = Field(0.0133, ge=0)
    prefill_tokens_per_s: float = Field(20_000.0, gt=0)
    #: Seconds per (token x context token) of prefill attention: a chunk of c tokens after p
    #: already computed costs c * (p + c / 2) of it. 0 on a GPU, where FlashAttention keeps a
    #: prompt's cost linear at these lengths; vLLM's CPU attention is not (vgate.tune.calibrate).
    prefill_attention_s: float = Field(0.0, ge=0)
    #: Seconds per KV-cache token a decode step attends to (summed over the batch): 0 on a GPU,
    #: where a step is bound by reading the weights; on CPU long contexts slow every step.
    decode_kv_s: float = Field(0.0, ge=0)
    # Divides every simulated duration: 10 runs ten times faster with the same shape.
    speed: float = Field(1.0, gt=0)
    embedding_dim: int = Field(384, ge=8)
    enable_prompt_tokens_details: bool = False
    # LoRA adapters (vLLM's flags): loaded at run time through /v1/load_lora_adapter.
    enable_lora: bool = False
    # Adapters loaded at once; a further load is refused until one is unloaded.
    max_loras: int = Field(1, ge=1)
    max_lora_rank: int = Field(16, ge=1)
    max_cpu_loras: int | None = Field(None, ge=1)
    # Seconds one adapter takes to load (reading its weights), before ``speed``.
    lora_load_s: float = Field(0.2, ge=0)
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
    def _engine_starts(self) -> SimSettings:
        # The checks vLLM makes before it serves, with vLLM's own words where it has them.
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                f"({self.max_model_len}). This effectively limits the maximum sequence length to "
                "max_num_batched_tokens and makes vLLM reject longer sequences. Please increase "
                "max_num_batched_tokens or decrease max_model_len."
            )
        if self.long_prefill_token_threshold > self.max_model_len:
            raise ValueError(
                f"long_prefill_token_threshold ({self.long_prefill_token_threshold}) cannot be greater "
                f"than the max_model_len ({self.max_model_len})."
            )
        sized_by_share = self.kv_cache_tokens is None and self.kv_cache_memory_bytes is None
        if sized_by_share and self.gpu_memory_utilization * self.gpu_memory_gib <= self.non_kv_memory_gib:
            raise ValueError(
                "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                "when initializing the engine."
            )
        capacity = self.kv_capacity_tokens
        if capacity < self.max_model_len + self.block_size:
            raise ValueError(
                f"To serve at least one request with the models's max seq len ({self.max_model_len}), "
                f"{self.max_model_len} tokens of KV cache are needed, which is larger than the available "
                f"KV cache ({capacity} tokens). Try increasing `gpu_memory_utilization` or decreasing "
                "`max_model_len` when initializing the engine."
            )
        return self

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds: set outright, or what the memory left for it divides into."""
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        if self.kv_cache_memory_bytes is not None:
            free = float(self.kv_cache_memory_bytes)
        else:
            free = (
                max(0.0, self.gpu_memory_utilization * self.gpu_memory_gib - self.non_kv_memory_gib) * 2**30
            )
        per_token = self.kv_bytes_per_token / (2 if self.kv_cache_dtype == "fp8" else 1)
        return int(free / per_token)

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
    p.add_argument(
        "--long-prefill-token-threshold",
        type=int,
        help="prompt tokens one prefill takes per step when others wait",
    )
    p.add_argument("--kv-cache-tokens", type=int, help="KV cache capacity in tokens")
    p.add_argument("--block-size", type=int)
    p.add_argument("--gpu-memory-utilization", type=float, help="share of the GPU vLLM may take")
    p.add_argument("--gpu-memory-gib", type=float, help="the simulated GPU's memory")
    p.add_argument("--non-kv-memory-gib", type=float, help="weights and activations")
    p.add_argument("--kv-bytes-per-token", type=int)
    p.add_argument("--kv-cache-dtype", choices=("auto", "fp8"))
    p.add_argument(
        "--kv-cache-memory-bytes", type=int, help="KV cache size (VLLM_CPU_KVCACHE_SPACE GiB is read too)"
    )
    p.add_argument(
        "--scheduling-policy",
        choices=("fcfs", "priority"),
        help="fcfs (default) or priority: waiting requests by (priority, arrival), lower first",
    )
    for flag in ("enable-chunked-prefill", "enable-prefix-caching"):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction)
    p.add_argument("--decode-step-s", type=float, help="seconds per decode step at batch 1")
    p.add_argument("--decode-batch-slope", type=float, help="step-time growth per extra sequence")
    p.add_argument("--prefill-tokens-per-s", type=float)
    p.add_argument("--prefill-attention-s", type=float, help="prefill attention, per token x context token")
    p.add_argument("--decode-kv-s", type=float, help="decode step time per KV token attended")
    p.add_argument("--speed", type=float, help="time multiplier: 10 = ten times faster")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--enable-prompt-tokens-details", action="store_true")
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--max-loras", type=int, help="adapters loaded at once (the slots)")
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--max-cpu-loras", type=int)
    p.add_argument("--lora-load-s", type=float, help="seconds one adapter takes to load")
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
    for ignored in ("--quantization", "--dtype", "--api-key"):
        p.add_argument(ignored, dest=f"_ignored_{ignored[2:]}", help=argparse.SUPPRESS)
    return p


def settings_from_argv(argv: Sequence[str]) -> SimSettings:
    """Parse flags; unset flags fall back to the environment, then to defaults."""
    ns = vars(build_parser().parse_args(list(argv)))
    given = {k: v for k, v in ns.items() if not k.startswith("_")}
    # vLLM serves a model under its --model id when no --served-model-name is given.
    if "_model" in ns and "served_model_name" not in given:
        given["served_model_name"] = [ns["_model"]]
    # vLLM's CPU backend sizes its KV cache from this variable (whole GiB); so does the simulator.
    cpu_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if cpu_space and "kv_cache_memory_bytes" not in given:
        given["kv_cache_memory_bytes"] = int(cpu_space) * 2**30
    return SimSettings(**given)
