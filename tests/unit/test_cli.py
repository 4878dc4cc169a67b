"""The ``vgate`` command line: one entry point, one subcommand per component."""

from __future__ import annotations

import pytest

from vgate.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("dev", "gateway", "worker", "operator", "render"):
        assert name in COMMANDS
        assert f"  {name} " in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-everything"]) == 2
    assert "unknown command 'serve-everything'" in capsys.readouterr().err
