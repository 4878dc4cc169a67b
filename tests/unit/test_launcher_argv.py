"""The vLLM command line the production worker builds, from flags and ``VGATE_WORKER_*``."""

from __future__ import annotations

import sys

import pytest

from vgate_worker.launcher import (
    VLLM_SERVER_MODULE,
    LaunchError,
    build_vllm_argv,
    command_line,
    parse_args,
    redact,
)
from vgate_worker.settings import DEFAULT_MODEL, WorkerSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VGATE_WORKER_"):
            monkeypatch.delenv(name)


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


def test_defaults_serve_the_qwen_awq_model_on_all_interfaces_with_prefix_caching() -> None:
    argv = build_vllm_argv(WorkerSettings())
    assert flag_value(argv, "--model") == DEFAULT_MODEL == "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
    assert "--quantization" not in argv  # vLLM reads it from the checkpoint's config.json
    assert flag_value(argv, "--host") == "0.0.0.0"
    assert flag_value(argv, "--port") == "8000"
    assert "--enable-prefix-caching" in argv
    assert "--no-enable-prefix-caching" not in argv
    # Unset knobs are left to vLLM's own defaults rather than guessed here.
    for flag in ("--served-model-name", "--max-model-len", "--gpu-memory-utilization", "--download-dir"):
        assert flag not in argv


def test_every_setting_maps_to_its_vllm_flag() -> None:
    settings = WorkerSettings(
        model="/models/qwen",
        served_model_name="qwen-small",
        quantization="awq_marlin",
        max_model_len=4096,
        gpu_memory_utilization=0.85,
        max_num_seqs=64,
        dtype="float16",
        tensor_parallel_size=2,
        host="127.0.0.1",
        port=9000,
        download_dir="/cache",
    )
    argv = build_vllm_argv(settings)
    expected = {
        "--model": "/models/qwen",
        "--served-model-name": "qwen-small",
        "--quantization": "awq_marlin",
        "--max-model-len": "4096",
        "--gpu-memory-utilization": "0.85",
        "--max-num-seqs": "64",
        "--dtype": "float16",
        "--tensor-parallel-size": "2",
        "--host": "127.0.0.1",
        "--port": "9000",
        "--download-dir": "/cache",
    }
    assert {flag: flag_value(argv, flag) for flag in expected} == expected


def test_the_priority_policy_is_passed_and_fcfs_leaves_vllms_default() -> None:
    assert flag_value(
        build_vllm_argv(WorkerSettings(scheduling_policy="priority")), "--scheduling-policy"
    ) == ("priority")
    assert "--scheduling-policy" not in build_vllm_argv(WorkerSettings())
    assert "--scheduling-policy" not in build_vllm_argv(WorkerSettings(scheduling_policy=""))  # type: ignore[arg-type]


def test_quantization_none_omits_the_flag_so_vllm_reads_the_config() -> None:
    assert "--quantization" not in build_vllm_argv(WorkerSettings(quantization="none"))
    assert "--quantization" not in build_vllm_argv(WorkerSettings(quantization=""))  # type: ignore[arg-type]


def test_prefix_caching_off_is_explicit() -> None:
    argv = build_vllm_argv(WorkerSettings(enable_prefix_caching=False))
    assert "--no-enable-prefix-caching" in argv
    assert "--enable-prefix-caching" not in argv


def test_extra_args_come_last_env_before_command_line() -> None:
    settings = WorkerSettings(extra_args="--enforce-eager --chat-template '/etc/chat template.jinja'")
    argv = build_vllm_argv(settings, ["--seed", "7"])
    assert argv[-5:] == ["--enforce-eager", "--chat-template", "/etc/chat template.jinja", "--seed", "7"]


def test_env_configures_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "VGATE_WORKER_MODEL": "org/env-model",
        "VGATE_WORKER_SERVED_MODEL_NAME": "env-name",
        "VGATE_WORKER_QUANTIZATION": "GPTQ",
        "VGATE_WORKER_MAX_MODEL_LEN": "2048",
        "VGATE_WORKER_GPU_MEMORY_UTILIZATION": "0.5",
        "VGATE_WORKER_MAX_NUM_SEQS": "8",
        "VGATE_WORKER_DTYPE": "bfloat16",
        "VGATE_WORKER_TENSOR_PARALLEL_SIZE": "4",
        "VGATE_WORKER_ENABLE_PREFIX_CACHING": "false",
        "VGATE_WORKER_HOST": "10.0.0.1",
        "VGATE_WORKER_PORT": "7000",
        "VGATE_WORKER_DOWNLOAD_DIR": "/data",
        "VGATE_WORKER_EXTRA_ARGS": "--enforce-eager",
        "VGATE_WORKER_DEVICE": "cuda",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings, passthrough, _ = parse_args(["--port", "7100", "--enable-prefix-caching", "--", "--seed", "1"])
    argv = build_vllm_argv(settings, passthrough)
    assert flag_value(argv, "--model") == "org/env-model"
    assert flag_value(argv, "--quantization") == "gptq"
    assert flag_value(argv, "--max-model-len") == "2048"
    assert flag_value(argv, "--tensor-parallel-size") == "4"
    assert flag_value(argv, "--download-dir") == "/data"
    assert flag_value(argv, "--port") == "7100"  # flag over env
    assert "--enable-prefix-caching" in argv  # flag over env
    assert settings.device == "cuda"
    assert argv[-3:] == ["--enforce-eager", "--seed", "1"]


def test_empty_env_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_WORKER_MAX_MODEL_LEN", "")
    monkeypatch.setenv("VGATE_WORKER_SERVED_MODEL_NAME", " ")
    argv = build_vllm_argv(parse_args([])[0])
    assert "--max-model-len" not in argv
    assert "--served-model-name" not in argv


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {"VGATE_WORKER_QUANTIZATION": "int3"}, "--quantization / VGATE_WORKER_QUANTIZATION"),
        (["--port", "70000"], {}, "--port / VGATE_WORKER_PORT"),
        (["--gpu-memory-utilization", "1.5"], {}, "--gpu-memory-utilization"),
        (["--max-num-seqs", "many"], {}, "--max-num-seqs"),
        ([], {"VGATE_WORKER_DEVICE": "tpu"}, "--device / VGATE_WORKER_DEVICE"),
        (
            [],
            {"VGATE_WORKER_SCHEDULING_POLICY": "lifo"},
            "--scheduling-policy / VGATE_WORKER_SCHEDULING_POLICY",
        ),
    ],
)
def test_invalid_settings_name_the_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(LaunchError, match="invalid setting") as info:
        parse_args(argv)
    assert needle in str(info.value)


def test_command_runs_vllm_server_module_with_this_interpreter() -> None:
    cmd = command_line(WorkerSettings(model="/m"))
    assert cmd[:3] == [sys.executable, "-m", VLLM_SERVER_MODULE]
    assert cmd[3:5] == ["--model", "/m"]


def test_redact_hides_secret_flag_values_only() -> None:
    argv = ["--model", "m", "--hf-token", "hf_secret", "--api-key=sk-123", "--port", "1"]
    assert redact(argv) == ["--model", "m", "--hf-token", "***", "--api-key=***", "--port", "1"]
