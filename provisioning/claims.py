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
  before anyone else takes over.

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

from provisioning.clock import Clock, generalized_time, utc_stamp
from provisioning.entry import Entry

ATTRIBUTE = "sstProvisioningExecutionTime"
PREFIX = "claim: "
# Commands of a request stop being started this long before its lease ends,
# so the outcome can still be written in time.
LEASE_MARGIN = 0.1
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
    """The claim among the values of sstProvisioningExecutionTime, if there is one."""
    for value in values:
        if not value.startswith(PREFIX):
            continue
        parts = value[len(PREFIX):].split()
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            continue
        try:
            at = dt.datetime.strptime(parts[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        return Claim(parts[0], int(parts[1]), at, value)
    return None


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
        # IA5String: the host name goes into a directory value and a filter.
        self.host = (host or socket.gethostname()).encode("ascii", "replace").decode().replace(" ", "_")
        self.pid = pid or os.getpid()
        self.alive = alive
        self._mine: set[str] = set()
        # Claims of ours that lost to another daemon's (provisioning.confirm): their
        # version is about to be replaced, and must not be resumed as "ours, not in hand".
        self._lost: OrderedDict[str, None] = OrderedDict()

    def new_token(self) -> str:
        token = f"{PREFIX}{self.host} {self.pid} {utc_stamp(self.clock.utcnow())}"
        self._mine.add(token)
        return token

    def release(self, token: str) -> None:
        self._mine.discard(token)

    def lose(self, token: str) -> None:
        """Our claim ``token`` lost to another daemon's: judged as someone else's live claim from now on."""
        self._mine.discard(token)
        self._lost[token] = None
        while len(self._lost) > LOST_KEPT:
            self._lost.popitem(last=False)

    def judge(self, entry: Entry) -> Judgement:
        """Whose is the claim on ``entry`` (claimed, no return value), and may we take it?"""
        claim = parse(entry.values(ATTRIBUTE))
        now = self.clock.utcnow()
        if claim is None:
            since = generalized_time(entry.get("modifyTimestamp")) or now
            return self._lease(since, now, "claimed without an owner (by an older daemon)")
        if claim.token in self._mine:
            return Judgement(Owner.MINE, "claimed by this daemon, which is working on it")
        who = f"claimed by {claim.host} process {claim.pid} at {utc_stamp(claim.at)}"
        if claim.token in self._lost:
            # Another daemon's claim with a later CSN replaces it on every provider
            # soon; should that daemon die before, the lease lets it be taken over.
            return self._lease(claim.at, now, f"{who}, this daemon, whose claim lost to another daemon's")
        if claim.host == self.host and claim.pid == self.pid:
            # Ours, but not in hand: the answer to the claim was lost with the
            # connection (or this is an earlier daemon that had our pid).
            return Judgement(Owner.GONE, f"{who}, this daemon, which is not working on it")
        if claim.host == self.host and not self.alive(claim.pid):
            return Judgement(Owner.GONE, f"{who}, which no longer runs")
        return self._lease(claim.at, now, who)

    def _lease(self, since: dt.datetime, now: dt.datetime, who: str) -> Judgement:
        expires = since + self.lease
        if now >= expires:
            return Judgement(Owner.GONE, f"{who}; its lease ran out at {utc_stamp(expires)}")
        return Judgement(Owner.LIVE, f"{who}; taken over if still open at {utc_stamp(expires)}", expires)

    def work_budget(self) -> float:
        """Seconds a request's commands may run after its claim."""
        return self.lease.total_seconds() * (1 - LEASE_MARGIN)
