"""Entries that leave the directory, known by entryUUID only: acted on with the last known entry."""
from __future__ import annotations

import pytest

import re
from pathlib import Path

from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from faults import PauseAt
from helpers import DaemonProcess, Directory, Host, assert_done

pytestmark = pytest.mark.with_workers

UID = "3723707"
# An account without the selfcare attributes (and so without their object class).
LDAP_ONLY = {"objectClass": ["account", "posixAccount", "shadowAccount", "sstBackup", "sstRelationship"],
             "sstProvisioningMode": None, "sstProvisioningState": None, "sstProvisioningExecutionDate": None}


def _archived(host: Host, uid: str) -> list:
    archive = host.layout.backup_root / "archive"
    return sorted(p.name for p in archive.glob(f"{uid}-*")) if archive.exists() else []


def _deleted(host: Host, uid: str) -> bool:
    """The delete hook ran: configuration gone, quota lifted, data archived."""
    return (not host.rsnapshot_config(uid).exists() and ["-u", uid, "0", "0", "0", "0", "/"] in host.quota_calls()
            and len(_archived(host, uid)) == 1 and not host.account_dir(uid).exists())


def _provisioned(host: Host, directory: Directory, uid: str, **attrs) -> str:
    daemon = DaemonProcess(host, log_name=f"provision-{uid}.log").start()
    dn = directory.add(uid, **attrs)
    directory.wait_mode(dn, "added")
    assert daemon.stop() == 0
    return dn


def test_a_delete_request_removed_back_to_back_with_its_entry_is_done_once(host, directory, tmp_path):
    """The wiki's steps 3 and 4 loaded back to back: the entry goes while its delete is in hand."""
    (tmp_path / "stand-ins").mkdir()
    dn = _provisioned(host, directory, UID)
    pause = PauseAt(tmp_path / "stand-ins", "setquota")
    host.set("Backup", SET_QUOTA_CMD=pause.command)
    daemon = DaemonProcess(host).start()
    directory.request(dn, "delete", sstIsActive="FALSE")
    pause.wait_paused()                               # the delete is in hand: quota being lifted
    directory.conn.delete_s(dn)                       # step 4 right behind step 3
    pause.release()
    daemon.wait_for(rf"uid={UID},.*: removed after its delete request was done; nothing to do")
    assert not host.rsnapshot_config(UID).exists() and len(_archived(host, UID)) == 1
    assert [c[1:] for c in pause.call_args()] == [[UID, "0", "0", "0", "0", "/"]]   # once
    assert daemon.stop() == 0


def test_an_entry_removed_while_down_after_its_delete_failed_is_deleted_at_start(host, directory, daemon):
    """The daemon saw the delete request (it failed); the entry was removed while it was down."""
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    host.fail_quota(6)
    directory.request(dn, "delete", sstIsActive="FALSE")
    directory.wait_return_value(dn, 6)
    assert daemon.stop() == 0
    Path(f"{host.layout.setquota_log}.exit").unlink()
    directory.conn.delete_s(dn)
    again = DaemonProcess(host, log_name="again.log").start()
    again.wait_for(rf"uid={UID},.*: removed from the directory while its delete request was open: "
                   rf"deleting it with the last known entry")
    again.wait_for(rf"uid={UID},.*: delete done for the removed entry")
    assert _deleted(host, UID)
    assert again.stop() == 0
    third = DaemonProcess(host, log_name="third.log").start()       # once: not again at the next start
    assert third.stop() == 0
    assert len(_archived(host, UID)) == 1 and third.count("delete done") == 0


def test_a_delete_request_the_daemon_never_saw_is_not_guessed(host, directory):
    """Requested and removed while the daemon was down: it only knows the account as added."""
    dn = _provisioned(host, directory, UID)
    directory.request(dn, "delete", sstIsActive="FALSE")
    directory.conn.delete_s(dn)
    daemon = DaemonProcess(host).start()
    daemon.wait_for(rf"WARNING uid={UID},.*: removed from the directory without a delete request "
                    rf"\(last sstProvisioningMode: added, .*\); its data is kept")
    assert host.home(UID).is_dir() and host.rsnapshot_config(UID).is_file()
    assert daemon.stop() == 0


def test_an_entry_whose_delete_was_done_needs_nothing_when_removed(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    calls = len(host.quota_calls())
    directory.conn.delete_s(dn)
    daemon.wait_for(rf"uid={UID},.*: removed after its delete request was done; nothing to do")
    assert len(host.quota_calls()) == calls
    assert "WARNING" not in "".join(line for line in daemon.text().splitlines() if "removed" in line)


def test_an_entry_removed_without_a_delete_request_keeps_its_data(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    calls = len(host.quota_calls())
    directory.conn.delete_s(dn)
    daemon.wait_for(rf"WARNING uid={UID},.*: removed from the directory without a delete request "
                    rf"\(last sstProvisioningMode: added, .*\); its data is kept")
    assert host.rsnapshot_config(UID).is_file() and host.home(UID).is_dir()
    assert len(host.quota_calls()) == calls


def test_an_active_entry_removed_with_a_delete_request_keeps_its_data(host, directory, daemon):
    """sstIsActive TRUE: the request was refused, so deleting would be a guess."""
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.request(dn, "delete")                   # still active: refused with 101
    directory.wait_return_value(dn, 101)
    directory.conn.delete_s(dn)
    daemon.wait_for(rf"WARNING uid={UID},.*: removed with a delete request that cannot be done "
                    rf"\(delete requested while sstIsActive is TRUE.*\); its data is kept")
    assert host.home(UID).is_dir() and host.rsnapshot_config(UID).is_file()


def test_removals_while_down_call_delete_once_each_in_ldap_mode(host, directory):
    host.set("Service", MODUS="LDAP")
    uids = ["3723701", "3723702", "3723703"]
    first = DaemonProcess(host).start()
    dns = [directory.add(uid, **LDAP_ONLY) for uid in uids]
    for uid in uids:
        first.wait_for(rf"uid={uid},.*: add done in")
    assert first.stop() == 0
    for dn in dns[:2]:
        directory.conn.delete_s(dn)
    second = DaemonProcess(host, log_name="second.log").start()
    for uid in uids[:2]:
        second.wait_for(rf"uid={uid},{re.escape(directory.subtree)}: delete done for the removed entry")
        assert _deleted(host, uid)
    assert second.stop() == 0
    # The delete hook had the last known entry: its uidNumber reached setquota.
    lifted = [c[1] for c in host.quota_calls() if c[2:] == ["0", "0", "0", "0", "/"]]
    assert sorted(lifted) == uids[:2]
    assert second.count("delete done for the removed entry") == 2
    assert host.rsnapshot_config(uids[2]).is_file()


def test_a_reconnect_does_not_cry_wolf(tmp_path):
    server = StoneySlapd(rundir=str(tmp_path / "slapd"))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE)
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        daemon = DaemonProcess(host).start()
        dn = directory.add(UID)
        directory.wait_mode(dn, "added")
        directory.request(dn, "delete", sstIsActive="FALSE")
        directory.wait_mode(dn, "deleted")
        directory.conn.delete_s(dn)
        daemon.wait_for(r"removed after its delete request was done")
        server.restart()
        daemon.wait_for(r"connected to ldap://", count=2)
        daemon.wait_for(r"synchronisation of .* done after reconnecting")
        assert daemon.stop() == 0
        removal_lines = [line for line in daemon.text().splitlines() if "removed" in line or "deletion" in line]
        assert not [line for line in removal_lines if "WARNING" in line or "ERROR" in line], removal_lines
    finally:
        server.stop()


class SmallSessionLog(StoneySlapd):
    """A provider whose session log is too short for the daemon's cookie: the present phase."""

    slapd_conf_template = StoneySlapd.slapd_conf_template.replace("olcSpSessionlog: 10000", "olcSpSessionlog: 1")


def test_removals_only_implied_by_the_present_phase_are_found(tmp_path):
    server = SmallSessionLog(rundir=str(tmp_path / "slapd"))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE)
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        uids = ["3723701", "3723702", "3723703", "3723704"]
        first = DaemonProcess(host).start()
        dns = [directory.add(uid) for uid in uids]
        for dn in dns:
            directory.wait_mode(dn, "added")
        for dn in dns[:3]:
            directory.request(dn, "delete", sstIsActive="FALSE")
        for dn in dns[:3]:
            directory.wait_mode(dn, "deleted")
        assert first.stop() == 0
        for dn in dns[:3]:                            # more than the session log holds
            directory.conn.delete_s(dn)
        directory.request(dns[3], "modify", sstQuota="2048")
        second = DaemonProcess(host, log_name="second.log").start()
        directory.wait_mode(dns[3], "modified")
        for uid in uids[:3]:
            second.wait_for(rf"uid={uid},.*: removed after its delete request was done; nothing to do")
        assert "left the subtree" not in second.text()
        assert second.stop() == 0
        assert second.count(r"removed") == 3          # the unchanged entry was not taken for removed
    finally:
        server.stop()
