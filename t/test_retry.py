"""provisioning-daemon retry: failed requests written anew, never over a newer change."""
from __future__ import annotations

import re
import subprocess
import sys

import ldap

from provisioning.backend.ldap import Directory, LdapSettings
from provisioning.operator.retry import write_anew
from provisioning.operator.returnvalues import meanings
from provisioning.runtime.startup import load_configuration

from helpers import assert_done

UID = "3723707"


def _retry(host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", "retry", "-c", str(host.config),
                           "-g", str(host.global_config), *args], capture_output=True, text=True, timeout=60)


def _fail(host, directory, uid: str) -> str:
    """An add that failed with return value 6 (setquota refused)."""
    dn = directory.add(uid)
    directory.wait_return_value(dn, 6)
    return dn


def test_a_failed_request_retried_by_the_command_is_done_by_the_running_daemon(host, directory, daemon):
    host.fail_quota(1)
    dn = _fail(host, directory, UID)
    (host.layout.root / "setquota.calls.exit").unlink()           # the operator fixed the cause
    result = _retry(host, dn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{dn}: retried: written anew: sstProvisioningMode adding -> add, return value 6 (CANNOT_SET_QUOTA: "
        f"SET_QUOTA_CMD failed: check user quota on MOUNTPOINT) removed"]
    assert_done(directory.wait_mode(dn, "added"), "added")
    assert [c[1] for c in host.quota_calls()] == [UID, UID]


def test_retry_failed_writes_every_failed_request_of_the_subtree_and_nothing_else(host, directory, daemon):
    done = directory.add("3723700")
    directory.wait_mode(done, "added")
    host.fail_quota(1)
    failed = [_fail(host, directory, uid) for uid in (UID, "3723708")]
    daemon.stop()
    refused = directory.add("3723709", sstProvisioningMode="delete")        # active: refused with 101
    directory.conn.modify_s(refused, [(ldap.MOD_REPLACE, "sstProvisioningReturnValue", [b"101"])])
    pending = directory.add("3723710")
    before = {dn: directory.get(dn)["entryCSN"] for dn in (done, refused, pending)}
    result = _retry(host, "--failed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(
        f"{dn}: retried: written anew: sstProvisioningMode adding -> add, return value 6 (CANNOT_SET_QUOTA: "
        f"SET_QUOTA_CMD failed: check user quota on MOUNTPOINT) removed" for dn in failed)
    for dn in failed:
        entry = directory.get(dn)
        assert (entry["sstProvisioningMode"], entry["sstProvisioningState"]) == ("add", "0")
        assert "sstProvisioningReturnValue" not in entry
    assert {dn: directory.get(dn)["entryCSN"] for dn in before} == before


def test_what_is_not_a_failed_request_is_left_alone_with_the_reason(host, directory, daemon):
    done = directory.add("3723700")
    directory.wait_mode(done, "added")
    daemon.stop()
    refused = directory.add("3723709", sstProvisioningMode="delete", sstProvisioningReturnValue="101")
    pending = directory.add("3723710")
    outside = f"uid=3723711,{host.subtree.split(',', 1)[1]}"     # a sibling subtree: not this daemon's
    missing = directory.dn("3723799")
    before = {dn: directory.get(dn)["entryCSN"] for dn in (done, refused, pending)}
    result = _retry(host, done, refused, pending, outside, missing)
    assert result.returncode == 6
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{done}: NOT retried: done (sstProvisioningMode: added, sstProvisioningState: ")
    assert lines[1] == (f"{refused}: NOT retried: refused with return value 101 (DELETE_WHILE_ACTIVE: delete "
                        f"requested while sstIsActive is not FALSE): fix the entry; that change makes it a new "
                        f"request")
    assert lines[2] == f"{pending}: NOT retried: already requested (add): the daemon has not done it yet"
    assert lines[3] == f"{outside}: NOT retried: not below SERVICE_SUBTREE {host.subtree}: not this daemon's entry"
    assert lines[4] == f"{missing}: NOT retried: no such entry"
    assert "5 of 5 request(s) not retried" in result.stderr
    assert {dn: directory.get(dn)["entryCSN"] for dn in before} == before


def test_a_request_in_progress_is_not_taken_from_its_daemon(host, directory):
    dn = directory.add(UID, sstProvisioningMode="adding",
                       sstProvisioningExecutionTime="claim: otherhost 4242 20260101T000000Z")
    result = _retry(host, dn)
    assert result.returncode == 6
    assert result.stdout.strip() == (f"{dn}: NOT retried: in progress (adding, claimed by otherhost process "
                                     f"4242): it has no outcome yet")
    assert directory.get(dn)["sstProvisioningMode"] == "adding"


def test_a_change_made_after_the_read_is_never_overwritten(host, directory, daemon):
    host.fail_quota(1)
    dn = _fail(host, directory, UID)
    daemon.stop()
    config, manager = load_configuration(host.config, str(host.global_config))
    conn = Directory(LdapSettings.from_config(config))
    conn.open()
    try:
        as_read = conn.read(dn)
        # The portal writes the entry between retry's read and its write.
        directory.request(dn, "delete", sstIsActive="FALSE")
        outcome = write_anew(conn, as_read, meanings(manager))
    finally:
        conn.close()
    assert not outcome.retried
    assert "changed since it was read" in outcome.message
    entry = directory.get(dn)
    assert (entry["sstProvisioningMode"], entry["sstIsActive"]) == ("delete", "FALSE")


def test_a_dry_run_writes_nothing(host, directory, daemon):
    host.fail_quota(1)
    dn = _fail(host, directory, UID)
    csn = directory.get(dn)["entryCSN"]
    result = _retry(host, "-r", dn)
    assert result.returncode == 0
    assert re.search(rf"DRY-RUN: would modify {re.escape(dn)}: sstProvisioningMode=add, sstProvisioningState=0, "
                     r"sstProvisioningReturnValue=\(removed\)", result.stdout)
    assert f"{dn}: retried: would be written anew (dry run): " in result.stdout
    assert directory.get(dn)["entryCSN"] == csn


def test_a_dn_with_a_newline_stays_on_its_line(host, directory):
    dn = directory.add("1\nforged: retried", uidNumber=UID, gidNumber=UID, homeDirectory=f"/nowhere/./{UID}",
                       sstProvisioningMode="adding", sstProvisioningReturnValue="11")
    result = _retry(host, dn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("uid=1\\nforged: retried,")


def test_nothing_named_is_a_usage_error(host):
    result = _retry(host)
    assert result.returncode == 2 and "name the entries (DN...) or give --failed" in result.stderr
