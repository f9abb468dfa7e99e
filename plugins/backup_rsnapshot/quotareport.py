"""The quotas the kernel holds, read back with QUOTA_REPORT_CMD (repquota), for the audit.

One call for the whole filesystem: ``repquota -u -v -n -p MOUNTPOINT``
(users, every user the quota file knows, numeric ids, grace times as
numbers). Its lines look like::

    #3723707  --    1024 1048576 1048576      0      5     0     0      0

the uidNumber, the flags, then used, soft and hard block limits (1 KiB
blocks, as setquota sets them). Where quotas are off (the kernel has no
quota support, or MOUNTPOINT has none enabled), repquota fails: the audit
then says "quota not checked" with repquota's reason, and nothing about
quotas counts as drift.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from provisioning.api import Transport

# "#<uidNumber>  <flags>  <used> <soft> <hard> ...": flags are two of - and +.
LINE = re.compile(r"^#?(?P<id>[0-9]+)\s+[-+]{2}\s+(?P<used>[0-9]+)\s+(?P<soft>[0-9]+)\s+(?P<hard>[0-9]+)(\s|$)")


@dataclass(frozen=True)
class Limit:
    """One user's block limits, in 1 KiB blocks (0: none)."""

    soft: int
    hard: int


@dataclass
class QuotaReport:
    """The users' limits by uidNumber, or why they could not be read (``limits`` None then)."""

    limits: dict[int, Limit] | None = None
    why: str = ""

    @property
    def checked(self) -> bool:
        return self.limits is not None


def report_argv(cmd: str, mountpoint: str) -> list[str]:
    return [cmd, "-u", "-v", "-n", "-p", mountpoint]


def read(cmd: str, mountpoint: str, transport: Transport) -> QuotaReport:
    """Run QUOTA_REPORT_CMD once; the limits, or why not (never raises for a failed command)."""
    if not cmd:
        return QuotaReport(None, "QUOTA_REPORT_CMD is empty")
    try:
        result = transport.run(report_argv(cmd, mountpoint))
    except OSError as err:
        return QuotaReport(None, f"{cmd} cannot be run: {err}")
    if not result.ok:
        said = " / ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        return QuotaReport(None, said or result.describe())
    return QuotaReport(parse(result.stdout))


def parse(text: str) -> dict[int, Limit]:
    """The limits in repquota's text (lines that are no user's are skipped)."""
    found = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            found[int(match["id"])] = Limit(int(match["soft"]), int(match["hard"]))
    return found
