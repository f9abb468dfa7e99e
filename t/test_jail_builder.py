"""CREATE_CHROOT_CMD through the daemon: the shipped builder in its process (or the gateway's helper),
an operator's own script as a command (the wiki's contract)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from provisioning.sandbox.layout import REPO, write_recorder

from helpers import DaemonProcess
from jailtest import UIDS, inode, jail, jails, provision, run_in, tool  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds jails and chroots into them: needs root")


@pytest.mark.parametrize("named", ["left out", "the installed script, through a link"])
def test_the_shipped_builder_runs_in_the_daemon_and_links_the_image(jails, directory, tmp_path, named):
    if named != "left out":
        elsewhere = tmp_path / "usr-local-bin"
        elsewhere.mkdir()
        (elsewhere / "prov-backup-create-chroot").symlink_to(Path(sys.executable).parent / "prov-backup-create-chroot")
        jails.set("Backup", CREATE_CHROOT_CMD=elsewhere / "prov-backup-create-chroot")
    with DaemonProcess(jails) as daemon:
        provision(directory)
        daemon.wait_for(r"is the shipped jail builder: it runs in the daemon")
        log = daemon.text()
    # No program per account: the builder is called, never run.
    assert "create-chroot /" not in "".join(line for line in log.splitlines() if " run: " in line)
    assert log.count("call: ") >= len(UIDS)
    rsync = "usr/bin/rsync"
    shared = {inode(jail(jails, uid) / "usr/bin/sh") for uid in UIDS}
    assert len(shared) == 1 and (jail(jails, UIDS[0]) / "usr/bin/sh").stat().st_nlink == len(UIDS) + 1
    assert not (jail(jails, UIDS[0]) / rsync).exists()              # JAIL_PROGRAMS: sh and the tool only
    assert run_in(jails, UIDS[1], "/bin/sh", "-c", "echo ok").stdout == "ok\n"
    assert (jails.home(UIDS[0]) / "incoming").stat().st_uid == int(UIDS[0])


def test_the_shipped_builder_runs_on_the_gateways_helper(jails, directory, sshd):
    jails.set("Service", TRANSPORTAPI="CLISSH")
    jails.set("Gateway", **sshd)
    with DaemonProcess(jails) as daemon:
        provision(directory, UIDS[:2])
        daemon.wait_for(r"gateway: call prov-backup-create-chroot .*\(on 127\.0\.0\.1\)", count=2)
        log = daemon.text()
    assert not [line for line in log.splitlines() if " run: " in line and "create-chroot" in line]
    assert inode(jail(jails, UIDS[0]) / "usr/bin/sh") == inode(jail(jails, UIDS[1]) / "usr/bin/sh")
    assert run_in(jails, UIDS[0], "/bin/sh", "-c", "echo ok").stdout == "ok\n"


def test_an_operators_own_script_still_runs_as_a_command(jails, directory):
    """CREATE_CHROOT_CMD naming another program runs it: the recorder, then the old copying builder."""
    write_recorder(jails.chroot_cmd, jails.chroot_log, then=str(REPO / "bin/prov-backup-create-chroot"))
    jails.set("Backup", CREATE_CHROOT_CMD=jails.chroot_cmd, JAIL_PROGRAMS="sh rsync")
    with DaemonProcess(jails) as daemon:
        provision(directory, UIDS[:2])
        daemon.wait_for(r"CREATE_CHROOT_CMD \S+/create-chroot runs as a command for every new home")
    assert sorted(call[0] for call in jails.chroot_calls()) == [str(jail(jails, uid)) for uid in UIDS[:2]]
    assert run_in(jails, UIDS[0], "/bin/sh", "-c", "rsync --version").returncode == 0
