"""The ``vgate`` command line: one entry point, one subcommand per component."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vgate.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("dev", "gateway", "worker", "operator", "render", "bench"):
        assert name in COMMANDS
        assert f"  {name} " in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-everything"]) == 2
    assert "unknown command 'serve-everything'" in capsys.readouterr().err


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vgate", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("vgate ")


@pytest.mark.parametrize("command", ["dev", "gateway"])
def test_subcommand_help(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vgate", command, "--help"], capture_output=True, text=True, check=True
    )
    assert f"vgate {command}" in out.stdout
