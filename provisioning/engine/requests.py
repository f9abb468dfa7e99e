"""The requests in SERVICE_SUBTREE as an operator sees them: pending, in progress, failed...

Shared by ``status`` (which counts and lists them) and ``retry`` (which
writes failed ones anew). Reads only.
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from provisioning.engine import claims
from provisioning.base.clock import generalized_time
from provisioning.base.entry import Entry
from provisioning.engine.protocol import CLAIMED, DATE, MODE, RETURN, STATE, TRANSITIONS, parse_execution_date

# Every entry with state 0 is a request in some stage (done ones carry a time stamp).
OPEN_FILTER = f"({STATE}=0)"
# Claimed requests that ended with a return value: what retry --failed writes anew.
FAILED_FILTER = (f"(&({STATE}=0)(|{''.join(f'({MODE}={m})' for m in CLAIMED)})({RETURN}=*)"
                 f"(!({RETURN}=0)))")


class Stage(str, enum.Enum):
    PENDING = "pending"            # requested, not claimed yet
    IN_PROGRESS = "in_progress"    # claimed, no outcome yet
    FAILED = "failed"              # claimed, ended with a return value other than 0
    REFUSED = "refused"            # refused before any claim (unknown mode, delete while active, bad date)
    DATED = "dated"                # requested for a later day
    OTHER = "other"                # state 0 but no request (e.g. a finished mode with state 0)


@dataclass(frozen=True)
class Request:
    dn: str
    stage: Stage
    mode: str
    since: dt.datetime | None       # last change of the entry, or the claim's time
    return_value: str | None = None
    owner: str | None = None        # who claimed it (in progress)
    due: dt.date | None = None      # dated requests

    def as_dict(self) -> dict[str, object]:
        return {"dn": self.dn, "stage": self.stage.value, "mode": self.mode,
                "since": self.since.isoformat() if self.since else None,
                "return_value": self.return_value, "owner": self.owner,
                "due": self.due.isoformat() if self.due else None}


def classify(entry: Entry, today: dt.date) -> Request:
    """Which stage the request on ``entry`` (state 0) is in."""
    mode = (entry.get(MODE) or "").strip()
    verb = mode.lower()
    value = entry.get(RETURN)
    since = generalized_time(entry.get("modifyTimestamp"))
    if verb in CLAIMED:
        if value is not None and value.strip() != "0":
            return Request(entry.dn, Stage.FAILED, mode, since, value.strip())
        if value is not None:
            return Request(entry.dn, Stage.OTHER, mode, since, value.strip())
        claim = claims.parse(entry.values(claims.ATTRIBUTE))
        if claim is None:
            return Request(entry.dn, Stage.IN_PROGRESS, mode, since, owner="no owner recorded (an older daemon)")
        return Request(entry.dn, Stage.IN_PROGRESS, mode, claim.at, owner=f"{claim.host} process {claim.pid}")
    if value is not None and value.strip() != "0":
        return Request(entry.dn, Stage.REFUSED, mode, since, value.strip())
    if verb not in TRANSITIONS:
        known = verb in {done for _, done in TRANSITIONS.values()}
        return Request(entry.dn, Stage.OTHER if known else Stage.PENDING, mode, since)
    try:
        due = parse_execution_date(entry.get(DATE))
    except ValueError:
        due = None                   # refused by the daemon when it gets to it
    if due is not None and due > today:
        return Request(entry.dn, Stage.DATED, mode, since, due=due)
    return Request(entry.dn, Stage.PENDING, mode, since)
