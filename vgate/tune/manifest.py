"""What to tune: one model of a VGateDeployment manifest, or a model named on the command line.

The manifest is validated by the operator's own spec models (what it would refuse, the tuner
refuses), and the model's current engine settings become every trial's starting point: a trial
changes only the settings on the grid, and the baseline trial is the manifest as it stands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgate.tune import runner
from vgate_operator.spec import InvalidSpecError, ModelSpec, parse_spec
from vgate_worker.settings import DEFAULT_MODEL


class ManifestError(ValueError):
    """The manifest cannot be read, is not a valid VGateDeployment, or lacks the model."""


@dataclass(frozen=True)
class TuneTarget:
    engine: runner.Engine
    model: str
    served_name: str
    worker_args: tuple[str, ...] = ()
    engine_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: The manifest as read, for the winner's patch; ``None`` without ``-f``.
    manifest: dict[str, Any] | None = None


def model_worker_args(model: ModelSpec) -> list[str]:
    """``vgate worker`` flags for a model's engine settings, as the operator sets them on a pod."""
    argv = [
        "--max-model-len", str(model.max_model_len),
        "--gpu-memory-utilization", str(model.gpu_memory_utilization),
        "--max-num-seqs", str(model.max_num_seqs),
    ]  # fmt: skip
    if model.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(model.max_num_batched_tokens)]
    if model.long_prefill_token_threshold is not None:
        argv += ["--long-prefill-token-threshold", str(model.long_prefill_token_threshold)]
    if model.enable_chunked_prefill is not None:
        argv.append(
            "--enable-chunked-prefill" if model.enable_chunked_prefill else "--no-enable-chunked-prefill"
        )
    argv.append("--enable-prefix-caching" if model.enable_prefix_caching else "--no-enable-prefix-caching")
    if model.kv_cache_dtype is not None:
        argv += ["--kv-cache-dtype", model.kv_cache_dtype]
    return argv


def _read(path: str) -> dict[str, Any]:
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "VGateDeployment"]
    if len(found) != 1:
        raise ManifestError(f"{path}: expected one VGateDeployment, found {len(found)}")
    return found[0]


def load_target(
    filename: str | None, model_name: str | None, model: str | None, engine: str | None
) -> TuneTarget:
    """The model to tune and its starting settings; the simulator unless ``engine`` is ``vllm``."""
    chosen: runner.Engine = "vllm" if engine == "vllm" else "sim"
    if filename is None:
        name = model_name or (Path(model).name if model and os.sep in model else model) or DEFAULT_MODEL
        return TuneTarget(chosen, model or DEFAULT_MODEL, name)
    manifest = _read(filename)
    meta = manifest.get("metadata") or {}
    try:
        spec = parse_spec(str(meta.get("name", "")), manifest.get("spec") or {})
    except InvalidSpecError as exc:
        raise ManifestError(f"{filename}: invalid VGateDeployment: {exc}") from None
    names = [m.name for m in spec.models]
    picked = next((m for m in spec.models if m.name == (model_name or names[0])), None)
    if picked is None:
        raise ManifestError(f"{filename}: no model {model_name!r} in spec.models (has {', '.join(names)})")
    return TuneTarget(
        engine=chosen,
        model=model or picked.model,
        served_name=picked.name,
        worker_args=tuple(model_worker_args(picked)),
        engine_args=tuple(picked.engine_args),
        manifest=manifest,
    )
