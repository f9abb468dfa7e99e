"""Whether the CLISSH gateway answers: up, or away since when and why, and when it last answered.

Shared by every thread that works through one transport. "Away" is set by
the first operation that found the gateway out of reach (the others in
flight fail with it) and lasts until the core reaches the gateway again
(CLISSH.reconnect): meanwhile every operation fails at once with
Unreachable, without trying, so a request taken up during an outage is
put back before anything is done for it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from provisioning.transport.base import Reach, Unreachable


class Presence:
    """Up or away, for one gateway (``where`` names it in messages)."""

    def __init__(self, where: str, *, clock: Callable[[], float] = time.time) -> None:
        self.where = where
        self._clock = clock
        self._lock = threading.Lock()
        self._up = True
        self._since = clock()
        self._answered: float | None = None
        self._why = ""

    @property
    def up(self) -> bool:
        return self._up

    def answered(self) -> None:
        """The gateway answered an operation."""
        self._answered = self._clock()

    def lose(self, why: str) -> bool:
        """The gateway is away (``why``); True for the call that found it so, False if it already was."""
        with self._lock:
            if not self._up:
                return False
            self._up, self._since, self._why = False, self._clock(), why
            return True

    def back(self) -> float:
        """The gateway answers again; how many seconds it was away (0 if it was not)."""
        with self._lock:
            now = self._clock()
            away = 0.0 if self._up else now - self._since
            if not self._up:
                self._up, self._since, self._why = True, now, ""
            self._answered = now
            return away

    def check(self) -> None:
        """Unreachable at once while the gateway is away."""
        if not self._up:
            raise Unreachable(self.describe())

    def describe(self) -> str:
        """One line for the log: where, and why it is away."""
        return f"the gateway {self.where} is out of reach: {self._why}"

    def reach(self) -> Reach:
        with self._lock:
            return Reach(self.where, self._up, self._since, self._answered, self._why)
