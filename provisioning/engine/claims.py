"""Who claimed a request, and when another daemon may take it over.

A claim records its owner in the entry, as one value of
sstProvisioningExecutionTime (a multi-valued attribute of the sstProvisioning
class; other tools keep step timings there, and their values are left alone)::

    claim: <host> <pid> <YYYYMMDDThhmmssZ>

A claimed entry without a return value is in progress, or its daemon died.
The rule for taking such a claim over (resuming it):

- the claim is in hand in this process: never resumed;
- it was made on this host by a process that no longer runs (this daemon
  before a restart, or another one on this host that died), or by this
  process for work that ended without an outcome (the answer to the claim
  was lost with the connection): resumed at once;
- otherwise (another host, or a process on this host that still runs, or a
  claim without an owner, made by the original daemon): resumed only once the
  claim is older than CLAIM_LEASE. The lease is longer than any request may
  take: the core stops starting commands for a request once its lease is
  nearly over (see ``Deadline``), so a live owner has finished or given up
  before anyone else takes over;
- a claim value that does not parse, or whose stamp lies more than a lease
  after the write that carries it (``claim: x 1 99991231T235959Z``, which the
  portal can write): no daemon made it, it is foreign and taken as expired.

A claim's age is measured on the directory's clock, never on the claimant's
or the judge's wall clock: it is the directory's time now (``DirectoryTime``,
a lower bound from the timestamps this daemon has read) less the time of the
entry's last change (its entryCSN, or modifyTimestamp), which is no earlier
than the claim's write. Two daemons whose clocks differ by more than the
lease therefore still wait out each other's fresh claims. A claim's own stamp
is written from the same directory time and is only shown to people.

Taking over is itself a claim, asserted on the entry's entryCSN, so of two
daemons that decide to resume the same entry only one does.
"""
from __future__ import annotations

import datetime as dt
import enum
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass

from provisioning.base.clock import Clock, DirectoryTime, utc_stamp
from provisioning.base.entry import Entry

ATTRIBUTE = "sstProvisioningExecutionTime"
PREFIX = "claim: "
# Commands of a request stop being started this long before its lease ends,
# so the outcome can still be written in time.
LEASE_MARGIN = 0.1
# Process ids a claim may name (Linux's pid_max is at most 2**22; os.kill takes a C int).
MAX_PID = 2**31 - 1
# Claims judged without a time of their own (see Owners._since), remembered this many.
FIRST_SEEN_KEPT = 10_000
# How many lost claims are remembered (each comes back within moments, as another daemon's).
LOST_KEPT = 10_000


class Owner(enum.Enum):
    MINE = "mine"        # claimed by this process: in hand
    GONE = "gone"        # the claimant is demonstrably gone: resume now
    LIVE = "live"        # someone else may still be working: wait for the lease


@dataclass(frozen=True)
class Claim:
    host: str
    pid: int
    at: dt.datetime
    token: str


def parse(values: list[str]) -> Claim | None:
    """The claim among the values of sstProvisioningExecutionTime, if one of them is a well-formed claim."""
    for value in values:
        claim = _parse_one(value)
        if claim is not None:
            return claim
    return None


def unreadable(values: list[str]) -> str | None:
    """The first value that says it is a claim but is no well-formed one."""
    return next((v for v in values if v.startswith(PREFIX) and _parse_one(v) is None), None)


def _parse_one(value: str) -> Claim | None:
    if not value.startswith(PREFIX):
        return None
    parts = value[len(PREFIX):].split()
    # Ten digits at most before int(): a value of thousands of digits is refused by int() itself.
    pid = parts[1] if len(parts) == 3 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 10 else ""
    if not pid or not 0 < int(pid) <= MAX_PID:
        return None
    try:
        at = dt.datetime.strptime(parts[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return Claim(parts[0], int(pid), at, value)


def claim_values(entry: Entry) -> list[str]:
    """Every claim value on the entry (normally one), to replace with ours."""
    return [v for v in entry.values(ATTRIBUTE) if v.startswith(PREFIX)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Judgement:
    owner: Owner
    why: str
    expires: dt.datetime | None = None


class Owners:
    """This daemon's identity, the claims it made, and the takeover rule."""

    def __init__(self, lease: float, clock: Clock | None = None, *, host: str | None = None,
                 pid: int | None = None, alive=pid_alive) -> None:
        self.lease = dt.timedelta(seconds=lease)
        self.clock = clock or Clock()
        self.directory = DirectoryTime(self.clock)
        # IA5String: the host name goes into a directory value and a filter.
        self.host = (host or socket.gethostname()).encode("ascii", "replace").decode().replace(" ", "_")
        self.pid = pid or os.getpid()
        self.alive = alive
        # The claims in hand, by entry (Entry.key -> token). A token names this process and a
        # second: claims of one second share it, so a token alone does not say which entry's it is.
        self._mine: dict[str, str] = {}
        self._first_seen: OrderedDict[str, dt.datetime] = OrderedDict()
        # Claims of ours that lost to another daemon's (provisioning.engine.confirm): their
        # version is about to be replaced, and must not be resumed as "ours, not in hand".
        self._lost: OrderedDict[tuple[str, str], None] = OrderedDict()

    def new_token(self, key: str) -> str:
        """A claim for the entry ``key`` (Entry.key), in hand from now until release or lose."""
        # The directory's time: a stamp never lies ahead of the write that carries it.
        token = f"{PREFIX}{self.host} {self.pid} {utc_stamp(self.directory.now())}"
        self._mine[key] = token
        return token

    def release(self, key: str, token: str) -> None:
        if self._mine.get(key) == token:
            del self._mine[key]

    def lose(self, key: str, token: str) -> None:
        """Our claim ``token`` of entry ``key`` lost to another daemon's: judged as someone else's live
        claim from now on."""
        self.release(key, token)
        self._lost[(key, token)] = None
        while len(self._lost) > LOST_KEPT:
            self._lost.popitem(last=False)

    def saw(self, entry: Entry) -> dt.datetime | None:
        """Note the time of ``entry``'s last change on the directory's clock; that time."""
        return self.directory.saw_entry(entry.csn, entry.get("modifyTimestamp"))

    def judge(self, entry: Entry) -> Judgement:
        """Whose is the claim on ``entry`` (claimed, no return value), and may we take it?"""
        written = self.saw(entry)
        values = entry.values(ATTRIBUTE)
        claim = parse(values)
        if claim is None:
            bad = unreadable(values)
            if bad is not None:
                return Judgement(Owner.GONE, f"claimed by {bad[:80]!r}, which is no claim a daemon writes: "
                                             "foreign, taken as expired")
            return self._lease(self._since(entry, written), "claimed without an owner (by an older daemon)")
        key = entry.key
        if self._mine.get(key) == claim.token:
            return Judgement(Owner.MINE, "claimed by this daemon, which is working on it")
        who = f"claimed by {claim.host} process {claim.pid} at {utc_stamp(claim.at)}"
        if claim.at - (written or self.directory.now()) > self.lease:
            return Judgement(Owner.GONE, f"{who}, more than a lease after the directory wrote it: "
                                         "foreign, taken as expired")
        if (key, claim.token) in self._lost:
            # Another daemon's claim with a later CSN replaces it on every provider
            # soon; should that daemon die before, the lease lets it be taken over.
            return self._lease(self._since(entry, written), f"{who}, this daemon, whose claim lost to another daemon's")
        if claim.host == self.host and claim.pid == self.pid:
            # Ours, but not in hand: the answer to the claim was lost with the
            # connection (or this is an earlier daemon that had our pid).
            return Judgement(Owner.GONE, f"{who}, this daemon, which is not working on it")
        if claim.host == self.host and not self.alive(claim.pid):
            return Judgement(Owner.GONE, f"{who}, which no longer runs")
        return self._lease(self._since(entry, written), who)

    def _since(self, entry: Entry, written: dt.datetime | None) -> dt.datetime:
        """When the claim was made at the latest, on the directory's clock.

        The entry's last change when it shows one (always, as read from the
        directory); otherwise the directory's time when this daemon first
        judged this claim, so that it is waited out once, not for ever.
        """
        if written is not None:
            return written
        key = f"{entry.dn.lower()}\n{' '.join(claim_values(entry))}"
        if key not in self._first_seen:
            self._first_seen[key] = self.directory.now()
            while len(self._first_seen) > FIRST_SEEN_KEPT:
                self._first_seen.popitem(last=False)
        return self._first_seen[key]

    def _lease(self, since: dt.datetime, who: str) -> Judgement:
        age = self.directory.now() - since
        if age >= self.lease:
            return Judgement(Owner.GONE, f"{who}; its lease ran out ({age.total_seconds():.0f} s on the "
                                         f"directory's clock since its write at {utc_stamp(since)})")
        # When to look again, on the local clock (the daemon's timers run on it).
        expires = self.clock.utcnow() + (self.lease - age)
        return Judgement(Owner.LIVE, f"{who}; taken over if still open at {utc_stamp(expires)}", expires)

    def work_budget(self) -> float:
        """Seconds a request's commands may run after its claim."""
        return self.lease.total_seconds() * (1 - LEASE_MARGIN)
