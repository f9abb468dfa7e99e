"""provisioning-daemon deletions: what the deletion brake holds, and an operator's decision on it.

The brake (provisioning.engine.brake) keeps removals that came in bulk in the
store's ``held`` table; nothing is deleted until an operator decides here:

- ``--list`` (the default) shows them, with the decisions not carried out yet;
- ``--approve`` asks the daemon to run the delete hook for them (it checks
  once more that each entry is still gone from the directory);
- ``--keep`` asks it to forget them and leave their data on the host.

Decisions go into the store's ``approvals`` table, the one table another
process writes; the daemon notices them within a second and carries them
out (or at its next start). This command needs no LDAP connection.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from pathlib import Path

from provisioning.runtime import startup
from provisioning.backend.dn import normal_dn
from provisioning.backend.store import APPROVE, KEEP
from provisioning.base.codes import ExitCode
from provisioning.base.files import UnsafeFile, check_private
from provisioning.operator.lockholder import holder
from provisioning.base.log import escape

PROG = "provisioning-daemon deletions"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="List the removals the deletion brake holds, or decide on them: --approve runs the "
                    "delete hook, --keep forgets the entry and keeps its data. The daemon carries the "
                    "decision out within a second (or at its next start).")
    startup.add_config_options(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="show the held removals (the default)")
    action.add_argument("--approve", action="store_true", help="delete them (the entries named, or --all)")
    action.add_argument("--keep", action="store_true", help="keep their data and forget the entries")
    parser.add_argument("--all", action="store_true", help="with --approve or --keep: every held removal")
    parser.add_argument("--json", action="store_true", help="--list as JSON")
    parser.add_argument("entries", nargs="*", metavar="DN|ENTRYUUID", help="held removals to decide on")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    deciding = args.approve or args.keep
    if deciding and not (args.entries or args.all):
        parser.error("name the held removals (DN or entryUUID) or give --all")
    if not deciding and (args.entries or args.all):
        parser.error("DN, entryUUID and --all go with --approve or --keep")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    loaded = startup.load_for(PROG, args)
    if loaded is None:
        return ExitCode.CONFIG_ERROR
    path = loaded.config.store_file
    try:
        check_private(path)
        if not path.exists():
            print(f"no store {escape(str(path))} yet: nothing is held")
            return ExitCode.OK
        db = sqlite3.connect(f"file:{path}?mode={'rw' if args.approve or args.keep else 'ro'}", uri=True,
                             isolation_level=None, timeout=10)
    except (UnsafeFile, sqlite3.Error) as err:
        print(f"{PROG}: STORE_FILE {escape(str(path))}: {err}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        held = _held(db)
        if args.approve or args.keep:
            return _decide(db, held, args, loaded.config.lock_file)
        _list(held, _decisions(db), args.json)
        return ExitCode.OK
    except sqlite3.Error as err:
        print(f"{PROG}: STORE_FILE {escape(str(path))}: {err}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    finally:
        db.close()


def _held(db: sqlite3.Connection) -> list[tuple[str, str, float]]:
    try:
        return db.execute("SELECT uuid, dn, since FROM held ORDER BY since, dn").fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []                      # a store of an earlier version: it never held anything
        raise


def _decisions(db: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(db.execute("SELECT uuid, decision FROM approvals").fetchall())
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return {}
        raise


def _list(held: list[tuple[str, str, float]], decisions: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"dn": dn, "entryUUID": uuid, "held_since": _stamp(since),
                           "decision": decisions.get(uuid)} for uuid, dn, since in held], indent=2))
        return
    if not held:
        print("no removal is held by the deletion brake")
        return
    print(f"{len(held)} removal(s) held by the deletion brake (nothing is deleted until you decide):")
    for uuid, dn, since in held:
        decided = decisions.get(uuid)
        note = f"  [{decided}d, waiting for the daemon]" if decided else ""
        print(escape(f"  {dn}  (entryUUID {uuid}, held since {_stamp(since)}){note}"))
    print("decide with --approve (run the delete hook) or --keep (keep the data, forget the entry), "
          "naming DNs or entryUUIDs, or --all")


def _decide(db: sqlite3.Connection, held: list[tuple[str, str, float]], args: argparse.Namespace,
            lock: Path) -> int:
    decision = APPROVE if args.approve else KEEP
    chosen, unknown = _choose(held, args.entries, args.all)
    for name in unknown:
        print(escape(f"{name}: not held by the deletion brake; nothing decided for it"), file=sys.stderr)
    if chosen:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO approvals VALUES (?, ?, ?)",
                       [(uuid, decision, time.time()) for uuid, _ in chosen])
        db.execute("COMMIT")
    verb = "approved for deletion" if decision == APPROVE else "kept (data stays, entries forgotten)"
    for uuid, dn in chosen:
        print(escape(f"{dn}: {verb}"))
    daemon = holder(lock)
    when = (f"the daemon (process {daemon.pid}) carries this out within seconds" if daemon.running
            else "no daemon runs: carried out at its next start")
    print(f"{len(chosen)} removal(s) {verb}; {when}")
    return ExitCode.NOT_RETRIED if unknown else ExitCode.OK


def _choose(held: list[tuple[str, str, float]], names: list[str], every: bool
            ) -> tuple[list[tuple[str, str]], list[str]]:
    """The held removals named (by DN or entryUUID), and the names that match none."""
    if every:
        return [(uuid, dn) for uuid, dn, _ in held], []
    by_uuid = {uuid.lower(): (uuid, dn) for uuid, dn, _ in held}
    by_dn = {normal_dn(dn): (uuid, dn) for uuid, dn, _ in held}
    chosen: dict[str, str] = {}
    unknown = []
    for name in names:
        found = by_uuid.get(name.strip().lower()) or by_dn.get(normal_dn(name))
        if found is None:
            unknown.append(name)
        else:
            chosen[found[0]] = found[1]
    return list(chosen.items()), unknown


def _stamp(since: float) -> str:
    return f"{dt.datetime.fromtimestamp(since, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
