"""What a piece of work tells the main loop when it ends.

Work runs in a worker (or inline); everything that touches the daemon's own
state (the store, the cookie, the claims it watches) happens in the main loop
from these results, so that state has one writer.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from provisioning.backend.store import PendingWrite
from provisioning.base.entry import Entry


@dataclass
class Watch:
    """A claim someone else holds: look again when its lease runs out (``expires``), and, for a claim of
    another daemon of this host, already at ``again`` (see protocol.Selfcare._watch)."""

    dn: str
    expires: dt.datetime
    again: dt.datetime | None = None

    @property
    def due(self) -> dt.datetime:
        """When to look at the claim again."""
        return min(self.expires, self.again) if self.again is not None else self.expires


@dataclass
class Result:
    """The end of one job for one entry."""

    remember: Entry | None = None        # record this version in the store
    forget: str | None = None            # the entry (this entryUUID) left the directory
    failed: str | None = None            # the hook of this verb failed: retried later (LDAP mode)
    own_csns: list[str] = field(default_factory=list)   # entryCSNs our writes produced
    # Our writes whose echo is no echo: the entry changed after them (see Selfcare.run's outcome).
    disowned: list[str] = field(default_factory=list)
    conflict: bool = False               # the write was not made: the entry changed meanwhile
    pending: PendingWrite | None = None  # a write the directory did not take: keep it
    retry: str | None = None             # not done because the directory is away: resync, then again
    interrupted: bool = False            # a stop cut the work short: resumed at the next start
    away: str | None = None              # the host (CLISSH's gateway) did not answer: worked again once it does
    watch: Watch | None = None           # someone else's claim to look at again
    verb: str | None = None              # what was done or refused (for alerts)
    code: int | None = None              # its return value: 0 done, else failed or refused
    warning: tuple[str, str] | None = None   # (subject, text) an operator must hear of
    lines: list[str] = field(default_factory=list)   # the log lines of this job, for a mail
    answered: dict | None = None         # the outcome a worked request got (see store.Known)
    durable: bool = False                # the store is the only record of what was done: write it now
    took: float | None = None            # seconds the job ran: from its claim to its outcome written
    rival: str | None = None             # another daemon's claim on this request, made through another provider


