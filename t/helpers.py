"""Test helpers: what provisioning.testing and provisioning_backup_rsnapshot.testing offer, by their old names.

The helpers live in the installed package now, so that plugin authors, bench/
and these tests use the same ones; this module keeps the names the test files
import (Host, Directory, DaemonProcess(host, ...), ...).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ldap

from provisioning.sandbox.slapd import ACCOUNTS_BASE
from provisioning.testing import (  # noqa: F401 - re-exported for the test files
    DEADLINE, STAMP, as_user, assert_done, picture, wait_until,
)
from provisioning.testing import DaemonProcess as _DaemonProcess
from provisioning_backup_rsnapshot.testing import (  # noqa: F401 - re-exported for the test files
    BackupEntries as Directory, BackupHost as Host, account_attrs, home_directory,
)


class DaemonProcess(_DaemonProcess):
    """The daemon of one backup host (its configuration files, its folder).

    ``env``: variables added to this process's environment; ``debug``: run with -d.
    """

    def __init__(self, host: Host, *args: str, log_name: str = "daemon.log",
                 env: dict[str, str] | None = None, debug: bool = True) -> None:
        super().__init__(host.config, host.global_config, Path(host.layout.root), *args, log_name=log_name,
                         env={**os.environ, **env} if env else None, debug=debug)
        self.host = host


def modes(server) -> Counter:
    """How many accounts stand in each (sstProvisioningMode, has a return value) pair."""
    conn = server.connect()
    try:
        found = conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_ONELEVEL, "(uid=*)",
                              ["sstProvisioningMode", "sstProvisioningReturnValue"])
    finally:
        conn.unbind_s()
    return Counter((a["sstProvisioningMode"][0].decode(), "sstProvisioningReturnValue" in a) for _, a in found)


@dataclass(frozen=True)
class Process:
    """One process as /proc shows it: pid, parent, state letter (Z: a zombie), argv, comm."""
    pid: int
    ppid: int
    state: str
    argv: list[bytes]
    comm: str


def processes() -> Iterator[Process]:
    """Every process this test can read now; one that ends while it is read is skipped."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = process(int(name))
            if found is not None:
                yield found


def process(pid: int) -> Process | None:
    """Process ``pid`` as /proc shows it now, None if there is none."""
    try:
        comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition(" (")[2].rpartition(")")
        fields = rest.split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")     # a title set in place: padded
    except (OSError, IndexError):
        return None
    return Process(pid, int(fields[1]), fields[0], cmdline.split(b"\0") if cmdline else [], comm)


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting to be reaped."""
    found = process(pid)
    return found is None or found.state == "Z"
