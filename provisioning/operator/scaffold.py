"""provisioning-daemon new-plugin SERVICE/TYPE DIR: a ready plugin project to start from.

DIR gets an installable package (pyproject.toml) with its entry point, the
plugin (its own configuration section and spec, every key with a default;
every hook logging what it got, the request hooks returning 0), the service
configuration template ``etc/Provisioning/SERVICE/TYPE.conf.template`` and a
test against a throwaway slapd. ``python -m pip install -e DIR`` (with the
Python provisioning runs on) and a configuration naming SERVICE/TYPE are all
it takes to see a request go add -> adding -> added. DIR must be new or an empty folder: nothing is ever overwritten.
"""
from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from provisioning.operator import scaffold_templates as templates
from provisioning.base.codes import ExitCode

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Sections of the service configuration that are the core's.
CORE_SECTIONS = {"global", "database", "service", "gateway"}


class ScaffoldError(Exception):
    """The plugin cannot be written as asked (bad name, DIR not empty)."""


@dataclass(frozen=True)
class Names:
    service: str
    type_: str

    @classmethod
    def parse(cls, text: str) -> "Names":
        service, slash, type_ = text.partition("/")
        if not slash or not _NAME.fullmatch(service) or not _NAME.fullmatch(type_):
            raise ScaffoldError(f"{text!r} is not SERVICE/TYPE (two names of letters, digits and _, "
                                f"each starting with a letter, as [Service] SERVICE and TYPE take them)")
        if type_.lower() in CORE_SECTIONS:
            raise ScaffoldError(f"TYPE {type_} would name the plugin's section [{type_}], which is the core's")
        return cls(service, type_)

    @property
    def package(self) -> str:
        return f"provisioning_{self.service}_{self.type_}".lower()

    @property
    def dist(self) -> str:
        return self.package.replace("_", "-")

    @property
    def class_name(self) -> str:
        return "".join(part[:1].upper() + part[1:] for part in re.split(r"_+", f"{self.service}_{self.type_}")
                       if part)

    def fill(self, text: str) -> str:
        values = {"SERVICE": self.service, "TYPE": self.type_, "PACKAGE": self.package, "DIST": self.dist,
                  "CLASS": self.class_name, "SECTION": self.type_, "SECTION_LOWER": self.type_.lower()}
        return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)


def files(names: Names) -> dict[str, str]:
    """Relative path -> content of every file of the project."""
    return {
        "pyproject.toml": templates.PYPROJECT,
        "README.md": templates.README,
        ".gitignore": templates.GITIGNORE,
        f"{names.package}/__init__.py": templates.INIT,
        f"{names.package}/plugin.py": templates.PLUGIN,
        f"etc/Provisioning/{names.service}/{names.type_}.conf.template": templates.CONF_TEMPLATE,
        f"tests/test_{names.package.removeprefix('provisioning_')}.py": templates.TEST,
    }


def write(names: Names, target: Path) -> list[Path]:
    """Write the project into ``target`` (new, or an empty folder); the files written."""
    _check_target(target)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, template in files(names).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:        # "x": never over an existing file
            handle.write(names.fill(template))
        written.append(path)
    return written


def _check_target(target: Path) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ScaffoldError(f"{target} is a symbolic link: name a new folder, or an empty one")
    if not stat.S_ISDIR(info.st_mode):
        raise ScaffoldError(f"{target} exists and is not a folder")
    if any(target.iterdir()):
        raise ScaffoldError(f"{target} is not empty: refusing to write into it (name a new folder, or an empty one)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="provisioning-daemon new-plugin",
        description="Write a ready plugin project for SERVICE/TYPE into DIR (a new or empty folder): an "
                    "installable package with its entry point, configuration section and template, hooks "
                    "that log what they got, and a test against a throwaway slapd. See docs/PLUGINS.md.")
    parser.add_argument("plugin", metavar="SERVICE/TYPE", help="the plugin's name, e.g. Mail/Forward")
    parser.add_argument("dir", metavar="DIR", type=Path, help="where to write it (new or empty)")
    args = parser.parse_args(argv)
    try:
        names = Names.parse(args.plugin)
        written = write(names, args.dir)
    except (ScaffoldError, OSError) as err:
        print(f"provisioning-daemon new-plugin: {err}", file=sys.stderr)
        return ExitCode.USAGE
    root = args.dir
    print(f"new-plugin: {names.service}/{names.type_} written into {root}:")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print("\n".join(next_steps(names, root.absolute())))
    return ExitCode.OK


def next_steps(names: "Names", root: Path) -> list[str]:
    """What to run next, with the Python this provisioning runs on: the plugin goes where it can see
    provisioning (and its pytest plugin), and pytest runs there; a bare `pytest` may be another Python's."""
    python = Path(sys.executable)
    conf = f"{names.type_}.conf"
    steps = ["next:"]
    if _externally_managed():
        # Debian's python3 (provisioning from the Debian package): pip may not install into it
        # (PEP 668). A virtualenv that sees Debian's packages, the plugin editable in it.
        venv = root / ".venv"
        python = venv / "bin/python"
        steps += [f"  {sys.executable} -m venv --system-site-packages {venv}   # sees Debian's provisioning and python3-pytest",
                  f"  {python} -m pip install -e {root}"]
    else:
        steps.append(f"  {python} -m pip install -e {root}        # editable: changes count without installing again")
    steps += [f"  {python} -m provisioning --list-plugins",
              f"  cp {root}/etc/Provisioning/{names.service}/{names.type_}.conf.template {conf}   # set [Database]",
              f"  {python} -m provisioning -c {conf} -t",
              f"  cd {root} && {python} -m pytest          # its test, against a throwaway slapd"]
    if not _has_pytest():
        steps.append(f"pytest is not installed for {sys.executable}: "
                     + ("apt install python3-pytest" if _externally_managed()
                        else f"{sys.executable} -m pip install 'provisioning[test]'"))
    steps.append(f"or without installing, from a checkout of provisioning: see {root}/README.md")
    return steps


def _externally_managed() -> bool:
    """A Python whose packages the distribution manages (PEP 668): Debian's own python3."""
    import sysconfig

    return sys.prefix == sys.base_prefix and Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").is_file()


def _has_pytest() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest") is not None
