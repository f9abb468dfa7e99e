"""The main loop: read the sync stream, hand entries to workers, keep the cookie.

``step()`` does one round and is what tests drive; ``run()`` repeats it until
``request_stop()`` (called from a signal handler, which does nothing else).

Order and acknowledgement. Every event gets a sequence number. Jobs of one
entry run one after another (a lane per entry); jobs of different entries may
run at the same time ([Service] WORKERS). A cookie the server sends covers
the events before it; it is acknowledged only when every one of them has been
handled and its outcome written (the low-water mark), so a crash at any
moment loses nothing and redoes nothing that finished.

When the directory goes away, or refuses writes, the loop stops taking new
work, lets the work in hand finish (outcomes it cannot write are kept in the
store), reconnects, writes the kept outcomes first, and only then reads the
stream again - from the acknowledged cookie, so whatever was not finished
comes again. A stop lets the work in hand finish the same way.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from provisioning.backend.cookie import Position, ahead_of, missing_writes
from provisioning.backend.dn import below
from provisioning.backend.ldap import (
    CookieReached, Directory, DirectoryError, DirectoryUnavailable, EntriesDeleted, EntryChanged, Event,
    PresentEnd, RefreshDone, RefreshRequired, SubtreeMissing, SyncStream, WriteRefused,
)
from provisioning.backend.store import APPROVE, EVERYTHING, Held, Store
from provisioning.engine.brake import PARKED, Brake, Parked
from provisioning.base.clock import Clock
from provisioning.base.entry import Entry
from provisioning.config.settings import Retry
from provisioning.engine.failback import Failback
from provisioning.engine.lowwater import OpenEvents
from provisioning.engine.mirror import Mirror, identity_differences
from provisioning.observe.monitor import Monitor
from provisioning.engine.protocol import CLAIMED_FILTER, DATED_REQUESTS_FILTER, write_pending
from provisioning.engine.router import CHANGE, REFRESH, SEARCH, Router
from provisioning.transport import Reach, Transport, Unreachable
from provisioning.engine.workers import Inline, Job, Threads

log = logging.getLogger(__name__)

# While LDAP is out of reach, say so at most this often.
WAITING_REPORT_INTERVAL = 60.0

# Events in hand (queued for the workers or worked) beyond which the stream is
# not read until some end. Each costs ~14 KiB, and what a burst took stayed
# with the process after it (glibc keeps the freed heap): reading a burst of
# 4,000 adds at once left the RSS at 86 MiB, this bound at 56 MiB.
MAX_WAITING = 1000

# While at least as many jobs wait for a worker as there are workers, a round (the events
# read, the ended jobs taken in, the store and the cookie written) begins at most this often.
# Woken by every event and every ended job, a burst made about two rounds per account, each a
# wake-up handed the GIL and a commit; the workers take their next job from the queue
# meanwhile, and what a round takes in later is only acknowledged later (the outcomes are in
# the directory already). With fewer waiting, the workers could run out of jobs before the
# next round: not paced.
BUSY_ROUND = 0.01
# How often the gateway's last answer is written to the store for `status` (and at every change
# between up and away).
HOST_RECORD_INTERVAL = 10.0
# While removals are held, how often the daemon looks whether their entries are back.
HELD_RECHECK_INTERVAL = 60.0


@dataclass(frozen=True)
class Target:
    """What ``with_retries`` tries to reach: its name in the log, the errors that mean "not yet",
    and the exception raised when every attempt failed."""

    name: str
    errors: tuple[type[BaseException], ...]
    gone: type[Exception]
    exhausted: str = "{name} did not answer after {attempts} attempt(s) in {seconds:.0f} s"


LDAP = Target("LDAP", (DirectoryUnavailable, WriteRefused), DirectoryUnavailable,
              "no LDAP server answered after {attempts} attempt(s)")


class HostUnreachable(Exception):
    """The host being provisioned (CLISSH's gateway) did not answer within [Operation Mode] ATTEMPTS."""


def gateway(reach: Reach | None) -> Target:
    """The Target for the transport's host (``reach``: what the transport says of it)."""
    where = reach.where if reach is not None else "the host"
    return Target(f"the gateway {where}", (Unreachable,), HostUnreachable)


def with_retries(action: Callable[[], None], retry: Retry,
                 sleep: Callable[[float], bool] | None = None, target: Target = LDAP) -> None:
    """Call ``action`` until it does not raise one of ``target.errors`` (LDAP: DirectoryUnavailable
    or WriteRefused).

    At most ``retry.attempts`` times (0: until it works or a stop comes).
    ``sleep`` waits between attempts and returns False to give up early (a
    stop was requested). The first failure is logged, then at most once a
    minute that it is still failing, and once when it works again. Raises
    ``target.gone`` (LDAP: DirectoryUnavailable) when every attempt failed.
    """
    sleep = sleep or (lambda seconds: time.sleep(seconds) or True)
    started = time.monotonic()
    said_at = -math.inf
    attempt = 0
    while True:
        attempt += 1
        try:
            action()
        except target.errors as err:
            if retry.attempts and attempt >= retry.attempts:
                log.warning("attempt %d of %d to reach %s failed: %s", attempt, retry.attempts, target.name, err)
                raise target.gone(target.exhausted.format(name=target.name, attempts=retry.attempts,
                                                          seconds=time.monotonic() - started)) from err
            if time.monotonic() - said_at >= WAITING_REPORT_INTERVAL:
                said_at = time.monotonic()
                of = f" of {retry.attempts}" if retry.attempts else ""
                log.warning("attempt %d%s to reach %s failed: %s; trying again every %g s%s", attempt, of,
                            target.name, err, retry.sleep, "" if attempt == 1 else
                            f" (waiting for %.0f s)" % (time.monotonic() - started))
            if not sleep(retry.sleep):
                raise target.gone(f"stopped while waiting for {target.name}") from err
            continue
        if attempt > 1:
            log.warning("%s answers again after %d attempts in %.1f s", target.name, attempt,
                        time.monotonic() - started)
        return


class Daemon:
    """One service daemon: a sync stream, a write connection, a router, workers."""

    def __init__(self, *, directory: Directory, stream: SyncStream, position: Position, store: Store,
                 router: Router, executor: Inline | Threads, startup: Retry, operation: Retry,
                 base: str, clock: Clock | None = None, poll_interval: float = 0.5,
                 stop_event: threading.Event | None = None, once: bool = False,
                 monitor: Monitor | None = None, on_reload: Callable[[], object] | None = None,
                 mirror: Mirror | None = None, brake: Brake | None = None,
                 transport: Transport | None = None, failback: Failback | None = None) -> None:
        self.directory = directory
        self.stream = stream
        self.position = position
        self.store = store
        self.router = router
        self.executor = executor
        self.startup = startup
        self.operation = operation
        self.base = base
        self.clock = clock or Clock()
        self.poll_interval = poll_interval
        self.stop_event = stop_event or threading.Event()
        self.once = once                           # stop after the first refresh (--once)
        self.in_refresh = True
        self.refresh_full = False
        self._seq = 0
        self._lanes: dict[str, deque[tuple[int, str, Callable[[], Job | None]]]] = {}
        self._in_hand = OpenEvents()                # events not yet handled to the end
        self._cookies: deque[tuple[int, str]] = deque()
        self._forget_at_cookie: list[str] = []   # own writes a refresh judged lost (see _check_cookie)
        self._trouble: str | None = None           # why the loop must reconnect before going on
        self._round_began = 0.0                    # when the last busy round began (_pace)
        self.transport = transport                 # the plugin's: its host may go away (CLISSH)
        self._host_away = False                    # a job found the transport's host out of reach
        self._host_record: dict | None = None      # what was last written of it for status
        self._host_recorded_at = -math.inf
        self._swept_on: dt.date | None = None
        self._after_refresh: list[Callable[[], None]] = []
        self._closed = False
        self._session_server: str | None = None   # the server of the last sync session in this run
        self._settle_at: int | None = None         # the refresh ended at this event; its work may not have
        self._stop_when_idle = False               # --once: stop when nothing is in hand any more
        self._warned: set[str] = set()            # warnings mailed for trouble that is not over
        self.on_reload = on_reload                 # what SIGHUP does (provisioning.runtime.reload)
        self._reload_asked = False
        self._stop_signal: str | None = None       # the signal that asked for the stop, said by the loop
        self._synchronised = False                 # the first refresh is done (its line said "initial")
        self.mirror = mirror                       # what the store must mirror (None: not checked)
        self.brake = brake or Brake()
        self.failback = failback                   # back to an earlier provider of SERVER (None: never)
        self._failing_back = False
        self._resyncing = False                    # the reconnect under way is a full refresh an operator asked for
        self._full_asked: float | None = None      # when the full refresh in hand was asked for (resync)
        self._held_checked_at = -math.inf
        self.monitor = monitor or Monitor(base=base)   # systemd, metrics, progress lines
        self.monitor.attach(self)

    # ---------------------------------------------------------------- control

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def request_stop(self, signal_name: str | None = None) -> None:
        """Ask the loop to stop after the work in hand (safe in a signal handler: no I/O here;
        the loop says which signal it was)."""
        if signal_name and self._stop_signal is None:
            self._stop_signal = signal_name
        self.stop_event.set()

    def request_reload(self) -> None:
        """Ask the loop to reload what it can (SIGHUP); only sets a flag (safe in a signal handler)."""
        self._reload_asked = True

    # ---------------------------------------------- the view observers read (observe.view.LoopView)

    @property
    def waiting(self) -> int:
        """Events queued or in hand, not yet finished."""
        return len(self._in_hand)

    @property
    def acknowledged(self) -> str | None:
        """The cookie acknowledged last."""
        return self.position.current

    @property
    def held_removals(self) -> int:
        """Removals the deletion brake holds for an operator."""
        return len(self.brake.held)

    def reach(self) -> Reach | None:
        """The gateway's state (CLISSH); None for this host."""
        return self.transport.reach() if self.transport is not None else None

    def gauges(self) -> dict[str, tuple[float, str]]:
        """The plugin's gauges (provisioning_metrics)."""
        return self.router.service.gauges()

    def start(self) -> None:
        """Open the store's position, connect both connections and open the stream."""
        self._check_mirror()
        start = self.position.start()
        self.router.adopt = start.adopt
        self.brake.held = {held.uuid for held in self.store.held()}
        self.store.changed_elsewhere()             # from here on, an operator's decision is noticed
        self._full_at_start()
        self._after_refresh = [self._sweep_claims, self._retry_failed, self._decide_held, self._resync_if_asked]
        self._connect(self.startup)

    def run(self) -> None:
        """Step until asked to stop, then finish the work in hand and disconnect."""
        try:
            while not self.stopping:
                self.step()
            if self._stop_signal:
                log.info("%s received: stopping after the work in hand", self._stop_signal)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Finish the work in hand, write the position, close everything (once)."""
        if self._closed:
            return
        self._closed = True
        self.monitor.stopping()
        if self.failback is not None:
            self.failback.close()
        self._drain()
        self._flush(mirror=True)
        self.executor.close()
        self.stream.close()
        self.directory.close()
        self.router.selfcare.close()
        self.store.close()

    def step(self, timeout: float | None = None) -> None:
        """One round: the events that arrive within ``timeout``, then housekeeping."""
        self.monitor.beat()
        self._reload_if_asked()
        self._check_failback()
        if self._trouble:
            self._recover()
            return
        try:
            wait = self.poll_interval if timeout is None else timeout
            if self.executor.busy and self.waiting >= MAX_WAITING:
                # Enough in hand: the rest of a burst waits in the socket and at the
                # server, so the daemon's memory stays flat however large the burst.
                events = []
                self._pace()
                self._collect(wait)
            elif self.executor.busy:
                # Workers are busy: wait for whichever comes first, an event or an ended job.
                self._pace()
                events = self.stream.poll(0.0)
                if not events and self._await(wait):
                    events = self.stream.poll(0.0)
            else:
                events = self.stream.poll(wait)
            for event in events:
                self._dispatch(event)
                self._collect()
                if self.stopping or self._trouble:
                    return           # what is left was not acknowledged: it comes again
            self._collect()
            self._judge_parked()
            self._settle()
            self._publish_host()
            self._flush()
            if not self._trouble:
                self._housekeeping()
        except DirectoryUnavailable as err:
            if self.stopping:
                return               # a stop signal interrupts a blocking read: not a lost server
            self._trouble = f"lost the LDAP connection: {err}"
        except RefreshRequired as err:
            log.warning("the server cannot resume from our cookie (%s): full refresh", err)
            self.position.reset()
            self._trouble = "full refresh"

    def _pace(self) -> None:
        """With a backlog (as many jobs waiting as workers), begin a round no sooner than BUSY_ROUND after the last."""
        if self.executor.busy >= 2 * self.executor.size:
            left = self._round_began + BUSY_ROUND - time.monotonic()
            if left > 0:
                time.sleep(left)
        self._round_began = time.monotonic()

    def _await(self, timeout: float) -> bool:
        """Wait until the stream has data or a worker ended a job; True for the stream."""
        fds = [fd for fd in (self.stream.fileno(), self.executor.wake_fd) if fd is not None]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return False
        return self.stream.fileno() in ready

    # ------------------------------------------------------------ connection

    def _connect(self, retry: Retry) -> None:
        self.stream.close()
        self.directory.close()
        self.monitor.connecting()
        try:
            with_retries(self._open, retry, self._sleep)
        except DirectoryUnavailable:
            if self.stopping:
                return
            raise
        self.in_refresh = True
        self._warned.discard("directory")
        if self.failback is not None:
            self.failback.watch(self.directory.uri)
        self.monitor.connected(self.directory.uri, self.refresh_full)
        log.info("connected to %s; synchronising %s%s", self.directory.uri, self.base,
                 " (full refresh)" if self.refresh_full else "")

    def _open(self) -> None:
        self.directory.open()
        self._write_pending()
        self._check_identity()
        self._check_cookie()
        self.refresh_full = self.position.full
        # On the server the cookie was checked against: were the stream to land
        # on another one (the first died in between), the check would say nothing.
        self.stream.open(self.position.cookie, uri=self.directory.uri)
        self._session_server = self.directory.uri

    def _write_pending(self) -> None:
        """Write the outcomes the directory did not take before; raise if it still does not."""
        for write in self.store.pending():
            self.monitor.beat()
            csns = write_pending(self.directory, write)
            self.router.note_own_writes(csns)
            self.router.written(write, csns[0] if csns else None)
            self.store.drop_pending(write.dn)
            self.position.flush()

    def _check_cookie(self) -> None:
        """Compare the cookie with the provider's contextCSN: one it cannot continue from (see
        cookie.ahead_of), or a provider that lacks our own last writes, means a full refresh."""
        if not (self.position.current or self.router.adopt):
            return
        try:
            context = self.directory.context_csns(self.base)
        except DirectoryError as err:
            log.debug("cannot read the provider's contextCSN: %s", err)
            context = []
        log.debug("provider contextCSN %s; cookie %s", " ".join(context) or "(none readable)",
                  self.position.current or self.router.adopt)
        if not context:
            self._unverifiable_cookie()
            return
        missing = missing_writes(self.router.own_csns(), context)
        why = ahead_of(self.position.current, context)
        if not why and missing:
            why = (f"the provider lacks {len(missing)} write(s) of this daemon, the newest {max(missing)} (a claim "
                   "or an outcome the provider it went to did not replicate)")
        if why:
            log.error("%s: refreshing from scratch", why)
            self.position.reset()
            self.router.adopt = None
            # Judged by this refresh; they will never come back from this provider. Forgotten
            # with the refresh's first cookie, in the same store transaction: the reset lives
            # in memory only, and a restart before it must find them missing again.
            self._forget_at_cookie = missing
        elif self.router.adopt and ahead_of(self.router.adopt, context):
            log.error("COOKIE_FILE: %s: refreshing from scratch, taking nothing as handled before",
                      ahead_of(self.router.adopt, context))
            self.router.adopt = None

    # ------------------------------------------------------------- mirror

    def _check_mirror(self) -> None:
        """At start: does the store mirror SERVICE_SUBTREE and SEARCH_FILTER as configured?"""
        if self.mirror is None:
            return
        recorded = self.store.mirror
        if recorded is not None:
            changed = self.mirror.differences(recorded)
        else:
            # A store of an earlier version, which never recorded its search: its entries tell.
            outside = [known.dn for known in self.store.known() if not below(known.dn, self.base)]
            changed = [f"the store knows {len(outside)} entr(y/ies) outside SERVICE_SUBTREE {self.base}, "
                       f"e.g. {outside[0]}"] if outside else []
        if changed:
            self._fresh_mirror(changed)
        elif recorded is None or any(key not in recorded for key in self.mirror.as_dict()):
            self.store.set_mirror({**(recorded or {}), **self.mirror.as_dict()})

    def _check_identity(self) -> None:
        """At every connect: is this the directory (and the subtree entry) the store's entries came from?"""
        if self.mirror is None:
            return
        now = self.directory.identity(self.base)
        recorded = self.store.mirror or {}
        changed = identity_differences(recorded, now)
        if changed:
            self._fresh_mirror(changed + [f"(on {self.directory.uri})"])
            recorded = self.store.mirror or {}
        known = {"suffix_uuid": now.suffix, "base_uuid": now.base}
        if any(value and recorded.get(key) != value for key, value in known.items()):
            self.store.set_mirror({**recorded, **{k: v for k, v in known.items() if v}})

    def _fresh_mirror(self, changed: list[str]) -> None:
        """The store's entries came from another search: start over without judging one of them removed."""
        count = self.store.count()
        text = (f"the store {self.store.path} mirrors another search than this daemon's: {'; '.join(changed)}. "
                f"Starting a fresh mirror of {self.base}: none of the {count} entr(y/ies) the store knew is "
                f"taken as removed (no delete hook runs; their data stays on this host, their records are "
                f"kept in the store's 'retired' table), and the subtree is read from scratch")
        log.error("%s", text)
        self._warn_once("mirror", "the daemon started a fresh mirror: SERVICE_SUBTREE, SEARCH_FILTER or the "
                        "directory changed", text)
        self.store.start_mirror(self.mirror.as_dict())
        self.position.forget()
        self.router.adopt = None
        self.brake.clear()
        self.brake.held = set()

    def _unverifiable_cookie(self) -> None:
        """The provider's contextCSN cannot be read: the cookie is trusted only where it was made.

        On the server of the session before (in this run) the cookie is that
        server's own position. On any other (a failover, or a start after an
        earlier run) nothing shows whether the provider has every change the
        cookie covers: an outcome the dead provider never replicated would
        never come back. A full refresh, judged against the store, redoes
        nothing and finds it. (A COOKIE_FILE to adopt, from an upgrade, is
        kept: without the store, dropping it would redo every account.)
        """
        if not self.position.current or self.directory.uri == self._session_server:
            return
        log.warning("the contextCSN of %s cannot be read (ACL?), so the cookie (from %s) cannot be checked "
                    "against it: refreshing from scratch; let the daemon's bind read contextCSN on the "
                    "suffix entry (docs/deployment.md, 4. The directory)", self.directory.uri,
                    self._session_server or "an earlier run")
        self.position.reset()

    def _check_failback(self) -> None:
        """Move back to an earlier provider of SERVER that answers again (see provisioning.engine.failback)."""
        if self._trouble or self.failback is None:
            return
        uri = self.failback.due()
        if uri is not None:
            self._trouble = f"{uri}, before {self.directory.uri} in SERVER, answers again and has caught up"
            self._failing_back = True

    def _recover(self) -> None:
        """Finish the work in hand; wait for the gateway if it went away; reconnect and write what is kept.

        The work a job could not finish because the gateway was away (its
        request claimed without an outcome, or left open) comes again from
        the stream, read anew from the acknowledged cookie: a claim of this
        daemon that is not in hand is resumed (provisioning.engine.claims).
        A fail-back (an earlier provider of SERVER answers again) is no
        trouble: the reconnect finds the first provider that answers.
        """
        if self._failing_back:
            log.info("%s; finishing the work in hand, then moving back to it", self._trouble)
            self._failing_back = False
        elif self._resyncing:
            log.info("%s: the work in hand ends, then the whole subtree is read again and judged against the store "
                     "(nothing done is redone; removals go through the deletion brake)", self._trouble)
            self._resyncing = False
        elif self._host_away:
            log.warning("%s; new work waits, the work in hand ends, then the daemon waits for the gateway",
                        self._trouble)
            self.monitor.trouble(self._trouble, host=True)
        else:
            log.warning("%s; finishing the work in hand, then reconnecting", self._trouble)
            self._warn_once("directory", "the directory is out of reach or refuses writes",
                            f"{self._trouble}. Requests wait; kept outcomes are written when it is back.")
            self.monitor.trouble(self._trouble, host=False)
        self._drain()
        self._forget_unfinished()
        self._publish_host()
        self._flush(mirror=True)
        self._trouble = None
        if self.stopping:
            return
        if self._host_away:
            self._await_host()
            if self.stopping:
                return
        if self._sweep_claims not in self._after_refresh:
            self._after_refresh.append(self._sweep_claims)
        self._connect(self.operation)

    def _await_host(self) -> None:
        """Reach the gateway again with [Operation Mode] SLEEP and ATTEMPTS; HostUnreachable if it stays away."""
        reach = self.transport.reach() if self.transport is not None else None
        self._warn_once("gateway", "the gateway is out of reach",
                        f"{reach.why if reach is not None else 'the gateway did not answer'}. Requests wait, "
                        "claimed without an outcome or open, and are worked once it answers again.")
        try:
            with_retries(self._reconnect_host, self.operation, lambda s: self._sleep(s, "the gateway"),
                         gateway(reach))
        except HostUnreachable:
            if self.stopping:
                return
            raise
        self._host_away = False
        self._warned.discard("gateway")
        self.monitor.host_back()
        self._publish_host()
        self._flush()

    def _publish_host(self) -> None:
        """Write the gateway's state for status: at every change between up and away, and its last
        answer at most every HOST_RECORD_INTERVAL seconds."""
        reach = self.transport.reach() if self.transport is not None else None
        if reach is None:
            return
        record = {"where": reach.where, "up": reach.up, "since": reach.since, "answered": reach.answered,
                  "why": reach.why}
        old = self._host_record
        due = time.monotonic() - self._host_recorded_at >= HOST_RECORD_INTERVAL
        if old is not None and old["up"] == reach.up and (old == record or not due):
            return
        self._host_record, self._host_recorded_at = record, time.monotonic()
        self.store.note_gateway({**record, "written": time.time()})

    def _reconnect_host(self) -> None:
        if self.transport is not None:
            self.transport.reconnect()

    def _sleep(self, seconds: float, what: str = "LDAP") -> bool:
        """Sleep, waking for a stop request (False if one came); a reload is done meanwhile."""
        self.monitor.away(seconds, what)
        until = time.monotonic() + seconds
        while not self.stop_event.wait(min(1.0, max(0.0, until - time.monotonic()))):
            self._reload_if_asked()
            if time.monotonic() >= until:
                return True
        return False

    def _reload_if_asked(self) -> None:
        if not self._reload_asked:
            return
        self._reload_asked = False
        if self.on_reload is None:
            log.warning("SIGHUP: nothing to reload in this daemon")
            return
        try:
            self.on_reload()
        except Exception:  # noqa: BLE001 - a reload that goes wrong keeps the settings in use
            log.exception("SIGHUP: the reload failed; the settings in use are kept")

    # --------------------------------------------------------------- events

    def _dispatch(self, event: Event) -> None:
        self._seq += 1
        if isinstance(event, EntryChanged):
            origin = REFRESH if self.in_refresh else CHANGE
            self.monitor.seen(event)
            if event.uuid in self.brake.held:
                self._release_held([event.uuid], "it is in the directory again")
            self._enqueue(event.uuid or event.dn.lower(), self._seq, event.dn,
                          lambda: self.router.stream_job(event, origin))
        elif isinstance(event, CookieReached):
            self._cookies.append((self._seq, event.cookie))
            self._advance()
        elif isinstance(event, EntriesDeleted):
            for uuid in event.uuids:
                self._removal(uuid, self._seq)
        elif isinstance(event, PresentEnd):
            self._present_end(event)
        elif isinstance(event, RefreshDone):
            self._refresh_done()

    def _refresh_done(self) -> None:
        self.in_refresh = False
        self.router.adopt = None
        self._resync_done()
        self._settle_at = self._seq            # said done in _settle, once its work has ended
        todo, self._after_refresh = self._after_refresh, []
        for sweep in todo:
            sweep()

    def _settle(self) -> None:
        """Once the work the refresh brought has ended (workers may still run it at RefreshDone)."""
        if self._settle_at is not None and self._in_hand.lowest() > self._settle_at:
            self._settle_at = None
            self.monitor.refresh_done()          # the progress totals come first
            what = "synchronisation of %s done after reconnecting" if self._synchronised \
                else "initial synchronisation of %s done"
            log.info(what + ("" if self.once else "; waiting for changes"), self.base)
            self._synchronised = True
            if self.once:
                self._housekeeping()             # requests dated for today too
                self._stop_when_idle = True
        if self._stop_when_idle and not self._lanes:
            log.info("stopping after the first refresh (--once)")
            self.request_stop()

    def _present_end(self, event: PresentEnd) -> None:
        """Entries the store knows that the server neither sent nor named present are gone.

        Only when the server says so (present phase) or the session started
        without a cookie. Each candidate is checked with a search first: an
        entry may only have fallen outside SEARCH_FILTER (%entryCSN%).
        """
        back = self.brake.held & event.seen
        if back:
            self._release_held(sorted(back), "the refresh found it in the directory again")
        if not (event.implicit or self.refresh_full):
            return
        candidates = self.store.uuids() - event.seen
        if not candidates:
            return
        try:
            gone = candidates - self.directory.existing_uuids(self.base, candidates)
        except (DirectoryError, SubtreeMissing) as err:
            # An incomplete answer is no proof of anything: the next full refresh asks again.
            log.error("cannot check the %d entr(y/ies) the refresh did not name (%s): none of them is taken "
                      "as removed", len(candidates), err)
            return
        for uuid in sorted(gone):
            self._removal(uuid, self._seq)

    # ---------------------------------------------------------------- brake

    def _removal(self, uuid: str, seq: int) -> None:
        """Queue the removal of ``uuid`` (seen at event ``seq``): through the deletion brake when it
        would call the delete hook."""
        label = f"entryUUID {uuid}"

        def plan() -> Job | object | None:
            if not self.router.brakes(uuid):
                return self.router.removal_job(uuid)
            self.brake.park(Parked(uuid, seq, label), in_refresh=self.in_refresh)
            log.debug("%s: removed; waits for the deletion brake's judgement of its batch", label)
            return PARKED
        self._enqueue(uuid, seq, label, plan)

    def _judge_parked(self) -> None:
        """Run or hold the batch of parked removals once it is complete (see provisioning.engine.brake)."""
        batch = self.brake.due(in_refresh=self.in_refresh)
        if not batch:
            return
        settings = self.brake.settings
        if self.brake.held or settings.engages(len(batch), self._accounts):
            self._hold(batch)
            return
        for removal in batch:
            self._begin(removal.uuid, removal.seq, removal.label,
                        lambda u=removal.uuid: self.router.removal_job(u))

    def _accounts(self) -> int:
        """How many entries the store knows that belong to this host (for the brake's share)."""
        return sum(1 for known in self.store.known() if self.router.service.owns(known.entry()))

    def _hold(self, batch: list[Parked]) -> None:
        new = []
        for removal in batch:
            known = self.store.lookup(removal.uuid)
            if removal.uuid not in self.brake.held and known is not None:
                self.store.hold(Held(removal.uuid, known.dn, time.time()))
                self.brake.held.add(removal.uuid)
                new.append(known.dn)
            self._resume_lane(removal.uuid, removal.seq)
        self._flush()
        if not new:
            log.debug("%d removal(s) already held by the deletion brake seen again", len(batch))
            return
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        text = (f"the deletion brake holds {len(new)} removal(s) that would call the delete hook ({shown}); "
                f"{len(self.brake.held)} held in all. Nothing is deleted until an operator decides: "
                f"provisioning-daemon deletions -c CONFIG --list, then --approve (delete) or --keep (keep the "
                f"data, forget the entry). Brake: {self.brake.settings.describe()} this host has in one refresh "
                f"or within {self.brake.settings.window:g} s, or any while others are held")
        log.warning("%s", text)
        alerts = self.router.alerts
        if alerts is not None:
            alerts.warning(f"deletion brake: {len(new)} removal(s) held for an operator", text)

    def _resume_lane(self, key: str, seq: int) -> None:
        """The parked event ``seq`` is handled: the lane goes on with what waits behind it."""
        nxt = self._next_in_lane(key, seq)
        if nxt is not None:
            self._begin(key, *nxt)

    def _release_held(self, uuids: list[str], why: str) -> None:
        for uuid in uuids:
            known = self.store.lookup(uuid)
            log.info("%s: %s: its held removal is dropped", known.dn if known else f"entryUUID {uuid}", why)
            self.store.release(uuid)
            self.brake.held.discard(uuid)

    def _decide_held(self) -> None:
        """Carry out what an operator decided on held removals (provisioning-daemon deletions)."""
        decisions = self.store.decisions()
        if not decisions:
            return
        held = {h.uuid: h for h in self.store.held()}
        for uuid in [u for u in decisions if u not in held]:
            self.store.release(uuid)                # a decision on nothing held (any more): dropped
        approved = [u for u, d in decisions.items() if u in held and d == APPROVE]
        try:
            back = self.directory.existing_uuids(self.base, approved) if approved else set()
        except (DirectoryError, SubtreeMissing) as err:
            log.error("cannot check whether the %d approved removal(s) are still gone (%s): tried again "
                      "later", len(approved), err)
            return
        self._release_held(sorted(back), "approved for deletion, but it is in the directory again")
        for uuid, decision in decisions.items():
            if uuid not in held or uuid in back:
                continue
            if decision == APPROVE:
                log.info("%s: removal approved by an operator: deleting it", held[uuid].dn)
                self.store.release(uuid)
                self.brake.held.discard(uuid)
                self._seq += 1
                self._enqueue(uuid, self._seq, held[uuid].dn, lambda u=uuid: self.router.removal_job(u))
            else:
                log.warning("%s: removal kept by an operator: the entry is forgotten, its data stays on this "
                            "host", held[uuid].dn)
                self.store.forget(uuid)
                self.brake.held.discard(uuid)
        self._flush()

    # ---------------------------------------------------------------- resync

    def _full_at_start(self) -> None:
        """A full refresh asked for while no daemon ran (provisioning-daemon resync): this start reads it all."""
        asked = self.store.resyncs().get(EVERYTHING)
        if asked is None:
            return
        self._full_asked = asked
        self.position.reset()
        log.info("a full refresh was asked for (provisioning-daemon resync): the whole subtree is read and judged "
                 "against the store (nothing done is redone; removals go through the deletion brake)")

    def _resync_if_asked(self) -> None:
        """Carry out what an operator asked with provisioning-daemon resync: entries, or a full refresh."""
        asked = self.store.resyncs()
        everything = asked.pop(EVERYTHING, None)
        for dn, at in sorted(asked.items()):
            self._resync_entry(dn)
            self.store.resynced(dn, at)
        if everything is not None and self._full_asked is None:
            self._full_asked = everything
            self.position.reset()
            self._resyncing = True
            self._trouble = "a full refresh was asked for (provisioning-daemon resync)"
        if asked:
            self._flush()

    def _resync_entry(self, dn: str) -> None:
        """Judge one entry again, as a full refresh would: against the store; a removal through the brake."""
        entry = self.directory.read(dn)
        if entry is not None:
            log.info("%s: judged again against the store (provisioning-daemon resync)", dn)
            self._seq += 1
            self._enqueue(entry.key, self._seq, entry.dn,
                          lambda: self.router.entry_job(entry, origin=REFRESH))
            return
        known = self.store.by_dn(dn)
        if known is None:
            log.warning("%s: a resync was asked for, but neither the directory nor the store knows it", dn)
            return
        try:
            there = self.directory.existing_uuids(self.base, [known.uuid])
        except (DirectoryError, SubtreeMissing) as err:
            log.error("%s: cannot check whether its entry is gone (%s): it is not taken as removed", dn, err)
            return
        if there:
            log.info("%s: its entry (entryUUID %s) is in the directory under another DN: the stream brings it",
                     dn, known.uuid)
            return
        log.info("%s: the directory no longer has it (entryUUID %s): its removal is judged as a refresh's would "
                 "be (provisioning-daemon resync)", dn, known.uuid)
        self._seq += 1
        self._removal(known.uuid, self._seq)

    def _resync_done(self) -> None:
        """The full refresh an operator asked for is over: its request is done."""
        if self._full_asked is not None and self.refresh_full:
            self.store.resynced(EVERYTHING, self._full_asked)
            self._full_asked = None
            log.info("the full refresh asked for with provisioning-daemon resync is done")

    def _recheck_held(self) -> None:
        """While removals are held: are their entries back (a directory restored with its entryUUIDs)?"""
        if not self.brake.held or time.monotonic() - self._held_checked_at < HELD_RECHECK_INTERVAL:
            return
        self._held_checked_at = time.monotonic()
        try:
            back = self.directory.existing_uuids(self.base, self.brake.held)
        except (DirectoryError, SubtreeMissing) as err:
            log.debug("cannot check the held removals: %s", err)
            return
        if back:
            self._release_held(sorted(back), "it is in the directory again")
            self._flush()

    # ---------------------------------------------------------------- lanes

    def _enqueue(self, key: str, seq: int, label: str, plan: Callable[[], Job | None]) -> None:
        """Queue work for ``key`` behind what is in hand for it, or start it now."""
        self._in_hand.add(seq)
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append((seq, label, plan))
            return
        self._lanes[key] = deque()
        self._begin(key, seq, label, plan)

    def _begin(self, key: str, seq: int, label: str, plan: Callable[[], Job | None]) -> None:
        while True:
            try:
                job = plan()
            except (DirectoryUnavailable, WriteRefused):
                raise
            except Exception:  # noqa: BLE001 - a bug in judging costs this entry, not the daemon
                log.exception("%s: unexpected error while judging the entry", label)
                job = None
            if job is PARKED:
                return                       # waits for the brake (see _judge_parked)
            if job is not None:
                job.key, job.seq = key, seq
                self.executor.submit(job)
                return
            nxt = self._next_in_lane(key, seq)
            if nxt is None:
                return
            seq, label, plan = nxt

    def _next_in_lane(self, key: str, seq: int) -> tuple[int, str, Callable[[], Job | None]] | None:
        """Mark ``seq`` handled; the next queued work of the lane, or None (lane closed)."""
        self._in_hand.done(seq)
        lane = self._lanes[key]
        if lane:
            return lane.popleft()
        del self._lanes[key]
        return None

    def _collect(self, timeout: float = 0) -> None:
        """Take the results of ended jobs into the daemon's state.

        The store is written at once when a job ran a hook whose only record
        is the store (LDAP mode, removals) or whose outcome the directory did
        not take (kept as pending): a crash must not make it run again. Other
        selfcare outcomes are in the directory; their store records and the
        cookie are written at the end of the round (see step), which a round
        cut short by trouble does not reach before the work in hand ended.
        """
        durable = False
        for job, result in self.executor.completed(timeout):
            durable = durable or result.durable or result.pending is not None
            self.router.complete(job, result)
            self.monitor.completed(job, result)
            if result.pending is not None:
                self._trouble = self._trouble or "the directory did not take a write"
            if result.retry:
                self._trouble = self._trouble or f"the directory is not taking writes: {result.retry}"
            if result.away:
                self._host_away = True
                self._trouble = self._trouble or result.away
            if result.retry or result.interrupted or result.away:
                continue             # not handled: the cookie must not pass it
            nxt = self._next_in_lane(job.key, job.seq)
            if nxt is not None and not (self._trouble or self.stopping):
                self._begin(job.key, *nxt)
        self._advance()
        if durable:
            self._flush()

    def _flush(self, *, mirror: bool = False) -> None:
        """Write the position; when the store's folder is full or read-only, say so once."""
        ok = self.position.flush(mirror=mirror)
        self.monitor.store_writable(ok)
        if ok:
            self._warned.discard("store")
        else:
            self._warn_once("store", f"{self.store.path} cannot be written",
                            "The daemon goes on with its position in memory and tries again; the position "
                            "on disk stays before any work that is not done.")

    def _warn_once(self, topic: str, subject: str, text: str) -> None:
        """Mail a warning once per episode of trouble (the log has the details)."""
        alerts = self.router.alerts
        if alerts is not None and topic not in self._warned:
            alerts.warning(subject, text)
        self._warned.add(topic)

    def _advance(self) -> None:
        """Acknowledge every cookie that no unhandled event precedes.

        Each, not only the newest: in the persist phase syncprov's cookie
        names the CSN of its own change only, so a server id whose change
        came between two others would drop out of the position.
        """
        low = self._in_hand.lowest()
        while self._cookies and self._cookies[0][0] < low:
            self.position.acknowledge(self._cookies.popleft()[1])
            if self._forget_at_cookie:
                self.router.forget_own_writes(self._forget_at_cookie)
                self._forget_at_cookie = []

    def _drain(self) -> None:
        """Wait for every job in hand to end and take its result."""
        while self.executor.busy:
            self.monitor.beat()
            self._collect(1.0)
        self._collect()

    def _forget_unfinished(self) -> None:
        """After a reconnect the server sends again whatever was not acknowledged."""
        self.brake.clear()
        self._lanes.clear()
        self._in_hand.clear()
        self._cookies.clear()

    # ----------------------------------------------------------- housekeeping

    def _housekeeping(self) -> None:
        if self.in_refresh:
            return
        today = self.clock.today()
        if today != self._swept_on:
            self._sweep(DATED_REQUESTS_FILTER, "dated request(s)")
            self._swept_on = today
        if self.store.changed_elsewhere():
            self._decide_held()                 # an operator ran provisioning-daemon deletions
            self._resync_if_asked()             # ... or provisioning-daemon resync
        self._recheck_held()
        for key, watch in self.router.expired_watches(self.clock.utcnow()):
            entry = self.directory.read(watch.dn)
            if entry is not None:
                self._new_work(entry)

    def _sweep_claims(self) -> None:
        self._sweep(CLAIMED_FILTER, "claimed request(s) without an outcome")

    def _sweep(self, filterstr: str, what: str) -> None:
        """Judge entries a search finds: claims and dated requests the stream will not bring again."""
        try:
            entries = self.directory.search(self.base, filterstr)
        except DirectoryError as err:
            log.error("cannot look for %s: %s", what, err)
            return
        log.debug("%d %s below %s", len(entries), what, self.base)
        for entry in entries:
            self._new_work(entry)

    def _retry_failed(self) -> None:
        """At start: hooks that failed before (LDAP mode, removals) are tried again once."""
        for known in self.store.failed():
            current = self.directory.read(known.dn)
            if current is not None and current.uuid != known.uuid:
                current = None               # another entry took the DN: ours is gone
            self._seq += 1
            self._enqueue(known.uuid, self._seq, known.dn, lambda k=known, c=current: self.router.retry_job(k, c))

    def _new_work(self, entry: Entry) -> None:
        """Work for an entry a search found (as it is now)."""
        self._seq += 1
        self._enqueue(entry.key, self._seq, entry.dn,
                      lambda: self.router.entry_job(entry, origin=SEARCH))

