"""loadOpenLDAPsingleLDIF: apply one LDIF file to the directory a service config names.

The records may be entries (added), or change records with changetype add,
modify or delete. The bind DN and password come from the configuration file,
never from the command line, so they do not show in the process list.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ldap
import ldap.modlist

from provisioning.backend.ldap import BindRefused, DirectoryUnavailable, LdapSettings, connect, describe
from provisioning.config.loader import ConfigError

MOD_OPS = {"add": ldap.MOD_ADD, "delete": ldap.MOD_DELETE, "replace": ldap.MOD_REPLACE}


@dataclass
class Change:
    """One LDIF record."""

    dn: str
    kind: str                                               # add, modify or delete
    attrs: dict[str, list[bytes]] = field(default_factory=dict)          # for add
    mods: list[tuple[int, str, list[bytes] | None]] = field(default_factory=list)  # for modify


def parse_ldif(text: str) -> list[Change]:
    """The records of an LDIF text (RFC 2849: folded lines, comments, base64 values)."""
    blocks = list(_blocks(text))
    if blocks and blocks[0][1][0].lower().startswith("version:"):
        number, lines = blocks[0]
        blocks[0] = (number, lines[1:])      # "version: 1" may share the first record's block
    return [_record(lines, number) for number, lines in blocks if lines]


def _blocks(text: str):
    """(line number, unfolded lines) of each record; comments dropped, folded ones too."""
    lines: list[str] = []
    start = 1
    in_comment = False
    for number, raw in enumerate(text.splitlines() + [""], 1):
        if raw.startswith(" ") and (in_comment or lines):
            if not in_comment:
                lines[-1] += raw[1:]         # continuation of the previous line
            continue
        in_comment = raw.startswith("#")
        if in_comment:
            continue
        if raw.strip() == "":
            if lines:
                yield start, lines
            lines, start = [], number + 1
        else:
            lines.append(raw)


def _pair(line: str, number: int) -> tuple[str, bytes]:
    if line == "-":
        return "-", b""
    name, sep, rest = line.partition(":")
    if not sep:
        raise ValueError(f"record at line {number}: {line!r} is not 'name: value'")
    if rest.startswith(":"):
        return name, base64.b64decode(rest[1:].strip())
    return name, rest.strip().encode()


def _record(lines: list[str], number: int) -> Change:
    pairs = [_pair(line, number) for line in lines]
    if pairs[0][0].lower() != "dn":
        raise ValueError(f"record at line {number} does not start with dn:")
    dn = pairs[0][1].decode()
    kind = "add"
    body = pairs[1:]
    if body and body[0][0].lower() == "changetype":
        kind, body = body[0][1].decode().strip().lower(), body[1:]
    if kind == "add":
        attrs: dict[str, list[bytes]] = {}
        for name, value in body:
            attrs.setdefault(name, []).append(value)
        return Change(dn, kind, attrs=attrs)
    if kind == "delete":
        return Change(dn, kind)
    if kind == "modify":
        return Change(dn, kind, mods=_modifications(body, number))
    raise ValueError(f"record at line {number}: changetype {kind} is not supported (add, modify, delete)")


def _modifications(body: list[tuple[str, bytes]], number: int) -> list[tuple[int, str, list[bytes] | None]]:
    mods = []
    current: tuple[int, str, list[bytes]] | None = None
    for name, value in body:
        if name == "-":
            current = None
        elif current is None:
            if name.lower() not in MOD_OPS:
                raise ValueError(f"record at line {number}: {name!r} is not add, delete or replace")
            current = (MOD_OPS[name.lower()], value.decode().strip(), [])
            mods.append(current)
        else:
            current[2].append(value)
    return [(op, attr, values or None) for op, attr, values in mods]


def apply(conn, changes: list[Change]) -> None:
    """Apply every record in order; stop at the first the server refuses."""
    for change in changes:
        if change.kind == "add":
            conn.add_s(change.dn, ldap.modlist.addModlist(change.attrs))
        elif change.kind == "delete":
            conn.delete_s(change.dn)
        else:
            conn.modify_s(change.dn, change.mods)
        print(f"{change.kind} {change.dn}: done")


class NoConfiguration(Exception):
    """No configuration was named and none can be taken safely."""


def choose_config(explicit: str | None, *, sandbox: bool = False) -> tuple[str, str]:
    """The configuration to use and where that choice came from; NoConfiguration if none.

    -c FILE, else $PROVISIONING_CONFIG. Only with ``sandbox`` (--sandbox, which
    a checkout's bin/loadOpenLDAPsingleLDIF passes) the sandbox's after that,
    and only while that sandbox runs: a configuration left by a sandbox that
    stopped points at a slapd that is gone (or, worse, at another one on the
    same port). The installed command never guesses: on a host where someone
    runs a checkout's sandbox, it would write production entries into it.
    """
    from provisioning.sandbox.layout import SandboxLayout

    if explicit:
        return explicit, "-c"
    from_env = os.environ.get("PROVISIONING_CONFIG")
    if from_env:
        return from_env, "$PROVISIONING_CONFIG"
    if not sandbox:
        raise NoConfiguration("no service configuration: give -c FILE or set PROVISIONING_CONFIG "
                              "(a running sandbox's is used only by a checkout's bin/loadOpenLDAPsingleLDIF, "
                              "or with --sandbox)")
    sandbox_layout = SandboxLayout.default()
    if not sandbox_layout.service_config.is_file():
        raise NoConfiguration("no service configuration: give -c FILE or set PROVISIONING_CONFIG "
                              f"(and no sandbox configuration in {sandbox_layout.root})")
    pid = sandbox_layout.running_pid()
    if pid is None:
        raise NoConfiguration(f"no -c FILE and no PROVISIONING_CONFIG, and the sandbox configuration "
                              f"{sandbox_layout.service_config} is left from a sandbox that no longer runs (no "
                              f"live process in {sandbox_layout.pid_file}): start bin/sandbox, or give -c FILE")
    return str(sandbox_layout.service_config), f"the sandbox running as process {pid}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadOpenLDAPsingleLDIF", description=__doc__.splitlines()[0])
    parser.add_argument("ldif", metavar="FILE", help="LDIF file with entries or change records")
    parser.add_argument("-c", "--config",
                        help="service configuration whose [Database] to use (default: $PROVISIONING_CONFIG)")
    parser.add_argument("--sandbox", action="store_true",
                        help="without -c and $PROVISIONING_CONFIG, use the running sandbox's configuration "
                             "(what a checkout's bin/loadOpenLDAPsingleLDIF does)")
    parser.add_argument("-g", "--global-config", help="Global.conf (default: as the daemon finds it)")
    args = parser.parse_args(argv)
    try:
        path, source = choose_config(args.config, sandbox=args.sandbox)
    except NoConfiguration as err:
        print(f"loadOpenLDAPsingleLDIF: {err}", file=sys.stderr)
        return 2
    print(f"loadOpenLDAPsingleLDIF: configuration {path} (from {source})", file=sys.stderr)
    from provisioning.runtime.startup import load_configuration

    try:
        config, _ = load_configuration(Path(path), args.global_config)
        changes = parse_ldif(Path(args.ldif).read_text(encoding="utf-8"))
        conn, uri = connect(LdapSettings.from_config(config))
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 3
    except (OSError, ValueError, BindRefused) as err:
        print(f"loadOpenLDAPsingleLDIF: {err}", file=sys.stderr)
        return 1
    except DirectoryUnavailable as err:
        print(f"loadOpenLDAPsingleLDIF: {err} (the server named in {path}, from {source})", file=sys.stderr)
        return 1
    try:
        apply(conn, changes)
    except ldap.LDAPError as err:
        print(f"loadOpenLDAPsingleLDIF: {args.ldif}: {describe(err)}", file=sys.stderr)
        return 1
    finally:
        conn.unbind_s()
    return 0


if __name__ == "__main__":
    sys.exit(main())
