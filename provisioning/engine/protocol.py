"""The selfcare state protocol: which entries are requests, and their transitions.

A request is sstProvisioningMode add|modify|delete with sstProvisioningState 0
and sstProvisioningExecutionDate 0 or a day that has come; delete also needs
sstIsActive FALSE. The core, not the plugin, owns every transition:

1. claim:  mode -> adding|modifying|deleting, old return value removed, and
   the claimant recorded (provisioning.engine.claims). The write asserts (RFC 4528)
   that the entry is still exactly as judged (its entryCSN), so two daemons
   never both take one request through one provider, and a request that
   changed meanwhile is judged again from its newer version. Through two
   providers both claims succeed: the claim is then confirmed on the other
   providers of SERVER (provisioning.engine.confirm), and the one that lost backs
   off before any work.
2. work:   the plugin's add/modify/delete hook, with the entry the claim read
   back, under the entry's lock on this host (provisioning.engine.entrylock) - or,
   when this host did this very request already, that outcome again.
3. done:   mode -> added|modified|deleted, state -> UTC YYYYMMDDThhmmssZ,
   return value -> 0, in one modify; on failure the return value (mode stays
   claimed, state stays 0) and the error is logged.

The outcome write asserts that the claim is still ours, or that the entry is
still the very version we judged (our claim was lost with a provider that
died before replicating it). An outcome the directory does not take now
(connection lost, server read-only) is kept (``Result.pending``) and written
when it does; "done" is logged only once it is written.

A claimed entry without a return value is resumed only as provisioning.engine.claims
allows, and only after passing every check a new request passes: writing
``deleting`` straight into an active entry gets it refused, not deleted.

A request refused before its claim (unknown mode, bad date, delete of an
active entry) gets its return value and is judged again only when someone
writes the entry.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from provisioning.backend.ldap import (
    Conflict, Directory, DirectoryError, DirectoryUnavailable, WriteRefused,
)
from provisioning.backend.store import PendingWrite
from provisioning.engine.claims import Owner, Owners, claim_values, parse
from provisioning.engine.claims import ATTRIBUTE as CLAIM_ATTRIBUTE
from provisioning.base.clock import Clock, utc_stamp
from provisioning.base.codes import ReturnValue
from provisioning.base.entry import Entry
from provisioning.engine.results import Result, Watch
from provisioning.hooks.service import Interrupted, Request, Service, Unreachable, within_deadline
from provisioning.backend.cookie import csn_sid
from provisioning.engine.confirm import Confirmer, Standing
from provisioning.engine.entrylock import Busy, Done, EntryLocks, Held

log = logging.getLogger(__name__)

MODE = "sstProvisioningMode"
STATE = "sstProvisioningState"
DATE = "sstProvisioningExecutionDate"
RETURN = "sstProvisioningReturnValue"
ACTIVE = "sstIsActive"
SELFCARE_ATTRIBUTES = (MODE, STATE, DATE)

# verb -> (claimed mode, finished mode)
TRANSITIONS = {"add": ("adding", "added"), "modify": ("modifying", "modified"),
               "delete": ("deleting", "deleted")}
CLAIMED = {claimed: verb for verb, (claimed, _) in TRANSITIONS.items()}
FINISHED = {done for _, done in TRANSITIONS.values()}

# Seconds between two looks at a live claim of another daemon of this host (see Selfcare._watch).
RECHECK = 10.0
# Claims said (at INFO) to be waited out, remembered this many: a look again says it at DEBUG.
WATCH_SAID_KEPT = 10_000
_OPEN_MODES = "".join(f"({MODE}={m})" for m in list(TRANSITIONS) + list(CLAIMED))
# Requests dated for a later day that nobody will touch again: looked for at
# start-up and whenever the local date changes. An entry with a return value
# was already judged (refused or failed) for this request.
DATED_REQUESTS_FILTER = f"(&({STATE}=0)(|{_OPEN_MODES})(!({DATE}=0))(!({RETURN}=*)))"
# Claims without an outcome: interrupted work, or work in hand elsewhere.
# Looked for at start-up and after every reconnect, since a claim made
# before the cookie's position is not delivered again.
CLAIMED_FILTER = (f"(&({STATE}=0)(|{''.join(f'({MODE}={m})' for m in CLAIMED)})"
                  f"(!({RETURN}=*)))")


class Verdict(enum.Enum):
    IGNORE = "ignore"       # not a request, or one that is not ours to touch now
    POSTPONE = "postpone"   # dated for a later day
    REFUSE = "refuse"       # a request we must answer with a return value
    WORK = "work"           # an open request: claim it and do it
    RESUME = "resume"       # claimed earlier, no outcome, claimant gone: take it over
    WATCH = "watch"         # claimed by someone who may still be working: look again later


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    verb: str | None = None
    code: int | None = None
    due: dt.date | None = None
    expires: dt.datetime | None = None


def parse_execution_date(raw: str | None) -> dt.date | None:
    """None for ``0`` (now); the date for ``YYYYMMDD``; ValueError otherwise."""
    text = (raw or "").strip()
    if text == "0":
        return None
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        raise ValueError(f'sstProvisioningExecutionDate "{raw}" is neither 0 nor a date YYYYMMDD')
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f'sstProvisioningExecutionDate "{raw}" is not a valid date') from None


def is_selfcare(entry: Entry) -> bool:
    """Whether the entry carries the three attributes of the selfcare protocol."""
    return all(entry.get(name) is not None for name in SELFCARE_ATTRIBUTES)


def decide(entry: Entry, today: dt.date, owners: Owners) -> Decision:
    """What the selfcare protocol says about ``entry`` today. No side effects."""
    mode, state = entry.get(MODE), entry.get(STATE)
    if mode is None or state is None:
        return Decision(Verdict.IGNORE, "not a provisioning entry")
    if state.strip() != "0":
        return Decision(Verdict.IGNORE, f"done ({MODE}: {mode}, {STATE}: {state})")
    verb = mode.strip().lower()
    if verb in CLAIMED:
        return _claimed(entry, CLAIMED[verb], today, owners)
    if verb in FINISHED:
        return Decision(Verdict.IGNORE, f"{MODE} is {mode} but {STATE} is 0")
    if verb not in TRANSITIONS:
        return Decision(Verdict.REFUSE, f'unknown {MODE} "{mode}" (expected add, modify or delete)',
                        code=ReturnValue.UNKNOWN_MODE)
    return check_request(entry, verb, today)


def check_request(entry: Entry, verb: str, today: dt.date) -> Decision:
    """The checks every request passes before any work: date, and delete only when inactive."""
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


def _claimed(entry: Entry, verb: str, today: dt.date, owners: Owners) -> Decision:
    mode = entry.get(MODE)
    if entry.get(RETURN) is not None:
        return Decision(Verdict.IGNORE, f"failed earlier ({mode}, {RETURN}: {entry.get(RETURN)})")
    judgement = owners.judge(entry)
    if judgement.owner is Owner.MINE:
        return Decision(Verdict.IGNORE, f"in progress ({mode}), {judgement.why}")
    if judgement.owner is Owner.LIVE:
        return Decision(Verdict.WATCH, f"{mode}: {judgement.why}", verb, expires=judgement.expires)
    # The claimant is gone. Whoever wrote the claim, the request passes every
    # check of a new one before anything is done for it.
    checked = check_request(entry, verb, today)
    if checked.verdict is not Verdict.WORK:
        return checked
    return Decision(Verdict.RESUME, f"{mode} without an outcome, {judgement.why}", verb)


class Selfcare:
    """Carries out decisions: the writes of the protocol and the plugin's work between them."""

    def __init__(self, directory: Directory, service: Service, owners: Owners,
                 clock: Clock | None = None, confirmer: Confirmer | None = None,
                 locks: EntryLocks | None = None) -> None:
        self.directory = directory
        self.service = service
        self.owners = owners
        self.clock = clock or Clock()
        self.confirmer = confirmer or Confirmer(None, 0)
        self.locks = locks or EntryLocks(None)
        # The server id in the entryCSN of our last claim: the provider we claim through.
        self.claim_sid: str | None = None
        self._said_unreadable = False             # that a provider's contextCSN cannot be read
        self._watch_said: OrderedDict[str, None] = OrderedDict()     # see _said_watch
        self._watch_lock = threading.Lock()       # jobs run in several workers

    def close(self) -> None:
        """Close the connections to the other providers (see provisioning.engine.confirm)."""
        if self.confirmer.peers is not None:
            self.confirmer.peers.close()

    def run(self, entry: Entry, decision: Decision, previous: Entry | None = None) -> Result:
        """Act on one decision (anything but IGNORE); runs in a worker.

        ``previous``: the entry as the store knew it before (Request.previous).
        """
        if decision.verdict in (Verdict.WORK, Verdict.RESUME):
            return self._work(entry, decision, previous)
        action = {Verdict.POSTPONE: self._postpone, Verdict.REFUSE: self._refuse,
                  Verdict.WATCH: self._watch}[decision.verdict]
        return action(entry, decision)

    # ------------------------------------------------------------ transitions

    def _watch(self, entry: Entry, decision: Decision) -> Result:
        """Someone else's live claim: waited out, unless this host's record says its work is done.

        A claim of another daemon of this host is looked at again every
        RECHECK seconds, not only when its lease runs out: its process may
        have died since (then it is resumed at once), or it did the work and
        its outcome never landed (then the outcome is written from the
        host's record; see _answer_recorded).
        """
        claim = parse(entry.values(CLAIM_ATTRIBUTE))
        ours = claim is not None and claim.host == self.owners.host
        looked = self._said_watch(entry)
        if ours and looked:
            # Only at a look again: at first sight the claimant has mostly just written
            # its outcome, which the stream brings a moment later.
            answered = self._answer_recorded(entry)
            if answered is not None:
                return answered
        (log.debug if looked else log.info)("%s: %s", entry.dn, decision.reason)
        again = self.clock.utcnow() + dt.timedelta(seconds=RECHECK) if ours else None
        return Result(watch=Watch(entry.dn, decision.expires, again))

    def _said_watch(self, entry: Entry) -> bool:
        """Whether this claim (this version of the entry) was said to be waited out already; notes it."""
        key = f"{entry.dn.lower()}\n{entry.csn}"
        with self._watch_lock:
            said = key in self._watch_said
            self._watch_said[key] = None
            while len(self._watch_said) > WATCH_SAID_KEPT:
                self._watch_said.popitem(last=False)
        return said

    def _answer_recorded(self, entry: Entry) -> Result | None:
        """The outcome of a claimed request that this host's record shows done, written; None if it does not.

        The record (provisioning.engine.entrylock) is read with the entry's lock
        taken without waiting: a daemon that holds it may still be writing
        the outcome. It must be for this very version (the claim the work was
        done under; ``entry`` was read again for the look), and the write
        asserts that version.
        """
        try:
            with self.locks.hold(entry.key, entry.dn, wait=0) as held:
                done = held.done()
        except (Busy, Interrupted):
            return None
        if done is None or not entry.csn or not done.covers(entry.csn) or done.verb not in TRANSITIONS \
                or entry.get(MODE) != TRANSITIONS[done.verb][0] or not self._still(entry):
            return None
        log.warning("%s: this %s was done on this host (return value %d, %s) and its outcome did not reach the "
                    "directory; writing it", entry.dn, done.verb, done.code, done.by or "by a daemon")
        changes, text = self._outcome(done.verb, done.code, 0.0)
        result = self._write(entry, changes, _unchanged(entry), f"write the outcome of {done.verb}", done=text,
                             failed=done.code != ReturnValue.SUCCESS)
        result.verb, result.code = done.verb, done.code
        return result

    def _still(self, entry: Entry) -> bool:
        """Whether the directory still shows this version of ``entry`` (the stream may lag behind it)."""
        try:
            now = self.directory.read(entry.dn, ["entryCSN"])
        except DirectoryError:
            return False
        return now is not None and now.csn == entry.csn

    def _outcome(self, verb: str, code: int, took: float) -> tuple[dict, str]:
        """The outcome write's changes for return value ``code``, and the line that logs it."""
        claimed, finished = TRANSITIONS[verb]
        would = self.directory.dry_run     # a dry run's log says what would happen
        if code == ReturnValue.SUCCESS:
            changes = {MODE: [finished], STATE: [utc_stamp(self.clock.utcnow())], RETURN: ["0"]}
            return changes, (f"{verb} {'would be done' if would else 'done'} in {took:.3f} s ({MODE}: {finished}, "
                             f"{STATE}: {changes[STATE][0]}, {RETURN}: 0)")
        changes = {MODE: [claimed], RETURN: [str(code)]}
        return changes, (f"{verb} {'would fail' if would else 'failed'} with return value {code} after {took:.3f} s; "
                         f"{MODE} stays {claimed}")

    def _postpone(self, entry: Entry, decision: Decision) -> Result:
        log.info("%s: %s; left until that day", entry.dn, decision.reason)
        if entry.get(RETURN) is None:
            return Result()
        # The value belongs to an earlier attempt. Removing it shows the
        # portal an open request, and lets the dated-request search find
        # the entry on its day (it skips entries that carry a value).
        return self._write(entry, {RETURN: None}, _unchanged(entry), "remove the old return value")

    def _refuse(self, entry: Entry, decision: Decision) -> Result:
        log.error("%s: request %s with return value %d: %s", entry.dn,
                  "would be refused" if self.directory.dry_run else "refused", decision.code, decision.reason)
        if entry.get(RETURN) == str(decision.code):
            return Result()
        refused = self._write(entry, {RETURN: [str(decision.code)]}, _unchanged(entry), "write the refusal")
        refused.verb, refused.code = decision.verb or "request", decision.code
        return refused

    def _work(self, entry: Entry, decision: Decision, previous: Entry | None = None) -> Result:
        """Claim, confirm the claim on the other providers, then work and write the outcome with the
        entry's lock on this host held (provisioning.engine.entrylock): a claim that lost to another daemon's
        waits for no lock and touches nothing. A plugin may refuse the request before the claim
        (provisioning_validate)."""
        verb = decision.verb
        refused = self.service.validate(Request(verb, entry, previous))
        if refused is not None:
            why = f"refused by the plugin: {self.service.meaning(refused)}"
            return self._refuse(entry, Decision(Verdict.REFUSE, why, verb, refused))
        claimed = TRANSITIONS[verb][0]
        try:
            self.service.reachable()     # not claimed while the gateway is away: it stays as it is
        except Unreachable as err:
            log.info("%s: %s waits for the gateway: %s", entry.dn, verb, err)
            return Result(away=str(err))
        if decision.verdict is Verdict.RESUME:
            log.warning("%s: resuming %s: %s", entry.dn, verb, decision.reason)
        key = entry.key
        token = self.owners.new_token(key)
        claim = Result()
        try:
            fresh, claim = self._claim(entry, claimed, token)
            if fresh is None:
                return claim
            claimed_at = time.monotonic()          # the lease's deadline counts from here
            lost, replaced = self._confirm(fresh, token, claim)
            if lost is not None:
                return lost
            with self.locks.hold(key, entry.dn) as held:
                return self._finish(entry, fresh, verb, token, claim, held, claimed_at, replaced,
                                    previous)
        except Interrupted:
            log.warning("%s: %s interrupted by the stop; it stays %s and is resumed at the next start",
                        entry.dn, verb, claimed)
            return Result(interrupted=True, own_csns=claim.own_csns)
        except Unreachable as err:
            log.warning("%s: %s stopped, %s; it stays %s without an outcome and is resumed once the gateway "
                        "answers", entry.dn, verb, err, claimed)
            return Result(away=str(err), own_csns=claim.own_csns)
        finally:
            self.owners.release(key, token)

    def _finish(self, entry: Entry, fresh: Entry, verb: str, token: str, claim: Result, held: Held,
                claimed_at: float, replaced: str | None = None, previous: Entry | None = None) -> Result:
        """The work (or the record that it was done, see _do), then the outcome write.

        ``replaced``: the entryCSN of an older claim of another daemon that came
        in after ours on our provider (see provisioning.engine.confirm): lost, but in
        the outcome's way; the outcome may replace it. ``previous``: Request.previous.
        """
        claimed = TRANSITIONS[verb][0]
        code, took = self._do(Request(verb, fresh, previous), entry, token, held, claimed_at)
        changes, done = self._outcome(verb, code, took)
        # Still our claim, or (the claim was lost with a provider that died
        # before replicating it) still the very version we judged, or the
        # older claim of another daemon that came in after ours.
        lost_rival = f"(entryCSN={escape_filter_chars(replaced)})" if replaced else ""
        expect = (f"(|(&({MODE}={claimed})({CLAIM_ATTRIBUTE}={escape_filter_chars(token)}))"
                  f"{_unchanged(entry)}{lost_rival})")
        outcome = self._write(fresh, changes, expect, f"write the outcome of {verb}", done=done,
                              failed=code != ReturnValue.SUCCESS)
        if outcome.conflict:
            # The entry changed after our claim. Two providers settling two claims made at
            # once may yet bring it back to our claim, with our claim's entryCSN: that is no
            # echo to pass over then, but a request with our claim that nobody works on.
            outcome.disowned = claim.own_csns
        else:
            outcome.own_csns = claim.own_csns + outcome.own_csns
        outcome.rival = claim.rival
        outcome.verb, outcome.code = verb, code
        outcome.answered = {"judged": entry.csn, "claim": fresh.csn, "claimed": claimed, "token": token,
                            "changes": changes, "done": done, "failed": code != ReturnValue.SUCCESS}
        if outcome.pending is not None:
            outcome.remember = fresh
        return outcome

    def answer_again(self, entry: Entry, answered: dict) -> Result:
        """Write again the outcome of a request this daemon worked, which the directory lost.

        A provider that died before replicating our claim's outcome leaves
        the request as it was before (or claimed by us): the work is done,
        only its outcome is written, asserted as the first time.
        """
        log.warning("%s: the directory lost the outcome this daemon wrote for this request (a provider "
                    "that did not replicate it?); writing it again without redoing the work", entry.dn)
        expect = (f"(|(&({MODE}={answered['claimed']})({CLAIM_ATTRIBUTE}={escape_filter_chars(answered['token'])}))"
                  f"(entryCSN={escape_filter_chars(answered['judged'] or '')}))")
        result = self._write(entry, answered["changes"], expect, "write the outcome again",
                             done=answered["done"], failed=answered["failed"])
        result.answered = answered
        return result

    def _confirm(self, fresh: Entry, token: str, claim: Result) -> tuple[Result | None, str | None]:
        """Whether our claim holds on the other providers (see provisioning.engine.confirm).

        Returns what backing off reports when it lost (else None), and the
        entryCSN of an older rival's version that the outcome may replace.
        ``claim.rival`` learns of another daemon's claim seen meanwhile.
        """
        if not fresh.csn or not self.confirmer.enabled:
            return None, None
        found = self.confirmer.confirm(fresh.dn, token, fresh.csn, self.directory.uri)
        if found.rival is not None:
            rival, csn = found.rival
            claim.rival = (f"{fresh.dn}: also claimed by {rival.host} process {rival.pid} (entryCSN {csn}); this "
                           f"daemon claimed it through {self.directory.uri} ({fresh.csn})")
        if found.standing is Standing.LOST:
            self.owners.lose(fresh.key, token)
            winner = parse(found.winner.values(CLAIM_ATTRIBUTE))
            by = f"the claim of {winner.host} process {winner.pid}" if winner is not None else "a newer write"
            log.warning("%s: claim lost to %s (entryCSN %s, newer than ours, %s): backing off, nothing is done on "
                        "this host", fresh.dn, by, found.winner.csn, fresh.csn)
            return Result(own_csns=claim.own_csns, rival=claim.rival), None
        if found.standing is Standing.UNSURE and found.unreadable:
            # Every request would say so: once, then at debug level.
            (log.debug if self._said_unreadable else log.warning)(
                "%s: the claim cannot be confirmed, %s: working on it all the same; let the daemon's bind read "
                "contextCSN on the suffix entry of every provider (docs/deployment.md, 4. The directory)",
                fresh.dn, found.behind[0])
            self._said_unreadable = True
        elif found.standing is Standing.UNSURE:
            log.warning("%s: the claim could not be confirmed within %g s, waiting for %s: working on it all the "
                        "same; this host's entry lock keeps two jobs apart", fresh.dn, self.confirmer.wait,
                        ", ".join(found.behind))
        else:
            log.debug("%s: claim confirmed in %.1f ms%s%s", fresh.dn, found.took * 1000,
                      f"; not answering: {', '.join(found.away)}" if found.away else "",
                      f"; an older claim ({found.replaced}) came in after it" if found.replaced else "")
        return None, found.replaced

    def _do(self, request: Request, judged: Entry, token: str, held: Held, claimed_at: float) -> tuple[int, float]:
        """The plugin's work and its return value, unless this host did this very request already.

        Already: the other daemon of a pair split across two providers, or a
        daemon killed before it wrote the outcome, did it under the entry's
        lock on this host (see provisioning.engine.entrylock). Then its return
        value is written as this request's outcome and nothing is done again.
        """
        done = held.done()
        if done is not None and done.covers(judged.csn):
            log.warning("%s: this %s was done on this host already (return value %d, %s): its outcome is written, "
                        "the work is not done again", request.dn, request.verb, done.code, done.by or "by a daemon")
            return done.code, 0.0
        code, took = self._run_plugin(request, claimed_at)
        held.record(Done(judged.csn, request.entry.csn, request.verb, code, token))
        return code, took

    def _run_plugin(self, request: Request, claimed_at: float) -> tuple[int, float]:
        """The plugin's hook, its commands bounded by the lease counted from the claim (``claimed_at``,
        a time.monotonic() value): the confirmation and the wait for the entry's lock count too."""
        started = time.monotonic()
        with within_deadline(self.owners.work_budget() - (started - claimed_at)):
            code = self.service.run(request)
        return code, time.monotonic() - started

    def _claim(self, entry: Entry, claimed: str, token: str) -> tuple[Entry | None, Result]:
        """Claim the request: the fresh entry (None if not claimed) and what to report.

        The assertion makes the entry exactly the version judged when the
        claim is taken, so the fresh entry is that version with the claim's
        changes: only the new entryCSN is read back (reading back the whole
        entry cost more than the rest of the claim).
        """
        expect = f"(&{_unchanged(entry)}({STATE}=0))"
        old = claim_values(entry)
        try:
            after = self.directory.modify(entry.dn, {MODE: [claimed], RETURN: None},
                                          delete={CLAIM_ATTRIBUTE: old} if old else None,
                                          add={CLAIM_ATTRIBUTE: [token]}, expect=expect, read_back=["entryCSN"])
        except Conflict as err:
            log.info("%s: not claimed: %s", entry.dn, err)
            return None, Result()
        except (DirectoryUnavailable, WriteRefused) as err:
            log.warning("%s: cannot claim the request now (%s); it is taken up again once the "
                        "directory takes writes", entry.dn, err)
            return None, Result(retry=str(err))
        except DirectoryError as err:
            log.error("%s: cannot claim the request: %s", entry.dn, err)
            return None, Result()
        claims = [v for v in entry.values(CLAIM_ATTRIBUTE) if v not in old] + [token]
        csn = after.csn if after is not None else None
        if csn:
            self.claim_sid = csn_sid(csn)
        fresh = entry.with_changes({MODE: [claimed], RETURN: None, CLAIM_ATTRIBUTE: claims}, csn)
        log.info("%s: %s request %s (%s: %s -> %s)", entry.dn, CLAIMED[claimed],
                 "would be claimed" if self.directory.dry_run else "claimed", MODE, entry.get(MODE), claimed)
        return fresh, Result(own_csns=[csn] if csn else [])

    def _write(self, entry: Entry, changes: dict, expect: str, what: str, *,
               done: str | None = None, failed: bool = False) -> Result:
        """One protocol write; kept as pending when the directory does not take it now.

        Result.remember is the entry as the write leaves it, so the store
        knows the outcome even before its echo arrives.
        """
        try:
            after = self.directory.modify(entry.dn, changes, expect=expect, read_back=["entryCSN"])
        except Conflict as err:
            if err.gone:
                # Removed while we worked: what we did is what the store must
                # know when the removal arrives (a delete done, or still open).
                log.warning("%s: did not %s: %s%s", entry.dn, what, err, f" [{done}]" if done else "")
                return Result(remember=entry.with_changes(changes))
            log.warning("%s: did not %s: %s", entry.dn, what, err)
            return Result(conflict=True)
        except (DirectoryUnavailable, WriteRefused) as err:
            pending = PendingWrite(entry.dn, changes, expect, what, uuid=entry.uuid, done=done or "",
                                   failed=failed)
            log.warning("%s: cannot %s now (%s); kept and written once the directory takes writes",
                        entry.dn, what, err)
            return Result(pending=pending)
        except DirectoryError as err:
            log.error("%s: cannot %s: %s", entry.dn, what, err)
            return Result()
        if done:
            (log.error if failed else log.info)("%s: %s", entry.dn, done)
        csn = after.csn if after is not None else None
        return Result(remember=entry.with_changes(changes, csn), own_csns=[csn] if csn else [])


def write_pending(directory: Directory, write: PendingWrite) -> list[str]:
    """Write a kept write; return the entryCSNs it produced ([] if it no longer applies).

    Raises DirectoryUnavailable or WriteRefused when the directory still does
    not take it.
    """
    try:
        after = directory.modify(write.dn, write.changes, add=write.add or None, expect=write.expect,
                                 read_back=["entryCSN"])
    except Conflict as err:
        if _already_written(directory, write):
            log.info("%s: %s: it was written before the connection broke (its answer was lost)%s",
                     write.dn, write.what, f"; {write.done}" if write.done else "")
        else:
            log.warning("%s: kept write dropped, the entry changed meanwhile (%s): %s; its newer "
                        "version is judged", write.dn, write.what, err)
        return []
    except DirectoryError as err:
        log.error("%s: kept write dropped (%s): %s", write.dn, write.what, err)
        return []
    waited = time.time() - write.since
    if write.done:
        (log.error if write.failed else log.info)("%s: %s (written after %.1f s of waiting for the "
                                                  "directory)", write.dn, write.done, waited)
    else:
        log.info("%s: %s: written after %.1f s of waiting for the directory", write.dn, write.what, waited)
    return [after.csn] if after is not None and after.csn else []


def _already_written(directory: Directory, write: PendingWrite) -> bool:
    """Whether the entry already holds what ``write`` was to write."""
    entry = directory.read(write.dn)
    if entry is None:
        return False
    return all(entry.values(name) == (values or []) for name, values in write.changes.items())


def _unchanged(entry: Entry) -> str:
    """An assertion that the entry is still the version we judged."""
    if entry.csn:
        return f"(entryCSN={escape_filter_chars(entry.csn)})"
    return f"({MODE}={escape_filter_chars(entry.get(MODE) or '')})"
