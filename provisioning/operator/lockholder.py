"""Who holds the daemon's lock, and since when: read from /proc, without touching the lock.

Taking the lock to test it, even for a moment, could make a daemon that
starts at that moment exit with "already running"; /proc/locks shows the
flock holders without that risk.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from provisioning.base.files import UnsafeFile, open_private


@dataclass(frozen=True)
class Holder:
    running: bool
    pid: int | None = None
    since: dt.datetime | None = None
    note: str = ""

    def describe(self) -> str:
        if not self.running:
            return f"not running{f' ({self.note})' if self.note else ''}"
        when = f" since {self.since:%Y-%m-%d %H:%M:%S} UTC" if self.since else ""
        return f"running as process {self.pid}{when}"


def holder(lock: Path, proc: Path = Path("/proc")) -> Holder:
    """Whether a daemon holds ``lock`` (its PID file), its PID and start time."""
    try:
        fd = open_private(lock, os.O_RDONLY)
    except FileNotFoundError:
        return Holder(False, note=f"no lock file {lock}: never started here")
    except (UnsafeFile, OSError) as err:
        return Holder(False, note=f"cannot read the lock file: {err}")
    try:
        info = os.fstat(fd)
        written = os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)
    locker = _flock_holder(info, proc)
    if locker is None:
        if written:
            return Holder(False, note=f"{lock} names process {written}, which holds no lock: it ended "
                                      f"without cleaning up (killed?)")
        return Holder(False, note="stopped cleanly")
    return Holder(True, locker, started(locker, proc))


def _flock_holder(info: os.stat_result, proc: Path) -> int | None:
    """The PID holding a FLOCK on the file ``info`` describes, from /proc/locks."""
    try:
        table = (proc / "locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":      # "->" lines are waiters
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(inode) == info.st_ino and int(major, 16) == os.major(info.st_dev)
                    and int(minor, 16) == os.minor(info.st_dev)):
                return int(fields[4])
        except ValueError:
            continue
    return None


def started(pid: int, proc: Path = Path("/proc")) -> dt.datetime | None:
    """When process ``pid`` started (from /proc/PID/stat and the boot time), in UTC."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        boot = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    # The command name (field 2) may contain blanks and parentheses: count from its end.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        ticks = int(fields[19])        # field 22, starttime, in clock ticks after boot
    except (IndexError, ValueError):
        return None
    return dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), dt.timezone.utc)
