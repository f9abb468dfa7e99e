"""From stream events to jobs, and from job results to the daemon's state.

Runs in the main loop only (the store has one writer). For each entry it
decides which protocol applies ([Service] MODUS: selfcare, LDAP, or combined
per entry), whether anything is to be done, and builds the job that does it;
when the job ends it records the outcome in the store.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import OrderedDict
from typing import Callable

from provisioning.backend.cookie import by_sid, csn_sid
from provisioning.backend.ldap import EntryChanged
from provisioning.backend.store import Known, PendingWrite, Store
from provisioning.engine.claims import Owners
from provisioning.base.clock import Clock
from provisioning.base.entry import Entry
from provisioning.engine.entrylock import EntryLocks
from provisioning.engine.ldapmode import LdapMode, ldap_verb
from provisioning.alerts.mail import Alerts, RequestLog
from provisioning.engine.protocol import Selfcare, Verdict, decide, is_selfcare
from provisioning.engine.removals import Removals
from provisioning.engine.results import Result, Watch
from provisioning.hooks.service import Service
from provisioning.engine.workers import Job

log = logging.getLogger(__name__)

# How many of our own writes we remember to recognise their echo (they come
# back within milliseconds; the bound keeps memory flat however long it runs).
OWN_WRITES_KEPT = 10_000
# Entries of other hosts already said to be left untouched (entryUUID -> their host), remembered this
# many: beyond, the oldest may be said once more.
UNTOUCHED_KEPT = 10_000
# Another daemon claiming through another provider is logged as a warning at most this often.
RIVAL_REPORT_INTERVAL = 600.0
# Where an entry comes from (see Router.entry_job).
CHANGE, REFRESH, SEARCH = "change", "refresh", "search"


class Router:
    """Plans jobs for entries and removals; applies their results."""

    def __init__(self, *, modus: str, base: str, store: Store, service: Service, owners: Owners,
                 selfcare: Selfcare, ldap_mode: LdapMode, removals: Removals,
                 clock: Clock | None = None, alerts: Alerts | None = None,
                 request_log: RequestLog | None = None, locks: EntryLocks | None = None) -> None:
        self.modus = modus
        self.base = base.lower()
        self.store = store
        self.service = service
        self.owners = owners
        self.selfcare = selfcare
        self.ldap_mode = ldap_mode
        self.removals = removals
        self.clock = clock or Clock()
        self.alerts = alerts
        self.request_log = request_log
        self.locks = locks or EntryLocks(None)      # without: no lock on the host
        self.adopt: str | None = None      # a cookie whose entries count as handled (see cookie.Start)
        self.watching: dict[str, Watch] = {}
        self._own_writes: OrderedDict[str, None] = OrderedDict()
        self._own_newest: dict[str, str] = {}         # server id -> the newest of _own_writes, kept in the store
        self._untouched: OrderedDict[str, str] = OrderedDict()   # see UNTOUCHED_KEPT
        self._rival_said_at = -math.inf
        self.note_own_writes(store.own_writes)         # the last run's, for its first cookie check

    # ---------------------------------------------------------------- planning

    def entry_job(self, entry: Entry, *, origin: str) -> Job | None:
        """The job for an entry the stream (or a search) delivered; None if nothing is to be done.

        ``origin``: CHANGE, a change as it happened (the echoes of our own
        writes never get here: see stream_job); REFRESH, the entry as the directory holds it after a
        (re)connect - an older version of what we wrote is then a directory
        that lost it (a provider that died before replicating); SEARCH, as a
        search found it a moment ago - work of ours that ended since makes
        it stale, and it is dropped.
        """
        self.owners.saw(entry)               # the directory's time, by which claims are aged
        if entry.dn.lower() == self.base:
            return None                      # SERVICE_SUBTREE itself is no service entry
        if origin in (SEARCH, CHANGE) and self._older_than_known(entry):
            # Found before our last write to it, or an echo of our claim that came
            # after OWN_WRITES_KEPT newer writes (the stream may lag a burst behind:
            # see daemon.MAX_WAITING). A provider never moves an entry's CSN back.
            log.debug("%s: older than this daemon's last write to it (%s); nothing to do", entry.dn, entry.csn)
            return None
        if self.uses_selfcare(entry):
            return self._selfcare_job(entry, origin == REFRESH)
        return self._ldap_job(entry)

    def stream_job(self, event: EntryChanged, origin: str) -> Job | None:
        """entry_job for an entry the stream sent; the echo of our own write is known before it is decoded."""
        # Decoded first only if the raw values did not show its entryCSN (see EntryChanged).
        csn = event.csn if event.csn is not None else event.entry.csn
        if origin == CHANGE and csn and csn in self._own_writes:
            # The store already has what the write left (the job's result);
            # an echo of an earlier write of ours (the claim) must not undo that.
            log.debug("%s: echo of our own write (%s), nothing to do", event.dn, csn)
            return None
        return self.entry_job(event.entry, origin=origin)

    def uses_selfcare(self, entry: Entry) -> bool:
        if self.modus == "selfcare":
            return True
        return self.modus == "combined" and is_selfcare(entry)

    def _selfcare_job(self, entry: Entry, refreshed: bool) -> Job | None:
        answered = self._answered(entry) if refreshed else None
        if answered is not None:
            return self._job(entry.key, entry.dn, lambda: self.selfcare.answer_again(entry, answered), entry)
        decision = decide(entry, self.clock.today(), self.owners)
        if decision.verdict is Verdict.WATCH:
            self._watched_claim(entry, decision.reason)
        if decision.verdict is Verdict.IGNORE:
            log.debug("%s: %s", entry.dn, decision.reason)
            self.watching.pop(entry.key, None)
            self.store.remember(entry)
            return None
        if self._another_hosts(entry):
            return None
        previous = self._previous(entry)
        return self._job(entry.key, entry.dn, lambda: self.selfcare.run(entry, decision, previous), entry)

    def _ldap_job(self, entry: Entry) -> Job | None:
        verb = ldap_verb(entry, self.store.lookup(entry.uuid), self.adopt)
        if verb is None:
            log.debug("%s: unchanged since it was handled", entry.dn)
            self.store.remember(entry, failed=self._failed(entry))
            return None
        if self._another_hosts(entry):
            return None
        previous = self._previous(entry)
        key = entry.key
        return self._job(key, entry.dn, self._locked(key, entry.dn, lambda: self.ldap_mode.run(entry, verb, previous)),
                         entry)

    def _another_hosts(self, entry: Entry) -> bool:
        """Whether ``entry`` is another host's (then it is remembered, and said once at INFO with both values:
        a host that differs from ENVIRONMENT by a letter must not look like silence)."""
        why = self.service.not_ours(entry)
        if why is None:
            return False
        self.store.remember(entry)
        key, host = entry.key, entry.get("host") or ""
        if self._untouched.get(key) == host:
            log.debug("%s: another host's, left untouched: %s", entry.dn, why)
            return True
        self._untouched[key] = host
        self._untouched.move_to_end(key)
        while len(self._untouched) > UNTOUCHED_KEPT:
            self._untouched.popitem(last=False)
        log.info("%s: left untouched: another host's entry (%s); provisioning-daemon explain says more", entry.dn, why)
        return True

    def _watched_claim(self, entry: Entry, why: str) -> None:
        """Another daemon's live claim: made through another provider than ours (its entryCSN's server id)?"""
        theirs, ours = csn_sid(entry.csn or ""), self.selfcare.claim_sid
        if theirs and ours and theirs != ours:
            self._rival(f"{entry.dn}: {why}, through the provider with server id {theirs} (this daemon claims "
                        f"through server id {ours})")

    def _rival(self, text: str) -> None:
        """Say that another daemon claims through another provider (in the log at most every
        RIVAL_REPORT_INTERVAL seconds), and keep it in the store for ``status``."""
        self.store.note_rival(text, time.time())
        if time.monotonic() - self._rival_said_at < RIVAL_REPORT_INTERVAL:
            log.debug("%s", text)
            return
        self._rival_said_at = time.monotonic()
        log.warning("%s. Another daemon claims requests through another provider than this one: the daemons of "
                    "an HA pair need the same SERVER list, so that their claims meet on one provider. Meanwhile "
                    "each claim is confirmed on the other providers before its work starts (CLAIM_CONFIRM_WAIT)",
                    text)

    def brakes(self, uuid: str) -> bool:
        """Whether the removal of ``uuid`` would call the delete hook on an entry of this host outside
        the selfcare protocol: those go through the deletion brake (provisioning.engine.brake)."""
        known = self.store.lookup(uuid)
        if known is None or self.uses_selfcare(known.entry()):
            return False
        return self.service.owns(known.entry())

    def removal_job(self, uuid: str) -> Job | None:
        """The job for an entry the server reports gone by its entryUUID."""
        known = self.store.lookup(uuid)
        if known is None:
            log.info("entryUUID %s left the subtree; this daemon never saw that entry: nothing to do", uuid)
            return None
        self.watching.pop(uuid, None)
        if not self.service.owns(known.entry()):
            log.debug("%s: removed, but it belonged to another host", known.dn)
            self.store.forget(uuid)
            return None
        selfcare = self.uses_selfcare(known.entry())
        today = self.clock.today()
        work = self._locked(uuid, known.dn, lambda: self.removals.run(known, selfcare=selfcare, today=today))
        return self._job(uuid, known.dn, work)

    def retry_job(self, known: Known, current: Entry | None) -> Job | None:
        """The job that tries a failed hook again at start (``current``: the entry now, if it exists)."""
        if current is None:
            return self.removal_job(known.uuid)
        verb = known.failed if known.failed in ("add", "modify") else "modify"
        log.info("%s: trying %s again, which failed before the restart", current.dn, verb)
        if self.uses_selfcare(current):
            return self.entry_job(current, origin=SEARCH)
        key, previous = current.key, known.entry()
        work = self._locked(key, current.dn, lambda: self.ldap_mode.run(current, verb, previous))
        return self._job(key, current.dn, work, current)

    def _job(self, key: str, dn: str, work: Callable[[], Result], entry: Entry | None = None) -> Job:
        capture = self.request_log.capture if self.request_log is not None and self.alerts is not None else None
        return Job(key, dn, work, entry, capture=capture)

    def _previous(self, entry: Entry) -> Entry | None:
        """The entry as the store knew it before this version (for the hooks: Request.previous)."""
        known = self.store.lookup(entry.uuid)
        return known.entry() if known is not None else None

    def _locked(self, key: str, dn: str, work: Callable[[], Result]) -> Callable[[], Result]:
        """``work`` with the entry's lock on this host held (provisioning.engine.entrylock). Selfcare requests
        take it themselves, after their claim holds (see Selfcare._work)."""
        return lambda: self.locks.run(key, dn, lambda held: work())

    def _older_than_known(self, entry: Entry) -> bool:
        known = self.store.lookup(entry.uuid)
        return bool(known is not None and known.csn and entry.csn and entry.csn < known.csn)

    def _answered(self, entry: Entry) -> dict | None:
        """Our outcome for this very version of the request, if the directory lost it."""
        known = self.store.lookup(entry.uuid)
        answered = known.answered if known is not None else None
        if not answered or not entry.csn or (entry.get("sstProvisioningState") or "").strip() != "0":
            return None
        return answered if entry.csn in (answered.get("judged"), answered.get("claim")) else None

    def _failed(self, entry: Entry) -> str | None:
        known = self.store.lookup(entry.uuid)
        return known.failed if known is not None and known.csn == entry.csn else None

    # ---------------------------------------------------------------- results

    def note_own_writes(self, csns: list[str]) -> None:
        """Remember the entryCSNs our writes produced, to recognise their echo and to check providers."""
        newer = False
        for csn in csns:
            self.owners.directory.saw_entry(csn)
            self._own_writes[csn] = None
            if csn > self._own_newest.get(csn_sid(csn), ""):
                self._own_newest[csn_sid(csn)] = csn
                newer = True
        while len(self._own_writes) > OWN_WRITES_KEPT:
            self._own_writes.popitem(last=False)
        if newer:
            self.store.keep_own_writes(sorted(self._own_newest.values()))

    def own_csns(self) -> list[str]:
        """The entryCSNs of our latest writes (claims, outcomes), whether their echo came or not."""
        return list(self._own_writes)

    def forget_own_writes(self, csns: list[str]) -> None:
        """Stop counting these writes as ours (a refresh judged them lost)."""
        if not csns:
            return
        for csn in csns:
            self._own_writes.pop(csn, None)
        self._own_newest = by_sid(list(self._own_writes))
        self.store.keep_own_writes(sorted(self._own_newest.values()))

    def written(self, write: PendingWrite, csn: str | None) -> None:
        """A kept write reached the directory: the store knows the entry as it left it."""
        known = self.store.lookup(write.uuid)
        if known is not None and csn:
            self.store.remember(known.entry().with_changes(write.changes, csn), answered=known.answered)

    def complete(self, job: Job, result: Result) -> None:
        """Record what a job did; nothing when it did not end (retry, interrupted, away)."""
        self.note_own_writes(result.own_csns)
        self.forget_own_writes(result.disowned)
        if result.rival is not None:
            self._rival(result.rival)
        if result.pending is not None:
            self.store.add_pending(result.pending)
        self._alert(job, result)
        if result.retry or result.interrupted or result.away:
            return
        if result.forget:
            self.store.forget(result.forget)
        else:
            seen = result.remember or job.entry
            if seen is not None:
                self.store.remember(seen, failed=result.failed, answered=result.answered)
        if result.watch is not None:
            self.watching[job.key] = result.watch
        else:
            self.watching.pop(job.key, None)

    def _alert(self, job: Job, result: Result) -> None:
        """Mail what an operator must hear of ([Mail]); never waits for the mail."""
        if self.alerts is None:
            return
        if result.warning is not None:
            self.alerts.warning(result.warning[0], result.warning[1], dn=job.dn)
        if result.code is None:
            return
        if result.code == 0:
            self.alerts.done(job.dn, result.verb or "request", result.lines)
        else:
            self.alerts.failed(job.dn, result.verb or "request", result.code,
                               self.service.meaning(result.code), result.lines)

    def expired_watches(self, now: dt.datetime) -> list[tuple[str, Watch]]:
        """Claims to judge again (their lease ran out, or a look is due); no longer watched once returned."""
        due = [(key, w) for key, w in self.watching.items() if w.due <= now]
        for key, _ in due:
            del self.watching[key]
        return due
