"""Crashes, restarts and company: nothing lost, nothing done twice."""
from __future__ import annotations

import pytest

from provisioning.sandbox.layout import REPO, write_recorder
from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from helpers import DaemonProcess, Directory, Host, assert_done, wait_until

pytestmark = pytest.mark.with_workers

UID = "3723707"


def _blocking_chroot(host: Host) -> None:
    """CREATE_CHROOT_CMD that waits for a "release" file before it creates the home."""
    inner = host.layout.root / "bin/create-home-when-released"
    release = host.layout.root / "release"
    inner.write_text(f"""#!/bin/sh
while [ ! -e {release} ]; do sleep 0.02; done
exec {REPO / 'bin/prov-backup-create-home'} "$@"
""")
    inner.chmod(0o755)
    write_recorder(host.chroot_cmd, host.chroot_log, then=str(inner))


def test_a_crash_in_the_middle_of_the_work_loses_nothing(host, directory):
    _blocking_chroot(host)
    first = DaemonProcess(host).start()
    dn = directory.add(UID)
    # setquota runs beside the chroot script: both started before the crash.
    wait_until(lambda: host.chroot_calls() and host.quota_calls(), "the plugin to start its work")
    first.kill_all()                               # daemon and its command die mid-add
    entry = directory.get(dn)
    assert entry["sstProvisioningMode"] == "adding" and "sstProvisioningReturnValue" not in entry
    cookie = host.layout.cookie.read_text() if host.layout.cookie.exists() else ""
    assert not cookie.endswith(entry["entryCSN"])  # the claim was never acknowledged

    (host.layout.root / "release").touch()
    second = DaemonProcess(host, log_name="daemon2.log").start()
    try:
        assert_done(directory.wait_mode(dn, "added"), "added")
        second.wait_for(rf"uid={UID},.*: resuming add: adding without an outcome, claimed by .* which no longer runs")
    finally:
        assert second.stop() == 0
    assert host.home(UID).is_dir()
    assert host.rsnapshot_config(UID).is_file()
    # The quota set beside the interrupted script is set again (the same limit) by the resumed request.
    assert [c[1] for c in host.quota_calls()] == [UID, UID]


def test_the_daemon_rides_out_a_slapd_restart(tmp_path):
    server = StoneySlapd(rundir=str(tmp_path))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE)
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        daemon = DaemonProcess(host).start()
        before = directory.add("3723707")
        directory.wait_mode(before, "added")

        server.terminate()
        server.wait()
        daemon.wait_for(r"lost the LDAP connection")
        server.resume()
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        after = directory.add("3723708")
        assert_done(directory.wait_mode(after, "added"), "added")
        daemon.wait_for(r"connected to ldap://", count=2)
        assert daemon.stop() == 0
        assert sorted(c[1] for c in host.quota_calls()) == ["3723707", "3723708"]
    finally:
        server.stop()


def test_a_request_written_while_slapd_is_away_from_us_is_done(tmp_path):
    server = StoneySlapd(rundir=str(tmp_path))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE)
        daemon = DaemonProcess(host).start()
        server.terminate()
        server.wait()
        daemon.wait_for(r"attempt 1 of 50 to reach LDAP failed")
        server.resume()
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        dn = directory.add(UID)
        assert_done(directory.wait_mode(dn, "added"), "added")
        assert daemon.stop() == 0
    finally:
        server.stop()


@pytest.mark.parametrize("accounts", [20])
def test_two_daemons_on_one_subtree_never_take_the_same_request(host, directory, accounts):
    # A second daemon on the same host and subtree, with a cookie (and so a lock) of its own.
    twin = Host(host.layout.root.parent / "twin", host.slapd, host.subtree)
    twin.service = {section: dict(keys) for section, keys in host.service.items()}
    twin.set("Database", COOKIE_FILE=twin.layout.cookie)
    one, two = DaemonProcess(host).start(), DaemonProcess(twin).start()
    try:
        uids = [str(3725000 + i) for i in range(accounts)]
        for uid in uids:
            directory.add(uid)
        for uid in uids:
            assert_done(directory.wait_mode(directory.dn(uid), "added"), "added")
    finally:
        assert one.stop() == 0 and two.stop() == 0
    done_by = sorted(c[1] for c in host.quota_calls())
    assert done_by == uids                       # each exactly once, by one daemon or the other
    claims = one.count(r": \w+ request claimed \(") + two.count(r": \w+ request claimed \(")
    assert claims == accounts
