"""``python -m vgate``, the entry point every image and child process uses."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
