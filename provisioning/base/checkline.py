"""One line of ``--check``: what was checked, OK / WARN / FAIL, and why.

Plugins return these from the ``provisioning_check`` hook (plain
``(name, status, detail)`` tuples are accepted too).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable


class Status(str, enum.Enum):
    OK = "OK"        # checked and fine
    WARN = "WARN"    # cannot be decided here, or works but is unwise: --check still passes
    FAIL = "FAIL"    # will not work: --check fails


@dataclass(frozen=True)
class CheckLine:
    name: str
    status: Status
    detail: str

    def __str__(self) -> str:
        # One line per check, whatever the detail holds (a command's stderr often has several).
        detail = " / ".join(part.strip() for part in self.detail.splitlines() if part.strip())
        return f"{self.status.value:<4} {self.name}: {detail}"

    @classmethod
    def ok(cls, name: str, detail: str) -> "CheckLine":
        return cls(name, Status.OK, detail)

    @classmethod
    def warn(cls, name: str, detail: str) -> "CheckLine":
        return cls(name, Status.WARN, detail)

    @classmethod
    def fail(cls, name: str, detail: str) -> "CheckLine":
        return cls(name, Status.FAIL, detail)


def normalise(items: Iterable[object], source: str) -> list[CheckLine]:
    """CheckLines from what a plugin returned; anything malformed becomes a FAIL naming ``source``."""
    lines = []
    for item in items:
        if isinstance(item, CheckLine):
            lines.append(item)
            continue
        try:
            name, status, detail = item          # type: ignore[misc]
            lines.append(CheckLine(str(name), Status(str(status).upper()), str(detail)))
        except (TypeError, ValueError):
            lines.append(CheckLine.fail(source, f"returned {item!r}, not a (name, OK|WARN|FAIL, detail) line"))
    return lines
