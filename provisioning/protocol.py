"""The selfcare state protocol: which entries are requests, and their transitions.

A request is sstProvisioningMode add|modify|delete with sstProvisioningState 0
and sstProvisioningExecutionDate 0 or a day that has come. The core, not the
plugin, owns every transition:

1. claim:  mode -> adding|modifying|deleting, old return value removed. The
   write asserts (RFC 4528) that the entry is still exactly as seen (its
   entryCSN), so two daemons never both take one request and a request that
   changed meanwhile is judged again from its newer version.
2. work:   the plugin's add/modify/delete hook, with the entry the claim read back.
3. done:   mode -> added|modified|deleted, state -> UTC YYYYMMDDThhmmssZ,
   return value -> 0, in one modify; on failure only the return value is
   written (mode stays claimed, state stays 0) and the error is logged.

A request refused before its claim (unknown mode, bad date, delete of an
active entry) gets its return value and is judged again only when someone
writes the entry: the daemon recognises the echo of its own writes by their
entryCSN and never answers itself.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from provisioning.backend.ldap import SYNC_ATTRS, Conflict, Directory, DirectoryError
from provisioning.clock import Clock, utc_stamp
from provisioning.codes import ReturnValue
from provisioning.entry import Entry
from provisioning.service import Request, Service

log = logging.getLogger(__name__)

MODE = "sstProvisioningMode"
STATE = "sstProvisioningState"
DATE = "sstProvisioningExecutionDate"
RETURN = "sstProvisioningReturnValue"
ACTIVE = "sstIsActive"

# verb -> (claimed mode, finished mode)
TRANSITIONS = {"add": ("adding", "added"), "modify": ("modifying", "modified"),
               "delete": ("deleting", "deleted")}
CLAIMED = {claimed: verb for verb, (claimed, _) in TRANSITIONS.items()}
FINISHED = {done for _, done in TRANSITIONS.values()}

# Requests dated for a later day that nobody will touch again: looked for at
# start-up and whenever the local date changes. An entry with a return value
# was already judged (refused) for this request; see Protocol._postpone.
DATED_REQUESTS_FILTER = (f"(&({STATE}=0)(|({MODE}=add)({MODE}=modify)({MODE}=delete))"
                         f"(!({DATE}=0))(!({RETURN}=*)))")

# How many of our own writes we remember to recognise their echo.
OWN_WRITES_KEPT = 100_000


class Verdict(enum.Enum):
    IGNORE = "ignore"       # not a request, or one that is not ours to touch now
    POSTPONE = "postpone"   # dated for a later day
    REFUSE = "refuse"       # a request we must answer with a return value
    WORK = "work"           # an open request: claim it and do it
    RESUME = "resume"       # claimed earlier, no outcome: interrupted, do it again


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    verb: str | None = None
    code: int | None = None
    due: dt.date | None = None


def parse_execution_date(raw: str | None) -> dt.date | None:
    """None for ``0`` (now); the date for ``YYYYMMDD``; ValueError otherwise."""
    text = (raw or "").strip()
    if text == "0":
        return None
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f'sstProvisioningExecutionDate "{raw}" is neither 0 nor a date YYYYMMDD')
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f'sstProvisioningExecutionDate "{raw}" is not a valid date') from None


def decide(entry: Entry, today: dt.date, *, in_refresh: bool) -> Decision:
    """What the selfcare protocol says about ``entry`` today. No side effects."""
    mode, state = entry.get(MODE), entry.get(STATE)
    if mode is None or state is None:
        return Decision(Verdict.IGNORE, "not a provisioning entry")
    if state.strip() != "0":
        return Decision(Verdict.IGNORE, f"done ({MODE}: {mode}, {STATE}: {state})")
    verb = mode.strip().lower()
    if verb in CLAIMED:
        # In a refresh the entry is as the directory holds it now: a claim
        # without outcome means a daemon stopped in the middle of the work.
        if in_refresh and entry.get(RETURN) is None:
            return Decision(Verdict.RESUME, f"claimed ({mode}) without an outcome", CLAIMED[verb])
        return Decision(Verdict.IGNORE, f"in progress or failed earlier ({mode})")
    if verb in FINISHED:
        return Decision(Verdict.IGNORE, f"{MODE} is {mode} but {STATE} is 0")
    if verb not in TRANSITIONS:
        return Decision(Verdict.REFUSE, f'unknown {MODE} "{mode}" (expected add, modify or delete)',
                        code=ReturnValue.UNKNOWN_MODE)
    try:
        due = parse_execution_date(entry.get(DATE))
    except ValueError as err:
        return Decision(Verdict.REFUSE, str(err), verb, ReturnValue.INVALID_EXECUTION_DATE)
    if due is not None and due > today:
        return Decision(Verdict.POSTPONE, f"{verb} requested for {due:%Y%m%d}", verb, due=due)
    if verb == "delete" and (entry.get(ACTIVE) or "").strip().upper() != "FALSE":
        return Decision(Verdict.REFUSE, f"delete requested while {ACTIVE} is "
                        f"{entry.get(ACTIVE) or 'not set'}; set {ACTIVE}: FALSE with the request",
                        verb, ReturnValue.DELETE_WHILE_ACTIVE)
    return Decision(Verdict.WORK, f"{verb} requested", verb)


class Protocol:
    """Applies decisions to the directory and runs the plugin for claimed requests."""

    def __init__(self, directory: Directory, service: Service, clock: Clock | None = None) -> None:
        self.directory = directory
        self.service = service
        self.clock = clock or Clock()
        self._own_writes: OrderedDict[str, str] = OrderedDict()  # entryCSN -> DN

    def handle(self, entry: Entry, *, in_refresh: bool = False) -> None:
        """Judge one entry from the stream (or a search) and act on it."""
        if entry.csn and entry.csn in self._own_writes:
            log.debug("%s: echo of our own write (%s), nothing to do", entry.dn, entry.csn)
            return
        decision = decide(entry, self.clock.today(), in_refresh=in_refresh)
        if decision.verdict is Verdict.IGNORE:
            log.debug("%s: %s", entry.dn, decision.reason)
            return
        if not self.service.owns(entry):
            log.debug("%s: belongs to another host, left untouched", entry.dn)
            return
        action = {Verdict.POSTPONE: self._postpone, Verdict.REFUSE: self._refuse,
                  Verdict.WORK: self._work, Verdict.RESUME: self._work}[decision.verdict]
        action(entry, decision)

    # ------------------------------------------------------------ transitions

    def _postpone(self, entry: Entry, decision: Decision) -> None:
        log.info("%s: %s; left until that day", entry.dn, decision.reason)
        if entry.get(RETURN) is not None:
            # The value belongs to an earlier attempt. Removing it shows the
            # portal an open request, and lets the dated-request search find
            # the entry on its day (it skips entries that carry a value).
            self._write(entry.dn, {RETURN: None}, _unchanged(entry), "remove the old return value")

    def _refuse(self, entry: Entry, decision: Decision) -> None:
        log.error("%s: request refused with return value %d: %s", entry.dn, decision.code, decision.reason)
        if entry.get(RETURN) != str(decision.code):
            self._write(entry.dn, {RETURN: [str(decision.code)]}, _unchanged(entry), "write the refusal")

    def _work(self, entry: Entry, decision: Decision) -> None:
        verb = decision.verb
        claimed, finished = TRANSITIONS[verb]
        if decision.verdict is Verdict.RESUME:
            log.warning("%s: resuming %s: %s", entry.dn, verb, decision.reason)
            fresh = entry
        else:
            log.info("%s: %s requested (%s: %s)", entry.dn, verb, MODE, entry.get(MODE))
            fresh = self._claim(entry, claimed)
            if fresh is None:
                return
        started = time.monotonic()
        code = self.service.run(Request(verb, fresh))
        took = time.monotonic() - started
        if code == ReturnValue.SUCCESS:
            changes = {MODE: [finished], STATE: [utc_stamp(self.clock.utcnow())], RETURN: ["0"]}
            log.info("%s: %s done in %.3f s (%s: %s, %s: %s, %s: 0)", entry.dn, verb, took,
                     MODE, finished, STATE, changes[STATE][0], RETURN)
        else:
            log.error("%s: %s failed with return value %d after %.3f s; %s stays %s",
                      entry.dn, verb, code, took, MODE, claimed)
            changes = {RETURN: [str(code)]}
        self._write(entry.dn, changes, f"({MODE}={claimed})", f"write the outcome of {verb}")

    def _claim(self, entry: Entry, claimed: str) -> Entry | None:
        expect = f"(&{_unchanged(entry)}({STATE}=0))"
        try:
            fresh = self.directory.modify(entry.dn, {MODE: [claimed], RETURN: None},
                                          expect=expect, read_back=SYNC_ATTRS)
        except Conflict as err:
            log.info("%s: not claimed: %s", entry.dn, err)
            return None
        except DirectoryError as err:
            log.error("%s: cannot claim the request: %s", entry.dn, err)
            return None
        log.info("%s: claimed (%s: %s -> %s)", entry.dn, MODE, entry.get(MODE), claimed)
        self._remember(fresh)
        return fresh or entry  # no read-back in dry-run: work from the event

    def _write(self, dn: str, changes: dict, expect: str, what: str) -> None:
        try:
            after = self.directory.modify(dn, changes, expect=expect, read_back=["entryCSN"])
        except Conflict as err:
            log.warning("%s: did not %s: %s", dn, what, err)
            return
        except DirectoryError as err:
            log.error("%s: cannot %s: %s", dn, what, err)
            return
        self._remember(after)

    def _remember(self, entry: Entry | None) -> None:
        if entry is None or not entry.csn:
            return
        self._own_writes[entry.csn] = entry.dn
        while len(self._own_writes) > OWN_WRITES_KEPT:
            self._own_writes.popitem(last=False)


def _unchanged(entry: Entry) -> str:
    """An assertion that the entry is still the version we judged."""
    if entry.csn:
        return f"(entryCSN={escape_filter_chars(entry.csn)})"
    return f"({MODE}={escape_filter_chars(entry.get(MODE) or '')})"
