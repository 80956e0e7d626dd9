"""Data flows one way: a stage imports only from earlier stages (DESIGN.md).

transport -> mirror -> formats -> model -> plan -> write -> cli, with a few
leaf modules (errors, fileio, progress, config) every stage may use.
paramiko lives only in transport/ssh.py and tqdm only in the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spoolmig"
STAGES = ["transport", "mirror", "formats", "model", "plan", "write", "cli"]
LEAVES = {"errors", "fileio", "progress", "config", "__init__", "__main__"}
#: Format and model code works on bytes, never on sources or replicas.
NEVER = {"formats": {"transport", "mirror"}, "model": {"transport", "mirror"}}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "spoolmig" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                found += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                found.append(node.module or "")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for module in imports(path):
        top = module.split(".")[0]
        if top == "paramiko":
            assert path.relative_to(PACKAGE).as_posix() == "transport/ssh.py", f"{path}: paramiko outside ssh.py"
        if top == "tqdm":
            assert own == "cli", f"{path}: tqdm outside the CLI"
        target = stage_of(module)
        if target is None or target in LEAVES or target == own:
            continue
        if own in LEAVES:
            assert own == "__main__" and target == "cli", f"leaf module {path.name} imports {module}"
            continue
        assert STAGES.index(target) <= STAGES.index(own), f"{path}: {own} imports later stage {module}"
        assert target not in NEVER.get(own, set()), f"{path}: {own} must not import {module}"


def test_the_walk_found_every_stage() -> None:
    seen = {p.relative_to(PACKAGE).parts[0] for p in MODULES}
    assert set(STAGES) <= seen
