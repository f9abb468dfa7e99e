"""provisioning-daemon retry: write failed requests anew, after the cause was fixed.

A failed request keeps its claimed mode (adding, modifying, deleting), state
0 and its return value. Retrying it is what an operator used to do with an
LDIF: mode back to add/modify/delete, state 0, return value removed. The
write asserts (RFC 4528) that the entry is still the version this command
read (its entryCSN), so it never overwrites a change made meanwhile; the
daemon then takes the request as a new one, with every check a new one gets.

Only failed requests are written anew. Anything else is left as it is, with
the reason: a request in progress belongs to the daemon working on it, a
pending one is already open, a refused one (100 and up) is fixed by fixing
the entry, which itself makes it a new request.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from provisioning.runtime import startup
from provisioning.backend.dn import below
from provisioning.backend.ldap import (
    BindRefused, Conflict, Directory, DirectoryError, DirectoryUnavailable, LdapSettings, WriteRefused,
)
from provisioning.base.codes import ExitCode
from provisioning.base.entry import Entry
from provisioning.base.log import escape
from provisioning.engine.protocol import CLAIMED, MODE, RETURN, STATE
from provisioning.engine.requests import FAILED_FILTER, Stage, classify
from provisioning.operator.returnvalues import describe, meanings


@dataclass(frozen=True)
class Outcome:
    dn: str
    retried: bool
    message: str

    def __str__(self) -> str:
        return escape(f"{self.dn}: {'retried' if self.retried else 'NOT retried'}: {self.message}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="provisioning-daemon retry",
        description="Write failed requests anew (mode back to add/modify/delete, state 0, return value "
                    "removed) so the daemon does them again. Fix the cause first.")
    startup.add_config_options(parser)
    parser.add_argument("-r", "--dry-run", action="store_true", help="show the writes instead of making them")
    parser.add_argument("--failed", action="store_true",
                        help="every failed request below SERVICE_SUBTREE (selfcare requests; in MODUS LDAP "
                             "the daemon retries failed hooks itself at its next start)")
    parser.add_argument("dns", nargs="*", metavar="DN", help="entries whose failed request to retry")
    args = parser.parse_args(argv)
    startup.config_path(parser, args)
    if not args.dns and not args.failed:
        parser.error("name the entries (DN...) or give --failed")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    loaded = startup.load_for("provisioning-daemon retry", args)
    if loaded is None:
        return ExitCode.CONFIG_ERROR
    config = loaded.config
    base = config.database.subtree
    directory = Directory(LdapSettings.from_config(config), dry_run=args.dry_run)
    try:
        directory.open()
        known = meanings(loaded.manager)
        dns = list(args.dns) + (failed_dns(directory, base) if args.failed else [])
        if args.failed and not dns:
            print(f"no failed request below {escape(base)}: nothing to retry")
        outcomes = [retry(directory, dn, base, known) for dn in _unique(dns)]
    except BindRefused as err:
        print(f"provisioning-daemon retry: {err}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except DirectoryUnavailable as err:
        print(f"provisioning-daemon retry: {err}", file=sys.stderr)
        return ExitCode.LDAP_UNREACHABLE
    finally:
        directory.close()
    for outcome in outcomes:
        print(outcome)
    refused = [o for o in outcomes if not o.retried]
    if refused:
        print(f"{len(refused)} of {len(outcomes)} request(s) not retried", file=sys.stderr)
        return ExitCode.NOT_RETRIED
    return ExitCode.OK


def failed_dns(directory: Directory, base: str) -> list[str]:
    return [entry.dn for entry in directory.search(base, FAILED_FILTER, ["1.1"]) if entry.dn.lower() != base.lower()]


def _unique(dns: list[str]) -> list[str]:
    seen, out = set(), []
    for dn in dns:
        if dn.lower() not in seen:
            seen.add(dn.lower())
            out.append(dn)
    return out


def retry(directory: Directory, dn: str, base: str, known: dict[int, str]) -> Outcome:
    """Write the failed request on ``dn`` anew, or say why not. DirectoryUnavailable is raised."""
    if not below(dn, base, strictly=True):
        return Outcome(dn, False, f"not below SERVICE_SUBTREE {base}: not this daemon's entry")
    try:
        entry = directory.read(dn)
    except DirectoryError as err:
        return Outcome(dn, False, str(err))
    if entry is None:
        return Outcome(dn, False, "no such entry")
    why_not = refusal(entry, known)
    if why_not:
        return Outcome(dn, False, why_not)
    return write_anew(directory, entry, known)


def refusal(entry: Entry, known: dict[int, str]) -> str:
    """Why the request on ``entry`` is not one to retry; "" when it is (claimed and failed)."""
    request = classify(entry, dt.date.today()) if (entry.get(STATE) or "").strip() == "0" else None
    mode = entry.get(MODE)
    if mode is None:
        return "not a provisioning request (no sstProvisioningMode)"
    if request is None:
        return f"done ({MODE}: {mode}, {STATE}: {entry.get(STATE)}): nothing failed; write a new request"
    if request.stage is Stage.FAILED:
        return ""
    if request.stage is Stage.IN_PROGRESS:
        return f"in progress ({mode}, claimed by {request.owner}): it has no outcome yet"
    if request.stage is Stage.REFUSED:
        return (f"refused with return value {request.return_value} ({describe(request.return_value, known)}): "
                f"fix the entry; that change makes it a new request")
    if request.stage in (Stage.PENDING, Stage.DATED):
        return f"already requested ({mode}): the daemon has not done it yet"
    return f"{MODE} {mode} with {STATE} 0 is no failed request"


def write_anew(directory: Directory, entry: Entry, known: dict[int, str]) -> Outcome:
    """Mode back to the verb, state 0, return value removed, asserted on the version read."""
    claimed = entry.get(MODE).strip()
    verb = CLAIMED[claimed.lower()]
    value = entry.get(RETURN)
    try:
        directory.modify(entry.dn, {MODE: [verb], STATE: ["0"], RETURN: None}, expect=_unchanged(entry))
    except Conflict as err:
        return Outcome(entry.dn, False, f"changed since it was read ({err}); run retry again to look at it anew")
    except (WriteRefused, DirectoryError) as err:
        return Outcome(entry.dn, False, str(err))
    done = "would be written anew (dry run)" if directory.dry_run else "written anew"
    return Outcome(entry.dn, True, f"{done}: {MODE} {claimed} -> {verb}, return value {value} "
                                   f"({describe(value, known)}) removed")


def _unchanged(entry: Entry) -> str:
    if entry.csn:
        return f"(entryCSN={escape_filter_chars(entry.csn)})"
    return (f"(&({MODE}={escape_filter_chars(entry.get(MODE) or '')})"
            f"({RETURN}={escape_filter_chars(entry.get(RETURN) or '')}))")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
