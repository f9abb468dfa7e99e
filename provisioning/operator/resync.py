"""provisioning-daemon resync: the safe way to force a full refresh (all entries, or one).

Deleting COOKIE_FILE was the old way, and is not a safe one: the store and
the file then disagree, and what the daemon makes of that is not what the
operator meant. ``resync`` writes the request into the store's ``resyncs``
table (the daemon notices it within a second, or at its next start):

- without ``--entry``: the daemon lets the work in hand end, reconnects and
  reads the whole subtree again from scratch. Every entry is judged against
  the store, as at any refresh: what was done is not redone (MODUS LDAP: an
  entry whose version the store knows calls no hook; selfcare: a request
  done is done), and entries that are gone go through the deletion brake;
- ``--entry DN`` (repeatable): that entry is read again and judged the same
  way; one the directory no longer holds (by its entryUUID, not by its DN)
  is a removal, through the deletion brake.

It needs no LDAP connection. Exit code 0, or 3 for a configuration or store
that cannot be used (2 for usage, argparse's).
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from provisioning.backend.dn import below, normal_dn
from provisioning.backend.store import EVERYTHING
from provisioning.base.codes import ExitCode
from provisioning.base.files import UnsafeFile, check_private
from provisioning.base.log import escape
from provisioning.operator.lockholder import holder
from provisioning.runtime import startup

PROG = "provisioning-daemon resync"
TABLE = "CREATE TABLE IF NOT EXISTS resyncs (what TEXT PRIMARY KEY, at REAL NOT NULL)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Have the daemon read the whole subtree again (or the entries named), judged against its "
                    "store: nothing done is redone, and removals go through the deletion brake. The daemon "
                    "starts within a second (or at its next start). The safe way to force a full refresh: do "
                    "not delete COOKIE_FILE.")
    startup.add_config_options(parser)
    parser.add_argument("--entry", action="append", default=[], metavar="DN",
                        help="judge this entry again instead of the whole subtree (repeatable)")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    loaded = startup.load(Path(args.config), args.global_config)
    if not loaded.valid:
        for problem in loaded.problems:
            print(f"{PROG}: {escape(problem)}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    config = loaded.config
    base = config.database.subtree
    outside = [dn for dn in args.entry if not below(dn, base, strictly=True)]
    if outside:
        for dn in outside:
            print(escape(f"{PROG}: {dn} is not below SERVICE_SUBTREE {base}: not this daemon's entry"),
                  file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    path = config.store_file
    try:
        check_private(path)
        if not path.exists():
            print(escape(f"no store {path} yet: the daemon's first start reads the whole subtree anyway"))
            return ExitCode.OK
        _ask(path, [normal_dn(dn) for dn in args.entry] or [EVERYTHING])
    except (UnsafeFile, sqlite3.Error) as err:
        print(escape(f"{PROG}: STORE_FILE {path}: {err}"), file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    what = f"{len(args.entry)} entr(y/ies) to be judged again" if args.entry else "a full refresh of " + base
    daemon = holder(config.lock_file)
    when = (f"the daemon (process {daemon.pid}) starts it within seconds" if daemon.running
            else "no daemon runs: it is done at its next start")
    print(escape(f"{what} asked for; {when}. Its log says when it is done."))
    return ExitCode.OK


def _ask(path: Path, what: list[str]) -> None:
    """Write the requests in one transaction (the table is made if an older daemon made none)."""
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(TABLE)
        db.executemany("INSERT OR REPLACE INTO resyncs VALUES (?, ?)", [(each, time.time()) for each in what])
        db.execute("COMMIT")
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
