"""The original daemon's INI format, read into sections of plain strings.

The Perl daemon read its files with Config::IniFiles and its defaults; the
rules here are those (checked against its ReadConfig):

- A line whose first non-blank character is ``#`` or ``;`` is a comment.
  There are no inline comments: a ``#`` or ``;`` after a value is part of
  the value (``ADMIN_PASSWORD = abc#def`` is ``abc#def``).
- ``[name]`` starts a section; blanks around the name are ignored.
- ``NAME = VALUE`` sets a key; blanks around ``=`` are ignored and the value
  runs to the end of the line. Values are not unquoted and not split.
- Blank lines are ignored; anything else is an error.

Where we differ, on purpose: blanks at the end of a value are dropped
(Config::IniFiles keeps them, which turns an invisible trailing blank into a
wrong password or a bad number); a key outside any section, a key given twice
in a section and a section given twice are errors (Config::IniFiles merges
them or keeps several values); ``KEY = <<EOT`` multi-line values are not
supported. Error messages name the line but never show it: it may hold a
password.
"""
from __future__ import annotations

import re

_SECTION = re.compile(r"\s*\[\s*(\S|\S.*\S)\s*\]\s*")
_KEY = re.compile(r"\s*([^=]*?[^=\s])\s*=\s*(.*)")


class IniError(Exception):
    """The text is not in the format; ``problems`` has one message per bad line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parse(lines: list[str]) -> dict[str, dict[str, str]]:
    """Sections of ``lines`` as ``{section: {key: value}}`` in file order."""
    sections: dict[str, dict[str, str]] = {}
    seen: dict[tuple[str, ...], int] = {}
    problems: list[str] = []
    current: str | None = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if match := _SECTION.fullmatch(line):
            current = match.group(1)
            if (current,) in seen:
                problems.append(f"line {number}: section [{current}] given again "
                                f"(first at line {seen[current,]})")
            else:
                seen[current,] = number
                sections[current] = {}
        elif match := _KEY.fullmatch(line):
            key, value = match.group(1), match.group(2).rstrip()
            if current is None:
                problems.append(f"line {number}: key {key} is outside any [section]")
            elif (current, key) in seen:
                problems.append(f"line {number}: [{current}] {key} given again "
                                f"(first at line {seen[current, key]})")
            else:
                seen[current, key] = number
                sections[current][key] = value
        else:
            problems.append(f"line {number}: neither a comment, a [section] nor KEY = VALUE "
                            f"(the line is not shown: it may hold a password)")
    if problems:
        raise IniError(problems)
    return sections
