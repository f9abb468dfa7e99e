"""The deletion brake: removals in bulk wait for an operator instead of deleting customer data.

A removal that would call the delete hook (MODUS LDAP, and the entries of
MODUS combined that carry no selfcare request) is not run at once: it is
parked in its entry's lane (what comes later for that entry waits behind it,
and the cookie does not pass it) and judged together with the others of its
batch:

- the removals one refresh brings (its delete phase and the entries its
  present phase did not name) form one batch, judged when the refresh ends;
- after that, a batch is the removals seen within [Service]
  DELETION_BRAKE_WINDOW seconds of the first.

A batch larger than DELETION_BRAKE_COUNT *and* larger than
DELETION_BRAKE_PERCENT of the accounts this host has in the store is held:
the store records each removal (``held``), the entries stay known, nothing is
deleted, and the daemon says so once per batch (log, mail, status, metric).
While any removal is held, every later one joins it: the operator looks at
one picture, not at a brake that lets a trickle through.

An operator decides with ``provisioning-daemon deletions``: ``--approve``
runs the delete hook (after checking once more that the entry is still gone),
``--keep`` forgets the entry and leaves its data. A held entry that shows up
in the directory again is released by itself. Selfcare removals are never
held: they run only for a delete request the customer made.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class BrakeSettings:
    """[Service] DELETION_BRAKE_PERCENT, DELETION_BRAKE_COUNT, DELETION_BRAKE_WINDOW."""

    percent: float = 10.0
    count: int = 5
    window: float = 10.0

    @classmethod
    def from_config(cls, config: Any) -> "BrakeSettings":
        svc = config.service["Service"]
        return cls(svc["DELETION_BRAKE_PERCENT"], svc["DELETION_BRAKE_COUNT"], svc["DELETION_BRAKE_WINDOW"])

    def engages(self, removals: int, accounts: Callable[[], int]) -> bool:
        """Whether ``removals`` at once are too many (``accounts`` is only counted when it matters)."""
        return removals > self.count and removals * 100 > self.percent * accounts()

    def describe(self) -> str:
        return f"more than {self.count:d} and more than {self.percent:g} % of the accounts"


@dataclass(frozen=True)
class Parked:
    """A removal waiting in its lane for its batch to be judged."""

    uuid: str
    seq: int
    label: str


# What a plan returns for a parked removal: the lane stays open, no job starts.
PARKED = object()


@dataclass
class Brake:
    """The batch being collected, and the entryUUIDs held (a mirror of the store's ``held``)."""

    settings: BrakeSettings = field(default_factory=BrakeSettings)
    clock: Callable[[], float] = time.monotonic
    parked: list[Parked] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    _closes_at: float | None = None

    def park(self, removal: Parked, *, in_refresh: bool) -> None:
        """Add ``removal`` to the open batch (opening one if none is)."""
        self.parked.append(removal)
        if in_refresh:
            self._closes_at = -math.inf      # judged as soon as the refresh is over
        elif self._closes_at is None:
            self._closes_at = self.clock() + self.settings.window

    def due(self, *, in_refresh: bool) -> list[Parked]:
        """The batch to judge now (and a new one starts), or [] while it is still collecting."""
        if not self.parked or in_refresh or self.clock() < (self._closes_at or 0.0):
            return []
        batch, self.parked, self._closes_at = self.parked, [], None
        return batch

    def clear(self) -> None:
        """Forget the parked removals (a reconnect or stop: the server sends them again)."""
        self.parked, self._closes_at = [], None
