"""provisioning-daemon files: the files the package ships, for the operator of an installation.

An installed package keeps its example configuration, rsnapshot template,
schema LDIF and systemd unit inside site-packages (provisioning.config.resources).
This sub-command lists them, prints one, or copies one to where the host
needs it::

    provisioning-daemon files                         every shipped file and where it lies
    provisioning-daemon files --print NAME            print one, e.g. Rsnapshot.conf.template
    provisioning-daemon files --copy NAME TARGET      write one to TARGET, a new file (0600)

NAME is the file's path in the shipped tree (``Provisioning/Global.conf``)
or its unique end (``Global.conf``, ``Backup/Rsnapshot.conf.template``).
--copy never replaces anything: a TARGET that exists, a link included, is
refused; the copy is 0600 because a service configuration holds the LDAP
password.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from provisioning.config import resources
from provisioning.base.codes import ExitCode


class UnknownName(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="provisioning-daemon files",
        description="The files this package ships (example configuration, rsnapshot template, schema LDIF, "
                    "systemd unit): list them, print one, or copy one to a new file.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--print", metavar="NAME", dest="print_name",
                        help="print the shipped file NAME (its path in the list, or its unique end)")
    action.add_argument("--copy", nargs=2, metavar=("NAME", "TARGET"),
                        help="write the shipped file NAME to TARGET, which must not exist (created 0600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.print_name:
            sys.stdout.write(find(args.print_name).read_text(encoding="utf-8"))
            return ExitCode.OK
        if args.copy:
            name, target = args.copy
            source = find(name)
            copy_new(source, Path(target))
            print(f"provisioning-daemon: wrote {target} (0600) from {source}")
            return ExitCode.OK
    except UnknownName as err:
        print(f"provisioning-daemon files: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as err:
        print(f"provisioning-daemon files: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    root = resources.etc_root()
    print(f"# shipped with provisioning, in {root}")
    for relative in resources.shipped_files():
        print(f"{relative}\t{root / relative}")
    return ExitCode.OK


def find(name: str) -> Path:
    """The shipped file called ``name``: its relative path, or the one path ending in it."""
    names = resources.shipped_files()
    wanted = name.strip("/")
    if wanted in names:
        return resources.shipped_file(wanted)
    matches = [n for n in names if n.endswith("/" + wanted)]
    if len(matches) == 1:
        return resources.shipped_file(matches[0])
    if matches:
        raise UnknownName(f"{name} is ambiguous: {', '.join(matches)}")
    raise UnknownName(f"no shipped file {name}; there are: {', '.join(names)}")


def copy_new(source: Path, target: Path) -> None:
    """Write ``source`` to ``target``, which must not exist; never through a link."""
    # O_EXCL with O_CREAT fails on anything in the way, a symbolic link
    # included (it is not followed), so root never writes through one.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
