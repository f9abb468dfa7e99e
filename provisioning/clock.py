"""Time as the daemon sees it; tests replace it to cross midnight on demand."""
from __future__ import annotations

import datetime as dt


class Clock:
    """Wall clock: UTC for timestamps, local date for execution dates."""

    def utcnow(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def today(self) -> dt.date:
        return dt.date.today()


def utc_stamp(moment: dt.datetime) -> str:
    """The sstProvisioningState form of a moment: ``YYYYMMDDThhmmssZ``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
