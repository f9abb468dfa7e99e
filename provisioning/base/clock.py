"""Time as the daemon sees it; tests replace it to cross midnight on demand."""
from __future__ import annotations

import datetime as dt
import time


class Clock:
    """Wall clock: UTC for timestamps, local date for execution dates, and a monotonic one for spans."""

    def utcnow(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def today(self) -> dt.date:
        return dt.date.today()

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never jumps when the wall clock is set."""
        return time.monotonic()


class DirectoryTime:
    """The directory's time, as far as this daemon can vouch for it.

    Every entryCSN and modifyTimestamp the daemon reads is a moment of the
    directory's clock that has passed: the directory's time now is at least
    the newest of them plus the time that went by here since it was read
    (measured on the monotonic clock, which runs at the same rate as the
    directory's). That lower bound is this daemon's "directory now". It never
    runs ahead of the directory, whatever the local wall clock says, so a span
    measured with it (say, a claim's age) is never longer than the directory's
    own. Until the directory has shown a time, the local wall clock stands in.

    The providers of a mirror-mode pair must keep their clocks in step (their
    replication already orders changes by the CSN's time): one "directory".
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._anchor: tuple[dt.datetime, float] | None = None    # (directory time, monotonic then)

    def saw(self, moment: dt.datetime | None) -> None:
        """A directory timestamp just read (an entry's entryCSN or modifyTimestamp)."""
        if moment is not None and (self._anchor is None or moment > self.now()):
            self._anchor = (moment, self.clock.monotonic())

    def saw_entry(self, entry_csn: str | None, modify_timestamp: str | None = None) -> dt.datetime | None:
        """``saw`` the time of an entry's last change; that time (None when it shows none)."""
        moment = generalized_time(entry_csn) or generalized_time(modify_timestamp)
        self.saw(moment)
        return moment

    def now(self) -> dt.datetime:
        if self._anchor is None:
            return self.clock.utcnow()
        moment, then = self._anchor
        return moment + dt.timedelta(seconds=max(0.0, self.clock.monotonic() - then))


def utc_stamp(moment: dt.datetime) -> str:
    """The sstProvisioningState form of a moment: ``YYYYMMDDThhmmssZ``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def generalized_time(value: str | None) -> dt.datetime | None:
    """An LDAP GeneralizedTime such as 20261127120000Z, in UTC; None when absent or unreadable.

    An entryCSN (``20261127120000.123456Z#000000#000#000000``) gives its
    provider's time, to the second.
    """
    if not value:
        return None
    digits = value[:14]
    try:
        if len(digits) == 14 and digits.isascii() and digits.isdigit():
            # The form every server writes, read without strptime: three of these per request
            # in the main loop (the add, the claim and the outcome coming back), where
            # strptime cost about 7 % of the loop's time.
            return dt.datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                               int(digits[10:12]), int(digits[12:14]), tzinfo=dt.timezone.utc)
        return dt.datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
