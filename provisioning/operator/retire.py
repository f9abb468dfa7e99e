"""provisioning-daemon retire UID|DN: archive an orphan's data, explicitly, through the plugin's delete hook.

The daemon never deletes what it was not asked to delete: an account whose
entry left the directory without a delete request keeps its data, and the
audit lists it as an orphan. ``retire`` is the explicit request for one:

1. it refuses while the directory holds an active entry with that name
   (whichever host it names), or one with a request open;
2. it audits that one name (provisioning.engine.audit): only what the plugin
   finds there as retirable (an orphan, or what a done delete left) is
   taken, and only when something shows whose it is (the plugin gives the
   entry its delete hook is called with: the daemon's last record of it, or
   what the host shows, such as the owner marker's entryUUID);
3. it refuses when that entryUUID names an active entry of the directory
   (an owner marker that is another account's);
4. it runs the plugin's delete hook with that entry, under the entry's lock
   on this host, as the daemon would: DELETE_DATA decides (archive, keep
   or remove), and the plugin judges the account directory's owner marker
   once more before it touches anything.

Exit code: 0 retired, 1 refused or failed, 2 could not check, 3 usage.
"""
from __future__ import annotations

import argparse
import sys

from ldap.filter import escape_filter_chars

from provisioning.base.entry import Entry
from provisioning.base.finding import Finding
from provisioning.base.log import escape
from provisioning.engine import audit
from provisioning.engine.entrylock import Busy, EntryLocks
from provisioning.engine.protocol import ACTIVE, STATE
from provisioning.hooks.service import Request
from provisioning.operator.audit import TROUBLE, finding_line
from provisioning.operator.session import CANNOT_CHECK, Parser, Session, SessionError, open_session
from provisioning.runtime import startup

PROG = "provisioning-daemon retire"
RETIRED, REFUSED = 0, 1
# Seconds retire waits for a request of the daemon on the same entry.
WAIT = 60.0


class Refusal(Exception):
    """Not retired: the message says why."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(
        prog=PROG,
        description="Archive (as [Backup] DELETE_DATA says) what this host holds for an account whose entry is "
                    "gone: the orphans that provisioning-daemon audit lists. Refused while the directory has an "
                    "active entry for it. Exit code: 0 retired, 1 refused or failed, 2 could not check, 3 usage.")
    startup.add_config_options(parser)
    parser.add_argument("-d", "--debug", action="store_true", help="log on stderr as well")
    parser.add_argument("name", metavar="UID|DN", help="the account: its uid, or its entry's DN")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        session = open_session(args, changes=True)
    except SessionError as err:
        return _say(f"{PROG}: cannot check: {err}", CANNOT_CHECK)
    except TROUBLE as err:
        return _say(f"{PROG}: cannot connect to the directory: {err}", CANNOT_CHECK)
    try:
        return retire(session, args.name)
    except Refusal as err:
        return _say(f"NOT retired {args.name}: {err}", REFUSED)
    except TROUBLE as err:
        return _say(f"{PROG}: could not check: {err}", CANNOT_CHECK)
    finally:
        session.close()


def retire(session: Session, name: str) -> int:
    """Retire ``name`` or raise Refusal (see the module's docstring)."""
    try:
        kind, value = audit.name_of(name)
    except ValueError as err:
        raise Refusal(str(err)) from None
    _no_active(session, f"({escape_filter_chars(kind)}={escape_filter_chars(value)})", f"{kind} {value}")
    entry = _whose(session, name)
    if entry.uuid:
        _no_active(session, f"(entryUUID={escape_filter_chars(entry.uuid)})", f"entryUUID {entry.uuid}")
    locks = EntryLocks(session.config.entry_lock_dir)
    locks.prepare()
    try:
        with locks.hold(entry.key, entry.dn, wait=WAIT):
            code = session.service.run(Request("delete", entry))
    except Busy as err:
        raise Refusal(f"{err}: a request of the daemon is in hand; try again later") from None
    if code != 0:
        return _say(f"retire of {name} FAILED: the delete hook ended with return value {code} "
                    f"({session.service.meaning(code)}); the log says more", REFUSED)
    left = [f for f in audit.run(session.directory, session.base, session.config.database.search_filter,
                                 session.service, session.modus, only=name).findings if f.orphan]
    _say(f"retired {name} ({entry.dn}, entryUUID {entry.uuid}) as the delete hook does: DELETE_DATA decides "
         f"what became of the data (the log says)", RETIRED)
    for finding in left:
        _say(f"still here: {finding_line(finding, session)}", RETIRED)
    if not left:
        _say(f"the audit finds nothing of {name} left on this host", RETIRED)
    return RETIRED


def _no_active(session: Session, term: str, what: str) -> None:
    """Refusal when the directory holds an active entry (or one with a request open) matching ``term``."""
    template = audit.search_filter(session.config.database.search_filter, None)
    for entry in session.directory.each(session.base, f"(&{template}{term})"):
        if (entry.get(ACTIVE) or "TRUE").strip().upper() != "FALSE":
            host = session.service.not_ours(entry)
            where = f" (another host's: {host})" if host else ""
            raise Refusal(f"the directory holds an active entry with {what}: {entry.dn}{where}; an entry that "
                          f"is gone, or inactive, can be retired")
        if (entry.get(STATE) or "").strip() == "0":
            raise Refusal(f"{entry.dn} has a request open: the daemon's to do")


def _whose(session: Session, name: str) -> Entry:
    """The entry to delete with: what the audit of ``name`` finds retirable, when it shows whose it is."""
    report = audit.run(session.directory, session.base, session.config.database.search_filter, session.service,
                       session.modus, only=name)
    uid = audit.name_of(name)[1]
    mine = [f for f in report.findings if f.name == uid or f.subject in (name, uid)
            or f.name is None and f.subject.endswith(f"/{uid}")]
    if report.audit.cannot is not None:
        raise Refusal(f"the plugin cannot say what it holds for it: {report.audit.cannot}")
    if not mine:
        raise Refusal("the audit finds nothing to retire for it on this host")
    blocking = [f for f in mine if not f.orphan or f.entry is None]
    if blocking:
        raise Refusal("; ".join(_shown(f) for f in blocking))
    return next(f.entry for f in mine if f.entry is not None)


def _shown(finding: Finding) -> str:
    return f"{finding.kind} {finding.subject}: {finding.detail}"


def _say(text: str, code: int) -> int:
    print(escape(text), file=sys.stdout if code == RETIRED else sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
