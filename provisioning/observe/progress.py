"""How a long refresh is going: an INFO line every few seconds.

A first start on a directory with thousands of accounts (or a full refresh
after a lost cookie) sends every entry of SERVICE_SUBTREE before the daemon
is current. While it lasts, the log says at most every INTERVAL seconds how
many entries were seen, how many requests were done and how fast entries
come (entries per second since the line before), and once it is over the
totals - so an operator sees it move instead of a silent daemon. A refresh
shorter than INTERVAL logs nothing of this.

INTERVAL is 5 s; $PROVISIONING_PROGRESS_INTERVAL sets another (tests).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from provisioning.base.log import escape

log = logging.getLogger(__name__)


def _interval() -> float:
    try:
        return max(0.01, float(os.environ.get("PROVISIONING_PROGRESS_INTERVAL", "5")))
    except ValueError:
        return 5.0


INTERVAL = _interval()


class Progress:
    """Counts what a refresh brings; ``tick()`` logs when a line is due."""

    def __init__(self, base: str, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base = escape(base)
        self.interval = INTERVAL if interval is None else interval
        self.clock = clock
        self.active = False
        self.full = False
        self.entries = 0
        self.done = 0
        self.failed = 0
        self.lines = 0
        self._started = self._last_at = self._next_at = 0.0
        self._last_entries = 0

    def start(self, full: bool) -> None:
        """A refresh begins (after each connect)."""
        now = self.clock()
        self.active, self.full = True, full
        self.entries = self.done = self.failed = self.lines = self._last_entries = 0
        self._started = self._last_at = now
        self._next_at = now + self.interval

    def completed(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1

    def tick(self) -> None:
        """Log a line if one is due (called every round of the main loop)."""
        if not self.active:
            return
        now = self.clock()
        if now < self._next_at:
            return
        rate = (self.entries - self._last_entries) / max(now - self._last_at, 1e-9)
        log.info("synchronising %s%s: %d entries seen, %d requests done, %d failed or refused, "
                 "%.0f entries/s, %.0f s so far", self.base, " (full refresh)" if self.full else "",
                 self.entries, self.done, self.failed, rate, now - self._started)
        self.lines += 1
        self._last_at, self._last_entries = now, self.entries
        self._next_at = now + self.interval

    def finish(self) -> None:
        """The refresh is over: the totals, if it was long enough to report on."""
        if not self.active:
            return
        self.active = False
        if not self.lines:
            return
        took = self.clock() - self._started
        log.info("synchronised %s: %d entries in %.1f s (%.0f entries/s), %d requests done, "
                 "%d failed or refused", self.base, self.entries, took, self.entries / max(took, 1e-9),
                 self.done, self.failed)
