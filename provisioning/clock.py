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


def generalized_time(value: str | None) -> dt.datetime | None:
    """An LDAP GeneralizedTime such as 20261127120000Z, in UTC; None when absent or unreadable."""
    if not value:
        return None
    try:
        return dt.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
