"""provisioning-daemon audit: drift between the directory and this host, found (and with --repair, fixed).

Every entry of this host is compared with what is on the host, and what is
on the host with the directory (provisioning.engine.audit reads the
directory once, the plugin's ``provisioning_audit`` the host once). One line
per finding: its kind, the DN or path, what differs. Read only, and safe
beside the daemon. ``--repair`` fixes what the plugin says is safe and
idempotent, through its own steps, entry by entry under the entry's lock
(provisioning.engine.repair); orphans are listed with the ``retire``
command that archives one, never touched.

The first line and the exit code follow the monitoring convention: 0 clean,
1 drift found, 2 could not check, 3 usage.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from provisioning.backend.ldap import BindRefused, DirectoryError, DirectoryUnavailable, SubtreeMissing
from provisioning.base.finding import Expect, Finding
from provisioning.base.log import escape
from provisioning.base.stdout import quiet_broken_pipe
from provisioning.engine import audit, repair
from provisioning.engine.entrylock import EntryLocks
from provisioning.operator.session import CANNOT_CHECK, CLEAN, DRIFT, Parser, Session, SessionError, open_session
from provisioning.runtime import startup
from provisioning.transport import Unreachable

PROG = "provisioning-daemon audit"
# What cannot be read whole, or not at all: no audit (exit 2).
TROUBLE = (DirectoryUnavailable, DirectoryError, SubtreeMissing, BindRefused, audit.Incomplete, Unreachable, OSError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(
        prog=PROG,
        description="Compare every entry of this host with what is on the host, and what is on the host with "
                    "the directory: one line per finding, a summary first. Read only, safe beside the daemon. "
                    "Exit code: 0 clean, 1 drift found, 2 could not check, 3 usage.")
    startup.add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="everything as one JSON object")
    parser.add_argument("--repair", action="store_true",
                        help="fix what is safe and idempotent (a configuration, a quota, a jail, the home of an "
                             "active account), entry by entry under its lock, with the plugin's own steps; never "
                             "deletes or archives (orphans: see retire)")
    parser.add_argument("-d", "--debug", action="store_true", help="log on stderr as well")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        session = open_session(args, changes=args.repair)
    except SessionError as err:
        return _cannot(str(err), args.json)
    except TROUBLE as err:
        return _cannot(f"cannot connect to the directory: {err}", args.json)
    try:
        report = _audit(session)
        repairs = _repair(session, report) if args.repair and report.audit.cannot is None else []
        if repairs:
            report = _audit(session)
    except TROUBLE as err:
        return _cannot(f"could not check: {err}", args.json)
    finally:
        session.close()
    code = exit_code(report)
    _say(json.dumps(as_json(report, repairs, session, code), indent=2) if args.json
         else "\n".join(text(report, repairs, session, code)))
    return code


def _audit(session: Session) -> audit.Report:
    return audit.run(session.directory, session.base, session.config.database.search_filter, session.service,
                     session.modus)


def _repair(session: Session, report: audit.Report) -> list[repair.Repaired]:
    locks = EntryLocks(session.config.entry_lock_dir)
    locks.prepare()
    scope = repair.Scope(session.directory, session.base, session.config.database.search_filter, session.service,
                         session.modus)
    return [repair.repair_entry(scope, locks, uuid, dn) for uuid, dn in repair.targets(report.findings).items()]


def exit_code(report: audit.Report) -> int:
    if report.audit.cannot is not None:
        return CANNOT_CHECK
    return DRIFT if report.findings else CLEAN


def _cannot(why: str, as_json: bool) -> int:
    if as_json:
        _say(json.dumps({"state": "unknown", "exit_code": CANNOT_CHECK, "summary": why}, indent=2))
    else:
        _say("\n".join(escape(f"AUDIT UNKNOWN - {line}" if n == 0 else line)
                       for n, line in enumerate(why.splitlines() or [why])))
    return CANNOT_CHECK


def _say(output: str) -> None:
    try:
        print(output, flush=True)
    except BrokenPipeError:
        quiet_broken_pipe()


# ------------------------------------------------------------------ output

def retire_command(session: Session, name: str) -> str:
    return shlex.join(["provisioning-daemon", "retire", "-c", str(session.config.path), name])


def finding_line(finding: Finding, session: Session) -> str:
    line = f"{finding.kind} {finding.subject}: {finding.detail}"
    if finding.repairable:
        line += " [repairable: audit --repair]"
    elif finding.orphan and finding.entry is not None:
        line += f"; retire it with: {retire_command(session, finding.name)}"
    return escape(line)


def summary(report: audit.Report, session: Session, code: int) -> str:
    if code == CANNOT_CHECK:
        return f"AUDIT UNKNOWN - {session.plugin}: {report.audit.cannot}"
    census = report.census
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(report.by_kind().items()))
    found = f"{len(report.findings)} finding(s) ({counts}), {len(report.repairable)} repairable" \
        if report.findings else "no drift"
    state = "DRIFT" if report.findings else "OK"
    return (f"AUDIT {state} - {session.plugin}: {found}; {report.audit.checked} entr(y/ies) of this host compared, "
            f"{census.expected[Expect.OPEN]} with a request open (the daemon's), {census.others} of other hosts")


def text(report: audit.Report, repairs: list[repair.Repaired], session: Session, code: int) -> list[str]:
    lines = [escape(summary(report, session, code))]
    for done in repairs:
        lines += [escape(line) for line in repair_lines(done)]
    lines += [finding_line(finding, session) for finding in report.findings]
    lines += [escape(f"note: {note}") for note in report.audit.notes]
    if report.census.others:
        lines.append(escape(f"entries of other hosts, left untouched: {report.census.others}"))
        lines += [escape(f"  {dn}: {why}") for dn, why in report.census.shown]
        if report.census.others > len(report.census.shown):
            lines.append(f"  ... and {report.census.others - len(report.census.shown)} more")
    return lines


def repair_lines(done: repair.Repaired) -> list[str]:
    if done.skipped:
        return [f"not repaired {done.dn}: {done.skipped}"]
    if done.failed:
        return [f"repair FAILED {done.dn}: {done.failed}"]
    return [f"repaired {done.dn}: {step}" for step in done.done] or [f"repaired {done.dn}: nothing to do"]


def as_json(report: audit.Report, repairs: list[repair.Repaired], session: Session, code: int) -> dict[str, Any]:
    census = report.census
    return {
        "state": {CLEAN: "clean", DRIFT: "drift", CANNOT_CHECK: "unknown"}[code], "exit_code": code,
        "summary": summary(report, session, code), "plugin": session.plugin, "cannot": report.audit.cannot,
        "findings": [finding_json(f, session) for f in report.findings],
        "counts": dict(sorted(report.by_kind().items())),
        "entries": {"compared": report.audit.checked, **{e.value: census.expected[e] for e in Expect},
                    "other_hosts": census.others},
        "other_hosts": [{"dn": dn, "why": why} for dn, why in census.shown],
        "notes": report.audit.notes,
        "repairs": [{"dn": r.dn, "done": r.done, "skipped": r.skipped or None, "failed": r.failed or None}
                    for r in repairs],
    }


def finding_json(finding: Finding, session: Session) -> dict[str, Any]:
    found = {"kind": finding.kind, "subject": finding.subject, "detail": finding.detail,
             "repairable": finding.repairable, "entryUUID": finding.uuid, "name": finding.name}
    if finding.orphan:
        found["retire"] = retire_command(session, finding.name) if finding.entry is not None else None
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
