"""Shared test fixtures: isolate the environment so a developer's setup cannot leak in."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["sshd"]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("SSH_"):
            monkeypatch.delenv(name, raising=False)
