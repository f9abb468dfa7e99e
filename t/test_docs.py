"""The docs say what the code does: docs/configuration.md against the configspecs, and links that lead somewhere.

docs/configuration.md is prose written by hand around key tables that
man/manpages.py makes from the specs (provisioning.config.confdoc). A table
that was not made again after a spec changed fails here (make them again with:
python3 man/manpages.py), and so does a key a doc names that no spec has.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from provisioning.config import confdoc
from provisioning.config.specdoc import spec_sections

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs/configuration.md"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _manpages():
    spec = importlib.util.spec_from_file_location("manpages", REPO / "man/manpages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SPECS = _manpages().spec_texts()


def spec_keys() -> set[tuple[str, str, str]]:
    """(spec, section, KEY) of every key of every spec."""
    return {(name, section.name, key) for name, text in SPECS.items() for section in spec_sections(text)
            for group in section.groups for key, _ in group.keys}


# ---------------------------------------------------------------- docs/configuration.md

def test_the_committed_page_is_what_the_specs_give():
    page = PAGE.read_text(encoding="utf-8")
    made, problems = confdoc.update(page, SPECS)
    assert problems == []
    assert page == made, "docs/configuration.md's tables are not what the specs say now: python3 man/manpages.py"


def test_every_key_of_every_spec_is_in_a_table_of_the_page_and_every_key_there_is_a_specs():
    documented = confdoc.documented(PAGE.read_text(encoding="utf-8"))
    assert sorted(spec_keys() - documented) == []
    assert sorted(documented - spec_keys()) == []


def test_every_plugin_and_core_spec_is_read():
    assert {"service.spec", "global.spec", "Backup/Rsnapshot", "Generic/Exec"} <= set(SPECS)


# A key named with its section in any doc: "[Database] TIMEOUT", "[Exec] ADD_CMD, MODIFY_CMD",
# "[Operation Mode] SLEEP and ATTEMPTS" (the section and its key may be split over two lines);
# not a misspelt key shown with the error it gets.
NAMED = re.compile(r"\[(?P<section>[A-Z][A-Za-z ]*)\](?:\*\*)?(?:[ \t]+|[ \t]*\n[ \t]*)(?P<keys>[A-Z][A-Z0-9_]*\b"
                   r"(?:(?:, | and |/)[A-Z][A-Z0-9_]*\b)*)(?!: unknown key)")


def named_keys(text: str) -> set[tuple[str, str]]:
    """(section, KEY) of every key the text names with its section, for sections some spec has."""
    sections = {section for _, section, _ in spec_keys()}
    found = set()
    for match in NAMED.finditer(text):
        if match["section"] in sections:
            found |= {(match["section"], key) for key in re.split(r", | and |/", match["keys"])}
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_key_a_doc_names_with_its_section_exists(doc):
    known = {(section, key) for _, section, key in spec_keys()}
    assert sorted(named_keys(doc.read_text(encoding="utf-8")) - known) == []


def test_the_key_finder_finds_what_it_must():
    assert named_keys("set [Database] TIMEOUT and [Exec] ADD_CMD, MODIFY_CMD, then [Global]\nSLEEP and "
                      "ATTEMPTS; **[Mail] SENDTO**: x; [Notes] NOTES_DIR; [Backup] where it differs; [Service]\n"
                      "ReadWritePaths=; [Backup] SET_QUOTA_COMMAND: unknown key") == {
        ("Database", "TIMEOUT"), ("Exec", "ADD_CMD"), ("Exec", "MODIFY_CMD"), ("Global", "SLEEP"),
        ("Global", "ATTEMPTS"), ("Mail", "SENDTO")}


def test_the_page_would_see_a_key_added_to_a_spec():
    page = (f"prose\n{confdoc.marker('x.spec', 'Backup')}\n{confdoc.END}\nmore prose\n")
    made, problems = confdoc.update(page, {"x.spec": "[Backup]\n# Where.\nNEW_KEY = integer(min=1, default=3)\n"})
    assert problems == []
    assert made == (f"prose\n{confdoc.marker('x.spec', 'Backup')}\n| key | value | default | SIGHUP | meaning |\n"
                    f"|---|---|---|---|---|\n| `NEW_KEY` | a whole number, at least 1 | `3` | restart | Where. |\n"
                    f"{confdoc.END}\nmore prose\n")
    assert confdoc.documented(made) == {("x.spec", "Backup", "NEW_KEY")}
    _, problems = confdoc.update(page, {"x.spec": "[Backup]\n# Where.\nA = string()\n[Other]\n# B.\nB = string()\n"})
    assert [problem.split(":")[0] for problem in problems] == ["x.spec [Other]"]


# ---------------------------------------------------------------- links

LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, blanks as hyphens."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_the_anchors_are_the_ones_github_makes():
    assert anchors("# A\n## Checking a host (`-t`)\n```sh\n# not a heading\n```\n## --daemon\n### A\n") == {
        "a", "checking-a-host--t", "--daemon", "a-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_link_between_the_docs_leads_to_a_file_and_heading(doc):
    broken = []
    for match in LINK.finditer(doc.read_text(encoding="utf-8")):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(target)
    assert broken == []
