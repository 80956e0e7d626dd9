"""The command-line skeleton: help, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spoolmig import config
from spoolmig.cli import main
from spoolmig.errors import EXIT_CODES


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "init" in out
    for code, meaning in EXIT_CODES:
        assert meaning in out


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def test_init_prints_a_valid_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    text = capsys.readouterr().out
    import tomllib

    cfg = config.from_dict(tomllib.loads(text))
    assert cfg.source.url.scheme == "ssh"
    assert cfg.target.layout.version == "3.6"


def test_python_dash_m_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "spoolmig", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("spoolmig ")
