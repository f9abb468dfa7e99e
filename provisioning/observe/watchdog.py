"""The systemd watchdog, fed by the main loop (WatchdogSec= in the unit).

The main loop calls ``beat()`` every round (at least every poll interval,
0.5 s). A thread sends WATCHDOG=1 every quarter of WatchdogSec, but only
while the loop has beaten within half of WatchdogSec, or is inside a wait it
announced with its bound (``patience``): an attempt to connect (bounded by
[Database] TIMEOUT), the pause between attempts while LDAP is away ([Global]
or [Operation Mode] SLEEP), a job run in the loop itself with WORKERS = 1
(bounded by the claim's lease: its commands are killed by then). A loop
stuck anywhere else - a deadlock, a call without a timeout, an endless loop
- stops the pings, and systemd kills and restarts the daemon after
WatchdogSec (Restart=on-failure).

A thread rather than the loop sends the datagrams so that the announced
waits need no pings of their own; the thread only ever repeats what the
loop vouched for.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)


class Watchdog:
    """Feeds WATCHDOG=1 through ``send`` while the loop shows it is alive."""

    def __init__(self, seconds: float, send: Callable[[], object], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.every = seconds / 4            # how often the thread pings
        self.grace = seconds / 2            # how long the loop may go without a beat
        self._send = send
        self._clock = clock
        self._beat = clock()
        self._until = -1.0                  # end of an announced wait
        self._stop = threading.Event()
        self._silent = False                # said that the loop stopped moving
        self._thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        self._send()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        """The loop is moving (cheap: called every round)."""
        self._beat = self._clock()

    def expect(self, seconds: float) -> None:
        """The loop may be silent for up to ``seconds`` from now (a bounded wait starts)."""
        self._until = self._clock() + seconds

    def settle(self) -> None:
        """The announced wait is over: from now on only beats count."""
        self._until = -1.0
        self.beat()

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """The block may keep the loop silent for up to ``seconds``; a beat when it ends."""
        before = self._until
        self._until = max(before, self._clock() + seconds)
        try:
            yield
        finally:
            self._until = before
            self.beat()

    def alive(self) -> bool:
        now = self._clock()
        return now - self._beat < self.grace or now < self._until

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.alive():
                if self._silent:
                    self._silent = False
                    log.warning("the main loop moves again: feeding the systemd watchdog again")
                self._send()
            elif not self._silent:
                self._silent = True
                log.error("the main loop has not moved for %.1f s: no longer feeding the systemd watchdog, "
                          "which restarts the daemon after %g s", self._clock() - self._beat, self.seconds)
