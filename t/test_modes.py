"""MODUS = LDAP and MODUS = combined: hooks from what the daemon saw before, nothing written back."""
from __future__ import annotations

import pytest

from pathlib import Path

from helpers import DaemonProcess, assert_done

pytestmark = pytest.mark.with_workers

UID = "3723707"
# An account without the selfcare attributes (and so without their object class).
LDAP_ONLY = {"objectClass": ["account", "posixAccount", "shadowAccount", "sstBackup", "sstRelationship"],
             "sstProvisioningMode": None, "sstProvisioningState": None, "sstProvisioningExecutionDate": None}


def _quota_of(host, uid: str) -> list[str]:
    return [c[2] for c in host.quota_calls() if c[1] == uid]


def test_ldap_mode_adds_modifies_and_writes_nothing_back(host, directory):
    host.set("Service", MODUS="LDAP")
    daemon = DaemonProcess(host).start()
    dn = directory.add(UID, **LDAP_ONLY)
    daemon.wait_for(rf"uid={UID},.*: add done in .* \(nothing is written back in LDAP mode\)")
    before = directory.get(dn)
    assert host.home(UID).is_dir() and host.rsnapshot_config(UID).is_file()
    assert not [name for name in before if name.lower().startswith("sstprovisioning")]
    directory.modify(dn, sstQuota="2048")
    daemon.wait_for(rf"uid={UID},.*: modify done in")
    assert _quota_of(host, UID) == ["1048576", "2"]
    after = directory.get(dn)
    assert after["entryCSN"] != before["entryCSN"]
    assert not [name for name in after if name.lower().startswith("sstprovisioning")]
    assert daemon.stop() == 0


def test_ldap_mode_after_a_restart_calls_hooks_only_for_what_changed(host, directory):
    host.set("Service", MODUS="LDAP")
    uids = [str(3723700 + i) for i in range(5)]
    first = DaemonProcess(host).start()
    dns = [directory.add(uid, **LDAP_ONLY) for uid in uids]
    for uid in uids:
        first.wait_for(rf"uid={uid},.*: add done in")
    assert first.stop() == 0
    directory.modify(dns[1], sstQuota="4096")         # one change while the daemon is down
    for name in ("second.log", "third.log"):
        daemon = DaemonProcess(host, log_name=name).start()
        if name == "second.log":
            daemon.wait_for(rf"uid={uids[1]},.*: modify done in")
        assert daemon.stop() == 0
        assert daemon.count(r": add done in") == 0
        assert daemon.count(r": modify done in") == (1 if name == "second.log" else 0)
    assert sorted(c[1] for c in host.quota_calls()) == sorted(uids + [uids[1]])


def test_ldap_mode_without_the_cookie_file_refreshes_but_adds_nothing_again(host, directory):
    host.set("Service", MODUS="LDAP")
    first = DaemonProcess(host).start()
    dn = directory.add(UID, **LDAP_ONLY)
    first.wait_for(rf"uid={UID},.*: add done in")
    assert first.stop() == 0
    host.layout.cookie.unlink()                       # an operator's way of forcing a full refresh
    second = DaemonProcess(host, log_name="second.log").start()
    second.wait_for(r"disagree: a full refresh")
    assert second.stop() == 0
    assert second.count(r": (add|modify) done in") == 0 and len(host.quota_calls()) == 1
    assert directory.get(dn)["uid"] == UID


def test_a_failed_hook_is_retried_on_the_next_change_and_at_the_next_start(host, directory):
    host.set("Service", MODUS="LDAP")
    host.fail_quota(6)
    daemon = DaemonProcess(host).start()
    dn = directory.add(UID, **LDAP_ONLY)
    daemon.wait_for(rf"ERROR uid={UID},.*: add failed with return value 6 .*; tried again on the next change "
                    rf"of the entry or at the next start")
    directory.modify(dn, cn="Another Name")           # a change: add is tried again (it never worked)
    daemon.wait_for(rf"ERROR uid={UID},.*: add failed with return value 6", count=2)
    assert daemon.stop() == 0
    Path(f"{host.layout.setquota_log}.exit").unlink()  # the operator fixes the host and restarts
    again = DaemonProcess(host, log_name="again.log").start()
    again.wait_for(rf"uid={UID},.*: trying add again, which failed before the restart")
    again.wait_for(rf"uid={UID},.*: add done in")
    assert again.stop() == 0
    third = DaemonProcess(host, log_name="third.log").start()
    assert third.stop() == 0
    assert third.count(r"trying .* again") == 0 and len(host.quota_calls()) == 3


def test_combined_mode_decides_per_entry(host, directory):
    host.set("Service", MODUS="combined")
    daemon = DaemonProcess(host).start()
    selfcare = directory.add(UID)
    plain = directory.add("3723708", **LDAP_ONLY)
    assert_done(directory.wait_mode(selfcare, "added"), "added")
    daemon.wait_for(r"uid=3723708,.*: add done in .* \(nothing is written back in LDAP mode\)")
    assert "sstProvisioningMode" not in directory.get(plain)
    # A removal of the plain entry calls delete; the selfcare one is not guessed.
    directory.conn.delete_s(plain)
    daemon.wait_for(r"uid=3723708,.*: delete done for the removed entry")
    directory.conn.delete_s(selfcare)
    daemon.wait_for(rf"WARNING uid={UID},.*: removed from the directory without a delete request")
    assert host.home(UID).is_dir() and not host.account_dir("3723708").exists()
    assert daemon.stop() == 0
