"""Gateway configuration: env, YAML file, flags, and clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vgate_gateway.cli import main as gateway_main
from vgate_gateway.settings import GatewaySettings, deprecations, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VGATE_"):
            monkeypatch.delenv(key)


def test_defaults_keep_the_documented_names() -> None:
    s = GatewaySettings()
    assert (s.batch_size, s.cache_maxsize, s.port, s.log_json) == (8, 1000, 8000, False)


def test_env_prefix_and_endpoint_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_ENDPOINTS", "http://127.0.0.1:8001, http://127.0.0.1:8002/")
    monkeypatch.setenv("VGATE_BATCH_SIZE", "16")
    monkeypatch.setenv("VGATE_LOG_JSON", "true")
    s = load_settings()
    assert s.endpoints == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert s.batch_size == 16
    assert s.log_json is True


def test_yaml_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("port: 9000\nbatch_wait_ms: 7\nrouting: round-robin\nendpoints: [http://w:1]\n")
    monkeypatch.setenv("VGATE_BATCH_WAIT_MS", "4")
    s = load_settings(config, port=9100)
    assert s.port == 9100  # flag beats the file
    assert s.batch_wait_ms == 4  # env beats the file
    assert s.routing == "round-robin"  # file beats the default
    assert s.endpoints == ["http://w:1"]


def test_kubernetes_discovery_needs_services() -> None:
    with pytest.raises(ValidationError, match="services"):
        GatewaySettings(discovery="kubernetes")


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("VGATE_BATCH_SIZE", "0", "batch_size"),
        ("VGATE_PORT", "70000", "port"),
        ("VGATE_ENDPOINTS", "localhost:8001", "http://"),
        ("VGATE_LOG_LEVEL", "loud", "log_level"),
        ("VGATE_ENDPOINTS_RELOAD_S", "0", "endpoints_reload_s"),
    ],
)
def test_invalid_configuration_fails_at_start_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(env, value)
    assert gateway_main([]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert fragment in err


def test_unknown_key_in_config_file_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("batch_sise: 4\n")
    assert gateway_main(["--config", str(config)]) == 2
    assert "batch_sise" in capsys.readouterr().err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["--config", "/nonexistent/gateway.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_routing_strategy_fails_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["--routing", "fastest-please"]) == 2
    assert "fastest-please" in capsys.readouterr().err


def test_processes_by_their_new_and_their_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_PROCESSES", "3")
    new = load_settings()
    assert (new.processes, deprecations(new)) == (3, [])
    monkeypatch.delenv("VGATE_PROCESSES")
    monkeypatch.setenv("VGATE_WORKERS", "2")
    old = load_settings()
    assert old.processes == 2
    assert deprecations(old) == [
        "VGATE_WORKERS / --workers / workers is deprecated and goes in the next release: "
        "use VGATE_PROCESSES / --processes / processes (2 serving processes)"
    ]
    assert load_settings(processes=2).processes == 2  # the same number twice is no conflict
    monkeypatch.delenv("VGATE_WORKERS")
    assert load_settings(workers=4).processes == 4  # the --workers flag


def test_both_names_with_different_numbers_fail_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VGATE_WORKERS", "2")
    assert gateway_main(["--processes", "3"]) == 2
    err = capsys.readouterr().err
    assert "processes (3) and its deprecated name workers (2) disagree" in err
    assert "set processes (VGATE_PROCESSES, --processes) only" in err
