"""bash completion of provisioning-daemon: every sub-command and every option its parser knows.

The completion script is run by bash as bash runs it at a TAB (COMP_WORDS,
COMP_CWORD, the function it registered); the options it must offer are taken
from the parsers themselves (man/manpages.py captures them), so an option
added to a parser and not to the completion fails here.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning import cli

REPO = Path(__file__).resolve().parents[1]
COMPLETION = REPO / "etc/bash-completion/provisioning-daemon"
PROGRAM = Path(sys.executable).parent / "provisioning-daemon"


def _manpages():
    spec = importlib.util.spec_from_file_location("manpages", REPO / "man/manpages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PARSERS = _manpages().parsers()


def complete(*words: str) -> list[str]:
    """What a TAB after ``words`` offers (the last word is the one being completed)."""
    argv = [str(PROGRAM), *words]
    script = (f"source {COMPLETION}\n"
              f"COMP_WORDS=({' '.join(_quoted(w) for w in argv)}); COMP_CWORD={len(argv) - 1}\n"
              f"_provisioning_daemon; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def _quoted(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _option_strings(name: str) -> set[str]:
    return {o for action in PARSERS[name]._actions for o in action.option_strings}


def test_the_first_word_offers_every_sub_command():
    assert set(complete("")) == set(cli.SUBCOMMANDS)
    assert set(complete("st")) == {"status"}


@pytest.mark.parametrize("name", ["", *cli.SUBCOMMANDS])
def test_every_option_of_each_parser_is_offered(name):
    words = ([name] if name else []) + ["-"]
    offered = set(complete(*words))
    assert _option_strings(name) <= offered, _option_strings(name) - offered
    assert offered <= _option_strings(name), f"offered but unknown to the parser: {offered - _option_strings(name)}"


def test_files_completes_the_names_of_the_shipped_files():
    names = complete("files", "--print", "Provisioning/Backup/")
    assert "Provisioning/Backup/Rsnapshot.conf.template" in names, names
    assert complete("files", "--copy", "Provisioning/Global") == ["Provisioning/Global.conf"]


def test_a_configuration_option_completes_file_names(tmp_path):
    (tmp_path / "Rsnapshot.conf").write_text("")
    assert complete("status", "-c", str(tmp_path / "Rs")) == [str(tmp_path / "Rsnapshot.conf")]
    assert complete("-c", str(tmp_path / "Rs")) == [str(tmp_path / "Rsnapshot.conf")]
