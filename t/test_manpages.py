"""The man pages are what the code says now, and groff reads them without a warning.

man/manpages.py makes them from the parsers, the exit codes and the
configspecs; a page that was not made again after one of those changed fails
here (make them again with: python3 man/manpages.py).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning import cli
from provisioning.config import resources
from provisioning.config.specdoc import describe_check, spec_sections
from provisioning.base.codes import ExitCode

REPO = Path(__file__).resolve().parents[1]
MAN = REPO / "man"


def _manpages():
    spec = importlib.util.spec_from_file_location("manpages", MAN / "manpages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


manpages = _manpages()
PAGES = manpages.pages()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_committed_page_is_current(name):
    assert (MAN / name).read_text(encoding="utf-8") == PAGES[name], \
        f"man/{name} is not what the code says now: python3 man/manpages.py"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_groff_reads_the_page_without_a_warning(name):
    # As lintian checks a page (its groff-message tag).
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(MAN / name)],
                            capture_output=True, text=True, timeout=60,
                            env={"LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_daemons_page_has_every_sub_command_option_and_exit_code():
    page = PAGES["provisioning-daemon.8"].replace("\\-", "-")
    for name in cli.SUBCOMMANDS:
        assert f"provisioning-daemon {name}" in page, name
    for parser in manpages.parsers().values():
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page or parser.prog in ("createBackupAccountLDIF", "loadOpenLDAPsingleLDIF")
    for code in ExitCode:
        assert f'.TP\n\\fB{int(code)}\\fR\n{code.name}: ' in page, code


def test_every_key_of_every_spec_is_described():
    texts = [resources.configspec_text("service.spec"), resources.configspec_text("global.spec")]
    texts += [text for _, text in manpages.plugin_specs()]
    for text in texts:
        for section in spec_sections(text):
            for group in section.groups:
                assert group.text, f"[{section.name}] {', '.join(k for k, _ in group.keys)}: no comment above it"


def test_the_page_would_see_a_key_added_to_a_spec():
    sections = spec_sections("[Backup]\n# Where.\nNEW_KEY = integer(min=1, default=3)\nOTHER = string()\n")
    assert [(g.keys, g.text) for g in sections[0].groups] == [
        ([("NEW_KEY", "integer(min=1, default=3)"), ("OTHER", "string()")], "Where.")]
    assert describe_check("integer(min=1, default=3)") == "a whole number, at least 1; default 3"
