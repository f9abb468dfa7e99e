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

The report of 100,000 users is megabytes, more than the transport keeps of
a command's output (a bounded tail): it is run and read where the files
are, through ``Transport.call`` (auditcalls.quotas), and only the limits
travel. Standard library, Python 3.7+ (the gateway's helper loads it).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess

# "#<uidNumber>  <flags>  <used> <soft> <hard> ...": flags are two of - and +.
LINE = re.compile(r"^#?(?P<id>[0-9]+)\s+[-+]{2}\s+(?P<used>[0-9]+)\s+(?P<soft>[0-9]+)\s+(?P<hard>[0-9]+)(\s|$)")
# A report larger than this is not read (some 300 bytes a user: 3 million users).
REPORT_MAX = 1 << 30
TIMEOUT = 600.0


class Limit(tuple):
    """One user's block limits, in 1 KiB blocks (0: none): (soft, hard)."""

    __slots__ = ()

    def __new__(cls, soft: int, hard: int) -> "Limit":
        return super().__new__(cls, (soft, hard))

    @property
    def soft(self) -> int:
        return self[0]

    @property
    def hard(self) -> int:
        return self[1]


class QuotaReport:
    """The users' limits by uidNumber, or why they could not be read (``limits`` None then)."""

    def __init__(self, limits: dict | None = None, why: str = "") -> None:
        self.limits = limits
        self.why = why

    @property
    def checked(self) -> bool:
        return self.limits is not None


def report_argv(cmd: str, mountpoint: str) -> list:
    return [cmd, "-u", "-v", "-n", "-p", mountpoint]


def parse(text: str) -> dict:
    """{uidNumber: Limit} from repquota's text (lines that are no user's are skipped)."""
    found = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            found[int(match.group("id"))] = Limit(int(match.group("soft")), int(match.group("hard")))
    return found


def run(cmd: str, mountpoint: str, timeout: float = TIMEOUT) -> dict:
    """Run the report once: {"limits": {uidNumber: [soft, hard]}} or {"why": reason}; never raises for the command.

    Its own session, so that nothing it starts outlives a timeout.
    """
    if not cmd:
        return {"why": "QUOTA_REPORT_CMD is empty"}
    try:
        process = subprocess.Popen(report_argv(cmd, mountpoint), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True, env={"LC_ALL": "C",
                                   "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except OSError as err:
        return {"why": "%s cannot be run: %s" % (cmd, err)}
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"why": "%s did not end within %g s" % (cmd, timeout)}
    if process.returncode != 0:
        said = " / ".join(line.strip() for line in err.decode("utf-8", "replace").splitlines() if line.strip())
        return {"why": said or "%s exited %d" % (cmd, process.returncode)}
    if len(out) > REPORT_MAX:
        return {"why": "%s printed more than %d bytes" % (cmd, REPORT_MAX)}
    return {"limits": {str(k): list(v) for k, v in parse(out.decode("utf-8", "replace")).items()}}


def of(answer: dict) -> QuotaReport:
    """The QuotaReport of what ``run`` answered (through Transport.call: JSON values)."""
    if "limits" not in answer:
        return QuotaReport(None, answer.get("why", "no answer"))
    return QuotaReport({int(k): Limit(v[0], v[1]) for k, v in answer["limits"].items()})
