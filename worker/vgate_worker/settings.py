"""The production worker's settings: ``VGATE_WORKER_*`` environment variables, overridden by flags.

The Kubernetes operator configures worker pods through these variables; a person at a shell
usually passes the equivalent ``vgate worker --flag`` instead. Flags win over the environment.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct-AWQ"

# "none" omits --quantization so vLLM reads the method from the model's config.json (the
# operator's spec calls that "auto", and maps both its "auto" and "none" to this "none").
Quantization = Literal["awq", "awq_marlin", "gptq", "fp8", "none"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
Device = Literal["auto", "cuda", "cpu"]
DEVICES: tuple[str, ...] = get_args(Device)
DType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
# vLLM's --scheduling-policy: "priority" orders waiting requests by their ``priority`` field.
SchedulingPolicy = Literal["fcfs", "priority"]
SCHEDULING_POLICIES: tuple[str, ...] = get_args(SchedulingPolicy)


class WorkerSettings(BaseSettings):
    """Everything that shapes the vLLM command line, validated before vLLM starts."""

    model_config = SettingsConfigDict(
        env_prefix="VGATE_WORKER_",
        extra="ignore",
        frozen=True,
        protected_namespaces=(),
    )

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Hugging Face id or local directory")
    served_model_name: str | None = Field(None, description="name clients use; defaults to the model")
    # The default lets vLLM read the method from config.json (it then picks awq_marlin for AWQ
    # checkpoints on GPUs that support it); set it to pin a kernel or to quantize fp8 on the fly.
    quantization: Quantization = "none"
    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(None, gt=0)
    max_num_batched_tokens: int | None = Field(None, gt=0)
    enable_chunked_prefill: bool | None = None
    #: vLLM's cap on the prompt tokens one request's prefill takes per step while others are
    #: scheduled: short prompts are not held behind a long one's chunks (unset: vLLM's, no cap).
    long_prefill_token_threshold: int | None = Field(None, gt=0)
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    dtype: DType = "auto"
    tensor_parallel_size: int = Field(1, gt=0)
    enable_prefix_caching: bool = True
    #: ``priority`` lets the gateway's per-request ``priority`` order vLLM's waiting queue.
    scheduling_policy: SchedulingPolicy = "fcfs"
    host: str = "0.0.0.0"  # a pod must listen on its pod IP
    port: int = Field(8000, gt=0, lt=65536)
    download_dir: str | None = None
    extra_args: str = Field("", description="shell-quoted vLLM flags appended last")
    device: Device = "auto"
    # LoRA: set max_loras to serve adapters (loaded at run time through vLLM's adapter API).
    max_loras: int | None = Field(None, gt=0, description="adapters in one batch; enables LoRA")
    max_lora_rank: int | None = Field(None, gt=0)
    max_cpu_loras: int | None = Field(None, gt=0)

    @field_validator("quantization", mode="before")
    @classmethod
    def _normalise_quantization(cls, value: object) -> object:
        # Accept "AWQ" or "" from hand-written manifests; "" means the same as "none".
        if isinstance(value, str):
            value = value.strip().lower() or "none"
        return value

    @field_validator("scheduling_policy", mode="before")
    @classmethod
    def _default_policy(cls, value: object) -> object:
        # An empty variable is vLLM's default, as an unset one.
        return (value.strip().lower() or "fcfs") if isinstance(value, str) else value

    @field_validator(
        "served_model_name",
        "download_dir",
        "max_model_len",
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "long_prefill_token_threshold",
        "kv_cache_dtype",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A manifest that renders VGATE_WORKER_X="" means "not set", not "set to empty".
        return None if isinstance(value, str) and not value.strip() else value
