"""Specifications and code stay in step: every format module has a spec that names it.

The specs in formats/ are written from Cyrus's sources; this test only keeps
the two halves from drifting apart (a module without a spec, a spec naming a
module that no longer exists, an index row missing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted(p for p in (REPO / "formats").glob("*.md") if p.name != "README.md")
MODULES = sorted(p for p in (REPO / "spoolmig" / "formats").glob("*.py") if not p.name.startswith("_"))


def implemented_by() -> dict[str, list[str]]:
    """spec file name -> module paths its index row names."""
    rows = {}
    for line in (REPO / "formats" / "README.md").read_text().splitlines():
        m = re.match(r"\| \[(?P<spec>[\w.-]+\.md)\]\([\w.-]+\) \|[^|]*\| (?P<code>.*) \|$", line)
        if m:
            rows[m["spec"]] = re.findall(r"`(spoolmig/[\w/]+\.py)`", m["code"])
    return rows


def test_every_spec_is_indexed_with_existing_modules() -> None:
    rows = implemented_by()
    assert sorted(rows) == [p.name for p in SPECS]
    for spec, modules in rows.items():
        assert modules, f"{spec}: the index names no implementing module"
        for module in modules:
            assert (REPO / module).is_file(), f"{spec}: {module} does not exist"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_format_module_has_a_spec_naming_it(module: Path) -> None:
    relative = f"spoolmig/formats/{module.name}"
    owners = [spec for spec, modules in implemented_by().items() if relative in modules]
    assert owners, f"{relative} is implemented by no spec in formats/README.md"
    for spec in owners:
        assert relative in (REPO / "formats" / spec).read_text(), f"formats/{spec} does not name {relative}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_every_spec_names_its_authority(spec: Path) -> None:
    text = spec.read_text()
    assert re.search(r"^#+ .*Authority", text, re.M), f"{spec.name} has no Authority section"
    assert "cyrus-imapd" in text or "lib/" in text or "imap/" in text, f"{spec.name} cites no Cyrus source"
