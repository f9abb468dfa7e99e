"""The main loop: read the sync stream, hand entries to the protocol, keep the cookie.

``step()`` does one round and is what tests drive; ``run()`` repeats it until
``request_stop()`` (called from a signal handler, which does nothing else).
A stop is noticed between entries, so the entry in hand is always finished
and its outcome written before the daemon leaves.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Callable

from provisioning.backend.cookie import CookieStore
from provisioning.backend.ldap import (
    Directory, DirectoryError, DirectoryUnavailable, EntriesDeleted, EntryChanged, Event,
    RefreshDone, RefreshRequired, SyncStream, CookieReached,
)
from provisioning.clock import Clock
from provisioning.entry import Entry
from provisioning.protocol import DATED_REQUESTS_FILTER, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retry:
    """How often to try reaching LDAP, and how long to wait in between."""

    attempts: int
    sleep: float


def with_retries(action: Callable[[], None], retry: Retry,
                 sleep: Callable[[float], bool] | None = None) -> None:
    """Call ``action`` until it does not raise DirectoryUnavailable, at most ``retry.attempts`` times.

    ``sleep`` waits between attempts and returns False to give up early (a
    stop was requested). Raises DirectoryUnavailable when every attempt failed.
    """
    sleep = sleep or (lambda seconds: time.sleep(seconds) or True)
    for attempt in range(1, retry.attempts + 1):
        try:
            action()
            return
        except DirectoryUnavailable as err:
            log.warning("attempt %d of %d to reach LDAP failed: %s", attempt, retry.attempts, err)
            if attempt < retry.attempts and not sleep(retry.sleep):
                break
    raise DirectoryUnavailable(f"no LDAP server answered after {retry.attempts} attempt(s)")


class Daemon:
    """One service daemon: a sync stream, a write connection, a protocol."""

    def __init__(self, *, directory: Directory, stream: SyncStream, cookies: CookieStore,
                 protocol: Protocol, startup: Retry, operation: Retry, base: str,
                 clock: Clock | None = None, poll_interval: float = 0.5) -> None:
        self.directory = directory
        self.stream = stream
        self.cookies = cookies
        self.protocol = protocol
        self.startup = startup
        self.operation = operation
        self.base = base
        self.clock = clock or Clock()
        self.poll_interval = poll_interval
        self.stopping = False
        self.in_refresh = True
        self._swept_on: dt.date | None = None

    # ---------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Ask the loop to stop after the entry in hand (safe in a signal handler)."""
        self.stopping = True

    def start(self) -> None:
        """Connect both connections and open the stream, with the start-up retries."""
        self._connect(self.startup)

    def run(self) -> None:
        """Step until asked to stop, then write the cookie and disconnect."""
        try:
            while not self.stopping:
                self.step()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.cookies.flush()
        self.stream.close()
        self.directory.close()

    def step(self, timeout: float | None = None) -> None:
        """One round: the events that arrive within ``timeout``, then housekeeping."""
        try:
            for event in self.stream.poll(self.poll_interval if timeout is None else timeout):
                self._dispatch(event)
                if self.stopping:
                    return  # what is left was not acknowledged: it comes again
            self._housekeeping()
        except DirectoryUnavailable as err:
            if self.stopping:
                return  # a stop signal interrupts a blocking read: not a lost server
            log.warning("lost the LDAP connection: %s", err)
            self._connect(self.operation)
        except RefreshRequired as err:
            log.warning("the server cannot resume from our cookie (%s): full refresh", err)
            self.cookies.reset()
            self._connect(self.operation)

    # --------------------------------------------------------------- internals

    def _connect(self, retry: Retry) -> None:
        self.stream.close()
        self.directory.close()
        try:
            with_retries(self._open, retry, self._sleep)
        except DirectoryUnavailable:
            if self.stopping:
                return
            raise
        self.in_refresh = True
        log.info("connected to %s; synchronising %s", self.directory.uri, self.base)

    def _open(self) -> None:
        self.directory.open()
        self.stream.open(self.cookies.current)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking for a stop request; False if one came."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return not self.stopping

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, EntryChanged):
            self._handle(event.entry, in_refresh=self.in_refresh)
        elif isinstance(event, CookieReached):
            self.cookies.acknowledge(event.cookie)
        elif isinstance(event, RefreshDone):
            self.in_refresh = False
            log.info("initial synchronisation of %s done; waiting for changes", self.base)
        elif isinstance(event, EntriesDeleted):
            log.info("%d entr%s removed from the directory (entryUUID %s); nothing to do",
                     len(event.uuids), "y" if len(event.uuids) == 1 else "ies", ", ".join(event.uuids))

    def _handle(self, entry: Entry, *, in_refresh: bool) -> None:
        """Hand one entry to the protocol; a bug there costs this entry, not the daemon."""
        try:
            self.protocol.handle(entry, in_refresh=in_refresh)
        except (DirectoryUnavailable, RefreshRequired):
            raise
        except Exception:  # noqa: BLE001 - logged with the DN and the traceback
            log.exception("%s: unexpected error while handling the entry", entry.dn)

    def _housekeeping(self) -> None:
        self.cookies.flush()
        today = self.clock.today()
        if not self.in_refresh and today != self._swept_on:
            self._sweep_dated_requests(today)

    def _sweep_dated_requests(self, today: dt.date) -> None:
        """Take up requests dated for a day that has now come."""
        try:
            entries = self.directory.search(self.base, DATED_REQUESTS_FILTER)
        except DirectoryError as err:
            log.error("cannot look for dated requests: %s", err)
            return
        log.debug("%d dated request(s) below %s on %s", len(entries), self.base, today)
        for entry in entries:
            self._handle(entry, in_refresh=False)
            if self.stopping:
                return
        self._swept_on = today
