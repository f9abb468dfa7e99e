"""provisioning-daemon explain DN|UID: what the daemon knows of one entry and what it would do now, in words.

For each entry of the directory with that name (and for the name alone when
the directory has none):

- whether it is this host's, and if not, the two values that differ (its
  ``host``, this daemon's ENVIRONMENT);
- its request attributes and what they mean; the protocol that applies
  (selfcare or MODUS LDAP);
- what the daemon would do now: claim and work it, refuse it (which check,
  which return value; the plugin's own ``provisioning_validate`` too),
  wait for another's claim, or nothing, and why;
- the last outcome and when (the entry's attributes, and this host's record
  of the last request done under the entry's lock), whether a claim is
  held and by whom, whether a process of this host holds the entry's lock;
- the store's record (the version it knows, a failed hook, a removal the
  deletion brake holds, a write waiting for the directory; records of an
  earlier mirror);
- the audit's findings for it (provisioning.engine.audit, limited to that name).

Read only. Exit code: 0 explained, 1 the directory has no entry of that
name, 2 could not check, 3 usage.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from provisioning.backend.dn import normal_dn
from provisioning.backend.store import _known, _uri
from provisioning.base.entry import Entry
from provisioning.base.files import UnsafeFile, check_private
from provisioning.base.log import escape
from provisioning.engine import audit
from provisioning.engine.claims import Owners
from provisioning.engine.claims import parse as parse_claim
from provisioning.engine.entrylock import RECORD_MAX, EntryLocks
from provisioning.engine.ldapmode import ldap_verb
from provisioning.engine.protocol import CLAIMED, DATE, MODE, RETURN, STATE, Verdict, decide, is_selfcare
from provisioning.hooks.service import Request
from provisioning.operator.audit import TROUBLE, finding_line
from provisioning.operator.lockholder import holder
from provisioning.operator.returnvalues import describe, meanings
from provisioning.operator.session import CANNOT_CHECK, Parser, Session, SessionError, open_session
from provisioning.runtime import startup

PROG = "provisioning-daemon explain"
EXPLAINED, NO_ENTRY = 0, 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(
        prog=PROG,
        description="What the daemon knows of one entry and what it would do now: whether it is this host's, "
                    "its request and what it means, which check would refuse it, the last outcome, claims and "
                    "locks, the store's record, the audit's findings. Read only. Exit code: 0 explained, 1 no "
                    "entry of that name, 2 could not check, 3 usage.")
    startup.add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="everything as one JSON object")
    parser.add_argument("-d", "--debug", action="store_true", help="log on stderr as well")
    parser.add_argument("name", metavar="DN|UID", help="the entry's DN, or the account's uid")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        audit.name_of(args.name)
    except ValueError as err:
        print(f"{PROG}: {escape(str(err))}", file=sys.stderr)
        return CANNOT_CHECK
    try:
        session = open_session(args)
    except SessionError as err:
        return _cannot(str(err))
    except TROUBLE as err:
        return _cannot(f"cannot connect to the directory: {err}")
    try:
        found = explain(session, args.name)
    except TROUBLE as err:
        return _cannot(f"could not check: {err}")
    finally:
        session.close()
    if args.json:
        print(json.dumps(found, indent=2, default=str))
    else:
        print("\n".join(escape(line) for line in text(found)))
    return EXPLAINED if found["entries"] else NO_ENTRY


def _cannot(why: str) -> int:
    print(escape(f"{PROG}: {why}"), file=sys.stderr)
    return CANNOT_CHECK


# ---------------------------------------------------------------- gathering

def explain(session: Session, name: str) -> dict[str, Any]:
    """Everything explain says of ``name``, as plain values (text() words it, --json prints it)."""
    entries = list(session.directory.each(session.base, audit.search_filter(session.config.database.search_filter,
                                                                            name)))
    if "=" in name:
        entries = sorted(entries, key=lambda e: normal_dn(e.dn) != normal_dn(name))
    report = audit.run(session.directory, session.base, session.config.database.search_filter, session.service,
                       session.modus, only=name)
    store = StoreRecords(session.config.store_file)
    known = meanings(session.service.manager)
    return {"name": name, "subtree": session.base,
            "entries": [_entry(session, entry, store, known) for entry in entries],
            "store": [r for r in store.named(name) if r["uuid"] not in {e.uuid for e in entries}],
            "findings": [{"kind": f.kind, "subject": f.subject, "detail": f.detail, "repairable": f.repairable,
                          "entryUUID": f.uuid, "line": finding_line(f, session)} for f in report.findings],
            "notes": report.audit.notes}


def _entry(session: Session, entry: Entry, store: "StoreRecords", known: dict[int, str]) -> dict[str, Any]:
    whose = session.service.not_ours(entry)
    selfcare = session.modus == "selfcare" or session.modus == "combined" and is_selfcare(entry)
    lock = EntryLocks(session.config.entry_lock_dir).path(entry.key)
    return {
        "dn": entry.dn, "entryUUID": entry.uuid, "entryCSN": entry.csn,
        "this_host": whose is None, "why_not": whose,
        "protocol": "selfcare" if selfcare else "LDAP",
        "request": {name: entry.get(name) for name in (MODE, STATE, DATE, RETURN, "sstIsActive")},
        "meaning": _meaning(entry, known),
        "now": _now(session, entry, selfcare, whose, store, known),
        "claim": _claim(entry),
        "lock": _lock(lock),
        "last_done_here": _last_done(lock),
        "store": _record(store.record(entry.uuid)),
        "held": store.held(entry.uuid),
        "pending_write": store.pending(entry.dn),
    }


def _meaning(entry: Entry, known: dict[int, str]) -> str:
    mode, state, value = entry.get(MODE), (entry.get(STATE) or "").strip(), entry.get(RETURN)
    if mode is None:
        return "no sstProvisioningMode: not a selfcare request (MODUS LDAP treats the entry itself as the account)"
    outcome = f", return value {value} ({describe(value, known)})" if value is not None else ""
    if state and state != "0":
        return f"its last request ({mode}) was done at {state}{outcome}"
    due = entry.get(DATE)
    when = "now" if (due or "").strip() == "0" else f"on {due}"
    return f"a request: {mode}, to be done {when}{outcome}"


def _now(session: Session, entry: Entry, selfcare: bool, whose: str | None, store: "StoreRecords",
         known: dict[int, str]) -> str:
    """What the daemon would do with the entry now, in words."""
    if whose is not None:
        return "nothing: it is another host's, left untouched (logged once at INFO)"
    previous = store.record(entry.uuid)
    if not selfcare:
        verb = ldap_verb(entry, previous)
        if verb is None:
            return "nothing: this version was handled (the store knows its entryCSN)"
        return _validated(session, entry, verb, previous, known, f"run the {verb} hook (MODUS LDAP)")
    owners = Owners(session.config.daemon.claim_lease, host=session.config.daemon.node_name or None)
    decision = decide(entry, dt.date.today(), owners)
    if decision.verdict is Verdict.IGNORE:
        return f"nothing: {decision.reason}"
    if decision.verdict is Verdict.REFUSE:
        return f"refuse it with return value {decision.code} ({describe(decision.code, known)}): {decision.reason}"
    if decision.verdict is Verdict.POSTPONE:
        return f"wait: {decision.reason}, then claim it"
    if decision.verdict is Verdict.WATCH:
        return f"wait for another daemon's claim: {decision.reason}"
    what = "take the claim over and run" if decision.verdict is Verdict.RESUME else "claim it and run"
    return _validated(session, entry, decision.verb, previous, known,
                      f"{what} the {decision.verb} hook ({decision.reason})")


def _validated(session: Session, entry: Entry, verb: str, previous: Any, known: dict[int, str], then: str) -> str:
    """``then``, unless the plugin's provisioning_validate would refuse the request first."""
    code = session.service.validate(Request(verb, entry, previous.entry() if previous else None))
    if code is None:
        return then
    return f"refuse it before the claim: the plugin's check says {code} ({describe(code, known)})"


def _claim(entry: Entry) -> str | None:
    """Who holds the claim of the request in hand (or failed), or who made the last one."""
    claim = parse_claim(entry.values("sstProvisioningExecutionTime"))
    if claim is None:
        return None
    made = f"{claim.host} process {claim.pid} at {claim.at:%Y-%m-%d %H:%M:%S} UTC"
    if (entry.get(STATE) or "").strip() == "0" and (entry.get(MODE) or "").strip().lower() in CLAIMED:
        return f"held: claimed by {made}" + (", which failed" if entry.get(RETURN) is not None else "")
    return f"none held (the last was made by {made})"


def _lock(path: Path) -> str:
    held = holder(path)
    if held.running:
        return f"held by process {held.pid} of this host: a request of this entry is in hand"
    return "free"


def _last_done(path: Path) -> dict | None:
    """The record of the last request done under the entry's lock on this host (read, never locked)."""
    try:
        check_private(path)
        with open(path, "rb") as handle:
            raw = handle.read(RECORD_MAX)
        return json.loads(raw) if raw.strip() else None
    except (OSError, UnsafeFile, ValueError):
        return None


def _record(known: Any) -> dict | None:
    """The store's record of an entry (a Known), as plain values."""
    if known is None:
        return None
    return {"dn": known.dn, "entryCSN": known.csn, "failed": known.failed, "answered": known.answered}


# ---------------------------------------------------------------- the store, read only

class StoreRecords:
    """What STORE_FILE says of entries, read only (nothing when it is missing or unreadable)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            check_private(self.path)
            if not self.path.exists():
                return []
            db = sqlite3.connect(_uri(self.path, "mode=ro"), uri=True)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        except (UnsafeFile, sqlite3.Error):
            return []

    def record(self, uuid: str | None) -> Any:
        rows = self._rows("SELECT uuid, dn, csn, attrs, failed, answered FROM entries WHERE uuid=?", (uuid,))
        return _known(rows[0]) if rows else None

    def held(self, uuid: str | None) -> str | None:
        rows = self._rows("SELECT since FROM held WHERE uuid=?", (uuid,))
        return f"held by the deletion brake since {_stamp(rows[0][0])}" if rows else None

    def pending(self, dn: str) -> str | None:
        rows = self._rows("SELECT dn, body FROM pending")
        for written, body in rows:
            if normal_dn(written) == normal_dn(dn):
                return json.loads(body).get("what") or "a write"
        return None

    def named(self, name: str) -> list[dict]:
        """The store's records (current and retired) of entries with that DN or uid."""
        kind, value = audit.name_of(name)
        found = []
        for table, extra in (("entries", "failed"), ("retired", "since")):
            for uuid, dn, attrs, more in self._rows(f"SELECT uuid, dn, attrs, {extra} FROM {table}"):  # noqa: S608
                values = {k.lower(): v for k, v in json.loads(attrs).items()}
                if normal_dn(dn) == normal_dn(name) or value in values.get(kind.lower(), []):
                    found.append({"table": table, "uuid": uuid, "dn": dn,
                                  "note": (f"retired since {_stamp(more)} (an earlier mirror's)" if table == "retired"
                                           else "known; the directory no longer has it: removed while the daemon "
                                                "did not see it, or not seen yet")})
        return found


def _stamp(seconds: float) -> str:
    return f"{dt.datetime.fromtimestamp(seconds, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


# ---------------------------------------------------------------- words

def text(found: dict[str, Any]) -> list[str]:
    lines = []
    if not found["entries"]:
        lines.append(f"{found['name']}: no entry of that name below {found['subtree']} (with SEARCH_FILTER)")
    for entry in found["entries"]:
        lines += _entry_text(entry)
    for record in found["store"]:
        lines.append(f"the store: {record['dn']} (entryUUID {record['uuid']}): {record['note']}")
    if found["findings"]:
        lines.append("audit:")
        lines += [f"  {f['line']}" for f in found["findings"]]
    else:
        lines.append("audit: nothing on this host differs from the directory for it")
    lines += [f"  note: {note}" for note in found["notes"]]
    return lines


def _entry_text(entry: dict[str, Any]) -> list[str]:
    request = ", ".join(f"{k} {v!r}" for k, v in entry["request"].items() if v is not None) or "none"
    lines = [f"{entry['dn']} (entryUUID {entry['entryUUID']})",
             f"  this host's: {'yes' if entry['this_host'] else 'no: ' + entry['why_not']}",
             f"  protocol: {entry['protocol']}",
             f"  attributes: {request}",
             f"  meaning: {entry['meaning']}",
             f"  the daemon now: would {entry['now']}" if not entry["now"].startswith("nothing") else
             f"  the daemon now: {entry['now']}",
             f"  claim: {entry['claim'] or 'none'}",
             f"  its lock on this host: {entry['lock']}"]
    done = entry["last_done_here"]
    if done:
        lines.append(f"  last request done on this host: {done.get('verb')}, return value {done.get('code')} "
                     f"(entryCSN {done.get('judged')}, by {done.get('by') or 'a daemon of this host'})")
    lines.append(f"  the store: {_store_text(entry)}")
    for extra in (entry["held"], entry["pending_write"] and f"a write waits for the directory: "
                                                          f"{entry['pending_write']}"):
        if extra:
            lines.append(f"  {extra}")
    return lines


def _store_text(entry: dict[str, Any]) -> str:
    record = entry["store"]
    if record is None:
        return "does not know it (never seen, or the daemon has not run since it came)"
    same = "the version the directory holds" if record["entryCSN"] == entry["entryCSN"] else \
        f"another version (entryCSN {record['entryCSN']}; the directory's is {entry['entryCSN']})"
    failed = f"; its {record['failed']} hook failed (MODUS LDAP: tried again at the next change or start)" \
        if record["failed"] else ""
    return f"knows {same}{failed}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
