"""A long refresh says how it goes: entries seen, requests done, rate, at most every INTERVAL."""
from __future__ import annotations

import datetime as dt
import re
import shlex
from pathlib import Path

import ldap
import ldap.modlist

from provisioning.observe.progress import Progress
from provisioning.sandbox.layout import write_recorder

from helpers import DaemonProcess, account_attrs, wait_until

ENTRIES = 300
REQUESTS = 10
INTERVAL = 0.25
LINE = re.compile(r"^(\S+ \S+) INFO synchronising (\S+) \(full refresh\): (\d+) entries seen, (\d+) requests done, "
                  r"(\d+) failed or refused, (\d+) entries/s, (\d+) s so far$", re.MULTILINE)
SUMMARY = re.compile(r"INFO synchronised (\S+): (\d+) entries in ([\d.]+) s \((\d+) entries/s\), (\d+) requests "
                     r"done, (\d+) failed or refused$", re.MULTILINE)


def _fill(directory, count: int, requests: int) -> None:
    """``count`` accounts, the first ``requests`` of them open add requests, the others done long ago."""
    conn = directory.conn
    msgids = []
    for n in range(count):
        uid = str(3800000 + n)
        done = {} if n < requests else {"sstProvisioningMode": "added",
                                        "sstProvisioningState": "20260101T000000Z"}
        attrs = account_attrs(uid, directory.backup_root, **done)
        msgids.append(conn.add(directory.dn(uid), ldap.modlist.addModlist(attrs)))
        if len(msgids) == 50:            # slapd takes only so many operations in flight per connection
            for msgid in msgids:
                conn.result(msgid)
            msgids = []
    for msgid in msgids:
        conn.result(msgid)


def _hold_setquota(host) -> Path:
    """setquota waits while the returned file exists: the refresh lasts until the test lets it end.

    The refresh is over only once its requests are done, so the test, not the machine's speed, decides
    how long it lasts (slapd 2.6 served a refresh of 3,000 entries in 0.6 s: faster than an interval).
    """
    hold = host.root / "hold"
    hold.touch()
    wait = host.root / "bin/wait-for-release"
    wait.write_text(f"#!/bin/sh\nwhile [ -e {shlex.quote(str(hold))} ]; do sleep 0.02; done\n")
    wait.chmod(0o755)
    write_recorder(host.layout.setquota, host.layout.setquota_log, then=str(wait))
    return hold


def test_a_long_refresh_logs_its_progress(host, directory):
    _fill(directory, ENTRIES, REQUESTS)
    hold = _hold_setquota(host)
    # Workers: the main loop goes on (and ticks) while the held requests wait.
    host.set("Service", WORKERS=4)
    daemon = DaemonProcess(host, "--once", env={"PROVISIONING_PROGRESS_INTERVAL": str(INTERVAL)}).start(
        wait_ready=False)
    try:
        wait_until(lambda: len(LINE.findall(daemon.text())) >= 3, "three progress lines", timeout=60)
    finally:
        hold.unlink()
    assert daemon.wait_exit(timeout=120) == 0, daemon.text()[-3000:]
    text = daemon.text()
    lines = LINE.findall(text)
    seen = [int(line[2]) for line in lines]
    done = [int(line[3]) for line in lines]
    assert all(base == host.subtree for _, base, *_ in lines)
    assert seen == sorted(seen) and seen[0] > 0                  # counts never go back
    assert done == sorted(done) and done[-1] < REQUESTS          # the requests were held
    # At most one line per interval (log times have milliseconds).
    times = [dt.datetime.strptime(line[0], "%Y-%m-%d %H:%M:%S,%f") for line in lines]
    assert all((b - a).total_seconds() >= INTERVAL - 0.002 for a, b in zip(times, times[1:]))
    [summary] = SUMMARY.findall(text)
    assert summary[0] == host.subtree
    assert int(summary[1]) >= ENTRIES                           # the accounts, and the subtree's own entry
    assert int(summary[4]) == REQUESTS and int(summary[5]) == 0
    assert int(summary[3]) > 0


def test_a_short_refresh_logs_no_progress(host, directory):
    directory.add("3723707")
    daemon = DaemonProcess(host, "--once").start(wait_ready=False)
    assert daemon.wait_exit() == 0
    assert "entries seen" not in daemon.text() and "synchronised " not in daemon.text()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_spaced_and_counted(caplog):
    clock = FakeClock()
    progress = Progress("ou=accounts,dc=x\nforged", interval=5, clock=clock)
    caplog.set_level("INFO", logger="provisioning.observe.progress")
    progress.start(full=False)
    for _ in range(40):
        progress.entries += 1
        clock.now += 0.25                # 10 s of entries at 4/s
        progress.tick()
    progress.completed(True)
    progress.completed(False)
    progress.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == [
        "synchronising ou=accounts,dc=x\\nforged: 20 entries seen, 0 requests done, 0 failed or refused, "
        "4 entries/s, 5 s so far",
        "synchronising ou=accounts,dc=x\\nforged: 40 entries seen, 0 requests done, 0 failed or refused, "
        "4 entries/s, 10 s so far"]
    assert messages[2] == ("synchronised ou=accounts,dc=x\\nforged: 40 entries in 10.0 s (4 entries/s), "
                           "1 requests done, 1 failed or refused")
    progress.tick()
    assert len(caplog.records) == 3      # over: no more lines
