"""docs/configuration.md's key tables, made from the configspecs so that they cannot drift from them.

The page is prose written by hand around generated parts. Each part is the
table of one section of one spec, between two marker lines::

    <!-- generated from service.spec [Database] by man/manpages.py: edit the spec, not this table -->
    | key | value | default | SIGHUP | meaning |
    ...
    <!-- end of generated part -->

``update`` puts the current tables between the markers and leaves every other
line of the page as it is; man/manpages.py writes the page with it (as it
writes provisioning.conf(5) from the same specs), and t/test_docs.py fails
when the committed page differs. A spec is named by its file (service.spec,
global.spec) or, for a plugin, by its SERVICE/TYPE.
"""
from __future__ import annotations

import re

from provisioning.config.specdoc import Group, check_default, check_kind, reloaded, spec_sections

END = "<!-- end of generated part -->"
PART = re.compile(r"^<!-- generated from (?P<spec>\S+) \[(?P<section>[^\]]+)\] by man/manpages\.py: "
                  r"edit the spec, not this table -->\n(?P<body>.*?)^" + re.escape(END) + r"$", re.M | re.S)
HEAD = "| key | value | default | SIGHUP | meaning |\n|---|---|---|---|---|\n"


def marker(spec: str, section: str) -> str:
    """The line that opens the generated table of [section] of a spec."""
    return f"<!-- generated from {spec} [{section}] by man/manpages.py: edit the spec, not this table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _column(values: list[str]) -> str:
    """One value for the group when its keys agree, else one line per key."""
    return values[0] if len(set(values)) == 1 else "<br>".join(values)


def _default(check: str) -> str:
    default = check_default(check)
    if default is None:
        return "required"
    return default if default in ("empty", "unset") else f"`{_cell(default)}`"


def row(group: Group) -> str:
    """A table row for the keys one comment describes."""
    keys = [key for key, _ in group.keys]
    checks = [check for _, check in group.keys]
    kinds = _column([_cell(check_kind(check)) for check in checks])
    defaults = _column([_default(check) for check in checks])
    sighup = _column(["yes" if reloaded(check) else "restart" for check in checks])
    separator = ", " if "<br>" not in kinds + defaults + sighup else "<br>"
    names = separator.join(f"`{key}`" for key in keys)
    return f"| {names} | {kinds} | {defaults} | {sighup} | {_cell(group.text)} |"


def tables(specs: dict[str, str]) -> dict[tuple[str, str], str]:
    """(spec, section) -> the generated table of that section, for every section of every spec."""
    found = {}
    for name, text in specs.items():
        for section in spec_sections(text):
            found[(name, section.name)] = HEAD + "".join(row(group) + "\n" for group in section.groups)
    return found


def update(page: str, specs: dict[str, str]) -> tuple[str, list[str]]:
    """The page with the current tables between its markers, and what does not fit.

    The problems name a section of a spec the page has no place for (add its
    marker lines where it belongs) and a marker naming no section of the specs.
    """
    made = tables(specs)
    placed: set[tuple[str, str]] = set()
    problems = []

    def fill(match: re.Match) -> str:
        where = (match["spec"], match["section"])
        if where not in made:
            problems.append(f"{match['spec']} [{match['section']}]: the page has a table for it, no spec has it")
            return match[0]
        placed.add(where)
        return f"{marker(*where)}\n{made[where]}{END}"

    result = PART.sub(fill, page)
    problems += [f"{spec} [{section}]: no place on the page; add the lines\n{marker(spec, section)}\n{END}"
                 for spec, section in made if (spec, section) not in placed]
    return result, problems


def documented(page: str) -> set[tuple[str, str, str]]:
    """(spec, section, KEY) of every key in the page's generated tables."""
    found = set()
    for part in PART.finditer(page):
        for line in part["body"].splitlines()[2:]:
            names = line.split("|")[1]
            found |= {(part["spec"], part["section"], key) for key in re.findall(r"`([A-Z][A-Z0-9_]*)`", names)}
    return found
