"""The daemon end to end: a real process, a real slapd with syncprov, the selfcare protocol."""
from __future__ import annotations

import pytest

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

from helpers import DaemonProcess, assert_done, processes, wait_until

pytestmark = pytest.mark.with_workers

UID = "3723707"


def test_add_is_claimed_worked_and_answered(host, directory, daemon):
    dn = directory.add(UID)
    entry = directory.wait_mode(dn, "added")
    assert_done(entry, "added")
    assert entry["sstProvisioningExecutionDate"] == "0"
    daemon.wait_for(rf"uid={UID},.*: add request claimed \(sstProvisioningMode: add -> adding\)")
    daemon.wait_for(rf"uid={UID},.*: add done in .* \(sstProvisioningMode: added, sstProvisioningState: \d{{8}}T\d{{6}}Z")
    stamp = dt.datetime.strptime(entry["sstProvisioningState"], "%Y%m%dT%H%M%SZ")
    assert abs(dt.datetime.utcnow() - stamp) < dt.timedelta(minutes=2)   # UTC, not local time
    assert host.quota_calls() == [["-u", UID, "1048576", "1048576", "0", "0", "/"]]


def test_the_command_guard_runs_before_the_first_request(host, daemon):
    """Started with the daemon, not by its first command (whose request would wait for its start-up)."""
    daemon.wait_for(r"initial synchronisation of .* done")
    assert host.chroot_calls() == [] and host.quota_calls() == []
    wait_until(lambda: _guard_of(daemon.proc.pid) is not None, "the daemon's command guard")


def _guard_of(pid: int) -> int | None:
    """The pid of the command guard whose token names the daemon ``pid``."""
    return next((p.pid for p in processes() if any(b"provisioning.transport.commandguard" in a for a in p.argv)
                 and any(a.startswith(f"{pid}-".encode()) for a in p.argv)), None)


def test_a_command_finds_no_descriptor_of_the_daemon_open(host, directory, tmp_path):
    """Commands start by posix_spawn, which closes nothing: every descriptor of the daemon (LDAP
    connections, the store, logs, the walks' folders) must be close-on-exec."""
    found = tmp_path / "descriptors"
    command = tmp_path / "setquota"
    # Python holds the script itself open while it runs: that one is not the daemon's.
    command.write_text(f"#!{sys.executable}\nimport os, sys\nfds = []\nfor fd in range(3, 1024):\n"
                       "    try:\n        fds.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
                       "    except OSError:\n        pass\n"
                       f"open({str(found)!r}, 'a').write(repr([f for f in fds if f != sys.argv[0]]) + '\\n')\n")
    command.chmod(0o755)
    host.set("Backup", SET_QUOTA_CMD=command)
    daemon = DaemonProcess(host).start()
    try:
        for uid in (UID, "3723708"):
            assert_done(directory.wait_mode(directory.add(uid), "added"), "added")
    finally:
        assert daemon.stop() == 0
    assert found.read_text().splitlines() == ["[]"] * 2


def test_own_writes_come_back_but_trigger_nothing(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    # The claim and the outcome both come back through the stream.
    daemon.wait_for(rf"uid={UID},.*: echo of our own write", count=2)
    directory.add("3723708")    # a later request proves the stream moved past the echoes
    directory.wait_mode(directory.dn("3723708"), "added")
    assert [c[1] for c in host.quota_calls()] == [UID, "3723708"]
    assert daemon.count(rf"uid={UID},.*: add request claimed") == 1


def test_modify_and_delete_follow_the_protocol(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.request(dn, "modify", sstQuota="2048")
    assert_done(directory.wait_mode(dn, "modified"), "modified")
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")
    assert host.quota_calls()[-2:] == [["-u", UID, "2", "2", "0", "0", "/"], ["-u", UID, "0", "0", "0", "0", "/"]]


def test_request_made_while_the_daemon_is_down_is_done_after_it_starts(host, directory):
    dn = directory.add(UID)
    daemon = DaemonProcess(host).start()
    try:
        assert_done(directory.wait_mode(dn, "added"), "added")
    finally:
        assert daemon.stop() == 0


def test_after_a_restart_no_finished_request_is_done_again(host, directory):
    first = DaemonProcess(host).start()
    done = [directory.add(uid) for uid in ("3723707", "3723708")]
    for dn in done:
        directory.wait_mode(dn, "added")
    assert first.stop() == 0
    assert host.layout.cookie.read_text().startswith("rid=001,")

    second = DaemonProcess(host, log_name="daemon2.log").start()
    later = directory.add("3723709")
    directory.wait_mode(later, "added")
    assert second.stop() == 0
    assert sorted(c[1] for c in host.quota_calls()) == ["3723707", "3723708", "3723709"]
    assert len(host.chroot_calls()) == 3


def test_after_a_crash_no_finished_request_is_done_again(host, directory):
    """SIGKILL: no chance to write the cookie at exit; the entries' state still says done."""
    first = DaemonProcess(host).start()
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    first.kill()
    second = DaemonProcess(host, log_name="daemon2.log").start()
    later = directory.add("3723708")
    directory.wait_mode(later, "added")
    assert second.stop() == 0
    assert [c[1] for c in host.quota_calls()] == [UID, "3723708"]


def test_the_cookie_file_holds_the_servers_cookie(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    daemon.wait_for(rf"uid={UID},.*: echo of our own write", count=2)   # the outcome came back
    assert daemon.stop() == 0
    cookie = host.layout.cookie.read_text().strip()
    # rid and the CSN, without the provider's sid= (see cookie.merge_cookies)
    assert re.fullmatch(r"rid=001,csn=\d{14}\.\d{6}Z#[0-9a-f]{6}#[0-9a-f]{3}#[0-9a-f]{6}", cookie)
    entry_csn = directory.get(dn)["entryCSN"]
    assert cookie.endswith(entry_csn)        # it covers our last write back
    assert not list(host.layout.cookie.parent.glob(".*tmp*"))


def test_delete_while_active_is_refused_once_and_not_retried(host, directory, daemon):
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.request(dn, "delete")                        # sstIsActive is still TRUE
    entry = directory.wait_return_value(dn, 101)
    assert entry["sstProvisioningMode"] == "delete" and entry["sstProvisioningState"] == "0"
    daemon.wait_for(rf"ERROR uid={UID},.*: request refused with return value 101: delete requested while "
                    r"sstIsActive is TRUE")
    daemon.wait_for(rf"uid={UID},.*: echo of our own write", count=3)   # claim, outcome, refusal
    directory.add("3723708")                               # a later event: the stream went on
    directory.wait_mode(directory.dn("3723708"), "added")
    assert daemon.count(rf"uid={UID},.*: request refused") == 1
    # A later write makes it a fresh request, which now succeeds.
    directory.request(dn, "delete", sstIsActive="FALSE")
    assert_done(directory.wait_mode(dn, "deleted"), "deleted")


def test_unknown_mode_is_refused(host, directory, daemon):
    dn = directory.add(UID, sstProvisioningMode="frobnicate")
    entry = directory.wait_return_value(dn, 100)
    assert entry["sstProvisioningMode"] == "frobnicate"
    daemon.wait_for(rf'uid={UID},.*: request refused with return value 100: unknown sstProvisioningMode "frobnicate"')
    assert host.quota_calls() == []


def test_invalid_execution_date_is_refused(host, directory, daemon):
    dn = directory.add(UID, sstProvisioningExecutionDate="20261340")
    directory.wait_return_value(dn, 102)
    daemon.wait_for(rf"uid={UID},.*: request refused with return value 102: .*20261340.* is not a valid date")
    assert host.quota_calls() == []


def test_a_request_dated_tomorrow_is_not_done_today(host, directory, daemon):
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")
    dn = directory.add(UID, sstProvisioningExecutionDate=tomorrow)
    daemon.wait_for(rf"uid={UID},.*: add requested for {tomorrow}; left until that day")
    directory.add("3723708")                        # the stream went on past it
    directory.wait_mode(directory.dn("3723708"), "added")
    entry = directory.get(dn)
    assert entry["sstProvisioningMode"] == "add" and entry["sstProvisioningState"] == "0"
    assert "sstProvisioningReturnValue" not in entry
    assert [c[1] for c in host.quota_calls()] == ["3723708"]


def test_a_request_dated_today_is_done(host, directory, daemon):
    today = dt.date.today().strftime("%Y%m%d")
    dn = directory.add(UID, sstProvisioningExecutionDate=today)
    assert_done(directory.wait_mode(dn, "added"), "added")


def test_a_failed_request_keeps_its_claim_and_is_retried_when_requested_again(host, directory, daemon):
    host.fail_quota(3)
    dn = directory.add(UID)
    entry = directory.wait_return_value(dn, 6)
    assert entry["sstProvisioningMode"] == "adding" and entry["sstProvisioningState"] == "0"
    daemon.wait_for(rf"ERROR uid={UID},.*: add failed with return value 6 .*; sstProvisioningMode stays adding")
    (host.layout.root / "setquota.calls.exit").unlink()
    directory.request(dn, "add")
    entry = directory.wait_mode(dn, "added")
    assert_done(entry, "added")         # the claim removed the old return value, the outcome wrote 0


def test_already_running_daemon_exits_with_code_5(host, daemon):
    second = DaemonProcess(host, log_name="second.log").start(wait_ready=False)
    assert second.wait_exit() == 5
    assert "already running" in second.text()


def test_ldap_unreachable_exits_with_code_4_after_the_configured_attempts(host):
    host.set("Database", SERVER="ldap://127.0.0.1:1/")
    host.set_global("Global", SLEEP=0.1, ATTEMPTS=3)
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 4
    # The first failure and the last are logged; in between the log says at
    # most once a minute that it is still waiting, not once per attempt.
    assert daemon.count(r"attempt 1 of 3 to reach LDAP failed") == 1
    assert daemon.count(r"attempt 2 of 3 to reach LDAP failed") == 0
    assert daemon.count(r"attempt 3 of 3 to reach LDAP failed") == 1
    assert "giving up: no LDAP server answered after 3 attempt(s)" in daemon.text()


def test_several_servers_are_tried_in_order(host, slapd, directory):
    host.set("Database", SERVER=f"ldap://127.0.0.1:1/ {slapd.ldap_uri}")
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        directory.wait_mode(dn, "added")
        assert f"connected to {slapd.ldap_uri}" in daemon.text()
    finally:
        assert daemon.stop() == 0


def test_a_wrong_password_is_a_configuration_error(host):
    host.set("Database", ADMIN_PASSWORD="not-the-password")
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3
    assert "refused the bind as cn=Manager" in daemon.text()


def test_the_password_never_shows_in_the_log(host, slapd, directory):
    host.set("Database", SERVER=f"ldap://127.0.0.1:1/ {slapd.ldap_uri}")
    daemon = DaemonProcess(host).start()
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    assert daemon.stop() == 0
    assert slapd.root_pw not in daemon.text()
    assert slapd.root_pw not in " ".join(daemon.command())


def test_check_passes_against_a_reachable_directory(host):
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config),
                             "-g", str(host.global_config), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "check passed" in result.stdout
    assert not host.layout.cookie.exists()      # --check does not start the daemon


def test_check_fails_when_the_subtree_is_missing(host):
    host.set("Database", SERVICE_SUBTREE="ou=nowhere,dc=stoney-cloud,dc=org")
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config),
                             "-g", str(host.global_config), "--check"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "ou=nowhere,dc=stoney-cloud,dc=org does not exist" in result.stdout + result.stderr


def test_sigterm_stops_cleanly_with_code_0(host, directory):
    daemon = DaemonProcess(host).start()
    assert daemon.stop() == 0
    assert "stopped Backup/Rsnapshot provisioning daemon" in daemon.text()
    assert host.layout.cookie.read_text().startswith("rid=001")


def test_many_requests_are_each_done_once(host, directory, daemon):
    uids = [str(3724000 + i) for i in range(30)]
    dns = [directory.add(uid) for uid in uids]
    for dn in dns:
        assert_done(directory.wait_mode(dn, "added"), "added")
    assert sorted(c[1] for c in host.quota_calls()) == uids


def test_dry_run_changes_nothing_in_ldap_or_on_the_host(host, directory):
    dn = directory.add(UID)
    daemon = DaemonProcess(host, "--dry-run").start()
    daemon.wait_for(rf"DRY-RUN: would modify uid={UID},.*: sstProvisioningMode=added")
    assert daemon.stop() == 0
    entry = directory.get(dn)
    assert entry["sstProvisioningMode"] == "add" and "sstProvisioningReturnValue" not in entry
    text = daemon.text()
    assert "DRY-RUN: would modify" in text and "sstProvisioningMode=adding" in text
    assert re.search(r"DRY-RUN: would run: \S+create-chroot \S+/chroot /home/3723707 3723707 3723707 3723707", text)
    assert re.search(r"DRY-RUN: would run: \S+setquota -u 3723707 1048576 1048576 0 0 /", text)
    assert re.search(r"DRY-RUN: would write \d+ bytes to \S+rsnapshot.conf.3723707", text)
    assert host.quota_calls() == [] and host.chroot_calls() == []
    assert not any(host.layout.rsnapshot_dir.iterdir())
    assert not any(host.layout.backup_root.iterdir())
    assert not host.layout.cookie.exists()


def test_ldapi_socket(host, slapd, directory):
    host.set("Database", SERVER=slapd.ldapi_uri)
    daemon = DaemonProcess(host).start()
    try:
        assert_done(directory.wait_mode(directory.add(UID), "added"), "added")
    finally:
        assert daemon.stop() == 0


def test_starttls_with_a_certificate_the_configured_ca_signed(host, slapd, directory):
    host.set("Database", START_TLS=1, CA_FILE=slapd.cafile)
    daemon = DaemonProcess(host).start()
    try:
        assert_done(directory.wait_mode(directory.add(UID), "added"), "added")
    finally:
        assert daemon.stop() == 0


def test_a_certificate_no_trusted_ca_signed_is_refused(host):
    host.set("Database", START_TLS=1)           # the system's CAs do not know the test CA
    host.set_global("Global", SLEEP=0.1, ATTEMPTS=2)
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 4
    assert "if the TLS handshake failed: the server certificate must be signed by a CA in the system's CA store" \
        in daemon.text()
