"""The house rules, measured from the import graph (issue: one plugin API, a core whose folders show its parts).

The contracts are in .importlinter (layers of the core, plugins on provisioning.api
only, the core knowing no plugin); import-linter checks them. This file adds what
import-linter does not say: no import cycle anywhere (TYPE_CHECKING imports
included), and no module of provisioning/ outside a subpackage but the CLI's
entry and the plugin API.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]
PACKAGES = ("provisioning", "provisioning_backup_rsnapshot", "provisioning_generic_exec")
# import-linter and grimp are no Debian 12 packages: the run on Debian's own
# packages (bin/system-python) leaves these checks to the virtualenv's run.
grimp = pytest.importorskip("grimp", reason="grimp (import-linter's graph) is not installed: the "
                                            "virtualenv's run of the suite checks the architecture")


def test_the_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(TOP / ".importlinter"), "--no-cache"], cwd=TOP,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_no_module_imports_itself_round_about():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles({m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}) == []


def test_every_module_of_the_core_lives_in_a_subpackage_but_the_entry_and_the_api():
    loose = sorted(p.name for p in (TOP / "provisioning").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "api.py", "cli.py"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in imports.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            part = []
            while True:
                other = stack.pop()
                part.append(other)
                if other == module:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found
