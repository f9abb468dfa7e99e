"""The configspecs read as documentation: each key's check, default, description and whether SIGHUP applies it.

The specs (provisioning/config/specs, and each plugin's) are the one place a
key is written: the man page provisioning.conf(5), docs/configuration.md and
the SIGHUP rule (provisioning.runtime.reload) are all read from them. A
comment describes the keys right below it, up to a blank line; ``reload=True``
in a key's check says that SIGHUP applies a changed value (the validator
ignores it: see loader._validator).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass
class Group:
    """Keys the same comment describes."""

    keys: list[tuple[str, str]] = field(default_factory=list)     # (KEY, check)
    text: str = ""


@dataclass
class Section:
    name: str
    groups: list[Group] = field(default_factory=list)


def spec_sections(text: str) -> list[Section]:
    """The sections of a configspec; a comment describes the keys right below it, up to a blank line."""
    sections: list[Section] = []
    comment: list[str] = []
    group: Group | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            sections.append(Section(line[1:-1]))
            comment, group = [], None
        elif line.startswith("#"):
            if group is not None:
                group = None
            comment.append(line.lstrip("#").strip())
        elif not line:
            group = None
            if sections and comment and not sections[-1].groups:
                comment = []                 # a note on the whole file or section, not a key
        elif sections and "=" in line:
            key, _, check = (part.strip() for part in line.partition("="))
            if group is None:
                group = Group(text=" ".join(comment))
                sections[-1].groups.append(group)
                comment = []
            group.keys.append((key, check))
    return sections


def check_parts(check: str) -> tuple[str, list, dict]:
    """``integer(min=0, default=3)`` as ("integer", [], {"min": 0, "default": 3})."""
    call = ast.parse(check, mode="eval").body
    if not isinstance(call, ast.Call):
        return "", [], {}
    name = call.func.id if isinstance(call.func, ast.Name) else ""
    return name, [ast.literal_eval(a) for a in call.args], {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def reloaded(check: str) -> bool:
    """Whether SIGHUP applies a changed value of a key with this check (``reload=True``)."""
    return check_parts(check)[2].get("reload") is True


def reloadable(text: str) -> set[tuple[str, str]]:
    """(section, KEY) of every key of a configspec that SIGHUP applies."""
    return {(section.name, key) for section in spec_sections(text) for group in section.groups
            for key, check in group.keys if reloaded(check)}


def describe_check(check: str) -> str:
    """``integer(min=0, max=64, default=0)`` as "a whole number from 0 to 64; default 0"."""
    if not check_parts(check)[0]:
        return check
    sighup = "; SIGHUP applies it" if reloaded(check) else ""
    default = check_default(check)
    return f"{check_kind(check)}; {'required' if default is None else 'default ' + default}{sighup}"


def check_kind(check: str) -> str:
    """What a value must be: ``integer(min=0, max=64)`` as "a whole number from 0 to 64"."""
    name, args, kwargs = check_parts(check)
    if not name:
        return check
    kinds = {"boolean": "1 or 0", "integer": "a whole number", "float": "a number", "string": "text",
             "secret": "a password (never logged)", "abspath": "an absolute path", "dn": "a DN",
             "ldap_uris": "LDAP URIs", "ldap_filter": "an LDAP filter", "identifier": "a name",
             "gateway": "text"}
    if name == "choice_ci":
        kind = "one of " + ", ".join(args)
    else:
        kind = kinds.get(name, name)
    if "min" in kwargs and "max" in kwargs:
        kind += f" from {kwargs['min']:g} to {kwargs['max']:g}"
    elif "min" in kwargs:
        kind += f", at least {kwargs['min']:g}"
    return kind


def check_default(check: str) -> str | None:
    """A check's default as the docs show it ("unset", "empty", "1", "600", ...); None: the key is required."""
    kwargs = check_parts(check)[2]
    if "default" not in kwargs:
        return None
    default = kwargs["default"]
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)
