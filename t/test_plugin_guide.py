"""docs/PLUGINS.md is followed, not just read: its code blocks make a plugin the daemon runs.

Every block marked ``file=PATH`` is (part of) a file of the guide's example
plugin; the blocks are extracted from the guide itself, so guide and test
cannot drift. The plugin is pip-installed into a fresh virtualenv that sees
the test venv's packages (t/plugin_env.py); the test venv is not changed.
And the hook reference: every hookspec has a complete docstring.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from provisioning.hooks import specs as hookspecs
from provisioning.testing import DaemonProcess, assert_done, database_keys, edit_ini

from plugin_env import PluginEnv

GUIDE = Path(__file__).resolve().parents[1] / "docs/PLUGINS.md"
BLOCK = re.compile(r"^```(?P<lang>\w+) file=(?P<path>\S+)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
PLUGIN = "Example/Notes"


def guide_files(text: str) -> dict[str, str]:
    """Path -> content: the blocks of one path, in the order the guide shows them."""
    files: dict[str, str] = {}
    for block in BLOCK.finditer(text):
        files[block["path"]] = files.get(block["path"], "") + block["body"]
    return files


def hookspec_functions() -> dict[str, object]:
    return {name: func for name, func in vars(hookspecs).items()
            if name.startswith("provisioning_") and hasattr(func, f"{hookspecs.PROJECT}_spec")}


# ---------------------------------------------------------------- the hook reference

def docstring_problems() -> list[str]:
    """What each hookspec's docstring lacks: summary, a parameter, the return value, the firstresult rule."""
    functions = hookspec_functions()
    incomplete = []
    for name, func in functions.items():
        doc = inspect.getdoc(func) or ""
        summary = doc.split("\n\n", 1)[0]
        flat = " ".join(doc.split()).lower()
        if not summary or not summary.rstrip().endswith("."):
            incomplete.append(f"{name}: no one-sentence summary")
        for param in inspect.signature(func).parameters:
            if f":param {param}:" not in doc:
                incomplete.append(f"{name}: parameter {param} is not documented")
        if ":return:" not in doc:
            incomplete.append(f"{name}: the return value is not documented")
        firstresult = getattr(func, f"{hookspecs.PROJECT}_spec").get("firstresult")
        if firstresult and "stops at the first non-none result" not in flat:
            incomplete.append(f"{name}: firstresult, but the docstring does not say it stops at the first "
                              f"non-None result")
        if not firstresult and "stops at the first non-none result" in flat:
            incomplete.append(f"{name}: says it stops at the first non-None result, but is not firstresult")
    return incomplete


def test_every_hookspec_has_a_complete_docstring():
    assert len(hookspec_functions()) == 17
    assert docstring_problems() == []


def test_the_docstring_check_catches_what_it_must(monkeypatch):
    def provisioning_add(request, ctx):
        """Create the service.

        :param request: the request.
        :return: the exit code.
        """
    provisioning_add.provisioning_spec = {"firstresult": True}
    monkeypatch.setattr(hookspecs, "provisioning_add", provisioning_add)
    assert docstring_problems() == [
        "provisioning_add: parameter ctx is not documented",
        "provisioning_add: firstresult, but the docstring does not say it stops at the first non-None result"]


def test_the_guide_names_every_hook_and_every_file_of_its_layout():
    text = GUIDE.read_text()
    table = set(re.findall(r"^\| `(provisioning_\w+)\(", text, re.M))
    assert table == set(hookspec_functions())
    layout = text.split("## 1. The folder", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in layout.splitlines()[2:] if line.strip()}
    assert {path.split("/", 1)[-1] if path.startswith("example-notes/") else path
            for path in guide_files(text)} == listed


# ---------------------------------------------------------------- following the guide

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The guide's plugin written from its blocks and pip-installed: (project folder, env)."""
    root = tmp_path_factory.mktemp("guide")
    project = root / "example-notes"
    for relative, content in guide_files(GUIDE.read_text()).items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    env = PluginEnv(root / "venv")
    result = env.pip_install(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project, env


def test_the_guides_plugin_runs_under_the_daemon_until_a_request_is_done(
        built, provisioning_slapd, provisioning_subtree, provisioning_entries, tmp_path):
    project, env = built
    listed = env.run("-m", "provisioning", "--list-plugins").stdout
    assert re.search(r"^Example/Notes +provisioning_example_notes\.plugin:ExampleNotes +distribution "
                     r"provisioning-example-notes 0\.1\.0$", listed, re.M), listed
    # The operator's way: the template copied, [Database] and [Notes] set.
    notes = tmp_path / "notes"
    notes.mkdir()
    config = tmp_path / "Notes.conf"
    template = (project / "etc/Provisioning/Example/Notes.conf.template").read_text()
    config.write_text(edit_ini(template, {
        "Database": database_keys(provisioning_slapd, provisioning_subtree, tmp_path),
        "Notes": {"NOTES_DIR": notes}}))
    config.chmod(0o600)
    checked = env.run("-m", "provisioning", "-c", str(config), "-t")
    assert "OK   plugin: Example/Notes loaded from provisioning_example_notes.plugin:ExampleNotes " \
           "(distribution provisioning-example-notes 0.1.0)" in checked.stdout, checked.stdout
    assert f"OK   Example/Notes NOTES_DIR: {notes} is a folder that takes files" in checked.stdout
    daemon = DaemonProcess(config, None, tmp_path, python=env.python).start()
    try:
        dn = provisioning_entries.add("alice", description="from the guide")
        assert_done(provisioning_entries.wait_mode(dn, "added"), "added")
        assert (notes / "alice.note").read_text() == "Note for alice\nfrom the guide\n"
        daemon.wait_for(rf"INFO {dn}: add: note {notes}/alice.note written")
    finally:
        assert daemon.stop() == 0, daemon.text()[-2000:]


def test_the_guides_own_tests_pass(built, tmp_path):
    project, env = built
    result = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"),
                     str(project / "tests"), cwd=project, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
