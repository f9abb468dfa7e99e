"""provisioning-daemon status: daemon, lag, requests by stage; a monitoring plugin's exit codes."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time

import pytest

from provisioning.config import loader as config
from provisioning.operator import retry
from provisioning.operator import status
from provisioning.sandbox.slapd import BACKUP_BASE

from helpers import DaemonProcess, wait_until

UID = "3723707"
PERFDATA = re.compile(r" \| lag=(U|\d+)s;300;1800;0 pending=\d+;;;0 in_progress=\d+;;;0 failed=\d+;1;10;0 "
                      r"dated=\d+;;;0 oldest=\d+s;900;3600;0 held=\d+;;1;0 other_hosts=\d+;;;0$")


def _status(host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", "status", "-c", str(host.config),
                           "-g", str(host.global_config), *args], capture_output=True, text=True, timeout=60)


def _json(host, *args: str) -> tuple[int, dict]:
    result = _status(host, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def _held_setquota(host):
    """setquota that waits for a "go" file: the request stays claimed meanwhile."""
    from provisioning.sandbox.layout import write_recorder
    go = host.layout.root / "go"
    held = host.layout.root / "bin/held-setquota"
    held.write_text(f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.02; done\n")
    held.chmod(0o755)
    write_recorder(host.layout.setquota, host.layout.setquota_log, then=str(held))
    return go


def test_a_daemon_that_never_ran_is_critical(host):
    result = _status(host)
    assert result.returncode == 2, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("PROVISIONING CRITICAL - Backup/Rsnapshot: daemon not running; lag unknown (no cookie "
                            "yet: the daemon never finished a synchronisation); 0 pending, 0 in progress, 0 failed, "
                            "0 dated | lag=Us;")
    assert "daemon: not running (no lock file" in result.stdout


def _settled(host, entry: dict) -> None:
    """Wait until the daemon's cookie covers ``entry`` as it is (the echo of its own last write)."""
    wait_until(lambda: host.layout.cookie.exists() and entry["entryCSN"] in host.layout.cookie.read_text(),
               "the daemon's cookie to pass its last write")


def test_a_running_daemon_with_nothing_to_do_is_ok(host, directory, daemon):
    _settled(host, directory.wait_mode(directory.add(UID), "added"))
    result = _status(host)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"PROVISIONING OK - Backup/Rsnapshot: running as process {daemon.proc.pid} since ")
    assert PERFDATA.search(lines[0]), lines[0]
    assert "lag: 0 s: every change of the subtree is covered by the cookie" in result.stdout
    assert "Backup/Rsnapshot: rsnapshot configurations 1, account directories 1, archived accounts 0" in lines
    code, data = _json(host)
    assert code == 0 and data["state"] == "OK" and data["daemon"]["pid"] == daemon.proc.pid
    since = dt.datetime.fromisoformat(data["daemon"]["since"])
    assert abs((dt.datetime.now(dt.timezone.utc) - since).total_seconds()) < 120
    assert data["counts"] == {"pending": 0, "in_progress": 0, "failed": 0, "refused": 0, "dated": 0, "other": 0}


def test_a_failed_request_is_a_warning_with_its_meaning(host, directory, daemon):
    host.fail_quota(1)
    dn = directory.add(UID)
    directory.wait_return_value(dn, 6)
    result = _status(host)
    assert result.returncode == 1, result.stdout
    assert result.stdout.startswith("PROVISIONING WARNING - Backup/Rsnapshot: 1 failed or refused; 0 pending, "
                                    "0 in progress, 1 failed, 0 dated |")
    assert re.search(rf"^  {re.escape(dn)}: adding, return value 6 \(CANNOT_SET_QUOTA: SET_QUOTA_CMD failed: check "
                     rf"user quota on MOUNTPOINT\) since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", result.stdout, re.M)
    code, data = _json(host, "--crit-failed", "1")
    assert code == 2 and data["state"] == "CRITICAL"
    failed = data["requests"]["failed"]
    assert [(f["dn"], f["mode"], f["return_value"]) for f in failed] == [(dn, "adding", "6")]
    assert failed[0]["meaning"].startswith("CANNOT_SET_QUOTA")


def test_requests_by_stage_and_only_this_hosts(host, directory):
    # The daemon is stopped: nothing moves while status looks.
    go = _held_setquota(host)
    running = DaemonProcess(host).start()
    try:
        working = directory.add(UID)
        directory.wait_mode(working, "adding")
        code, data = _json(host)
        assert data["counts"]["in_progress"] == 1
        claim = data["requests"]["in_progress"][0]
        assert claim["dn"] == working and claim["mode"] == "adding"
        assert re.fullmatch(rf"\S+ process {running.proc.pid}", claim["owner"])
    finally:
        go.touch()
        directory.wait_mode(working, "added")
        assert running.stop() == 0
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")
    pending = directory.add("3723708")
    dated = directory.add("3723709", sstProvisioningExecutionDate=tomorrow)
    refused = directory.add("3723710", sstProvisioningMode="delete", sstProvisioningReturnValue="101")
    other = directory.add("3723711", host="backup-02.example.org")   # another host's: not ours to count
    code, data = _json(host)
    assert code == 2                                                 # the daemon does not run
    assert data["counts"] == {"pending": 1, "in_progress": 0, "failed": 0, "refused": 1, "dated": 1, "other": 0}
    # ... but named, with both values: a misspelt host must not look like silence
    assert data["other_hosts"] == [{"dn": other, "why": "its host is 'backup-02.example.org', this daemon's "
                                                        "[Global] ENVIRONMENT is 'sandbox'"}]
    assert [r["dn"] for r in data["requests"]["pending"]] == [pending]
    assert data["requests"]["dated"][0]["dn"] == dated and data["requests"]["dated"][0]["due"] == \
        (dt.date.today() + dt.timedelta(days=1)).isoformat()
    assert data["requests"]["refused"][0]["meaning"].startswith("DELETE_WHILE_ACTIVE")
    assert data["summary"].startswith("Backup/Rsnapshot: daemon not running; 1 failed or refused; ")
    assert data["daemon"]["note"] == "stopped cleanly"


def test_a_request_waiting_too_long_is_critical(host, directory, daemon):
    go = _held_setquota(host)
    dn = directory.add(UID)
    directory.wait_mode(dn, "adding")
    time.sleep(1.1)          # the claim's time has a resolution of one second
    try:
        code, data = _json(host, "--warn-age", "0.5", "--crit-age", "1")
    finally:
        go.touch()
    assert code == 2 and "a request waits for" in data["summary"], data["summary"]


def test_lag_counts_only_changes_of_the_subtree(host, directory, slapd):
    first = DaemonProcess(host).start()
    dn = directory.add(UID)
    _settled(host, directory.wait_mode(dn, "added"))
    assert first.stop() == 0
    # A change elsewhere in the database moves contextCSN; the daemon has missed nothing.
    conn = slapd.connect()
    conn.add_s(f"ou=elsewhere-{os.getpid()}-{time.time_ns()},{BACKUP_BASE}",
               [("objectClass", [b"organizationalUnit"]), ("ou", [b"elsewhere"])])
    code, data = _json(host)
    assert data["lag"]["seconds"] == 0 and data["lag"]["unseen_entries"] == 0, data["lag"]
    assert data["lag"]["context_csn"] > data["lag"]["cookie_csn"]
    # A change in the subtree while the daemon is down: behind by the time in between.
    time.sleep(0.05)
    directory.modify(dn, sstQuota="2048")
    code, data = _json(host, "--warn-lag", "0.01", "--crit-lag", "3600")
    assert data["lag"]["unseen_entries"] == 1 and data["lag"]["seconds"] > 0.04, data["lag"]
    assert "s behind" in data["summary"]
    conn.unbind_s()


def test_a_killed_daemon_is_named_as_such(host):
    running = DaemonProcess(host).start()
    running.kill()
    result = _status(host)
    assert result.returncode == 2
    assert re.search(rf"daemon: not running \(\S+\.lock names process {running.proc.pid}, which holds no lock: it "
                     rf"ended without cleaning up \(killed\?\)\)", result.stdout)


def test_an_unreachable_directory_is_unknown(host):
    host.set("Database", SERVER="ldap://127.0.0.1:1", TIMEOUT=1)
    result = _status(host)
    assert result.returncode == 3
    assert result.stdout.startswith("PROVISIONING UNKNOWN - Backup/Rsnapshot: cannot ask the directory: ")
    # What the directory would say is not known: no "pending: 0", and U in the performance data.
    lines = result.stdout.splitlines()
    assert not [line for line in lines if re.match(r"(pending|in progress|failed|dated for later): ", line)], lines
    assert any(line.startswith("requests: unknown, the directory cannot be asked (") for line in lines), lines
    assert " pending=U;;;0 in_progress=U;;;0 failed=U;1;10;0 dated=U;;;0 oldest=Us;" in lines[0]
    code, data = _json(host)
    assert code == 3 and data["state"] == "UNKNOWN" and data["ldap_error"] and data["counts"] is None


def _with_reader_gone(argv: list[str]) -> subprocess.CompletedProcess:
    """``argv | head -0``: the reader of stdout has gone before the command writes."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    return subprocess.CompletedProcess(argv, proc.wait(60), "", stderr)


def test_a_reader_that_goes_away_leaves_the_state_and_no_traceback(host):
    host.set("Database", SERVER="ldap://127.0.0.1:1", TIMEOUT=1)
    result = _with_reader_gone([sys.executable, "-m", "provisioning", "status", "-c", str(host.config),
                                "-g", str(host.global_config)])
    assert result.returncode == 3 and result.stderr == "", result.stderr        # UNKNOWN, as it found
    listing = _with_reader_gone([sys.executable, "-m", "provisioning", "files"])
    assert listing.returncode == 141 and listing.stderr == "", listing.stderr


def test_an_invalid_configuration_is_unknown(host):
    host.set("Service", MODUS="mirror")
    result = _status(host)
    assert result.returncode == 3
    assert result.stdout.startswith(f"PROVISIONING UNKNOWN - {host.config}: 1 configuration problem(s)")


def test_a_dn_with_a_newline_cannot_forge_a_status_line(host, directory, daemon):
    forged = "1\nPROVISIONING OK - all fine | lag=0s"
    dn = directory.add(forged, uidNumber=UID, gidNumber=UID, homeDirectory=f"/nowhere/./{UID}")
    directory.wait_return_value(dn, 11)                 # the plugin refuses the uid
    result = _status(host)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("PROVISIONING")] == \
        [result.stdout.splitlines()[0]]
    assert "uid=1\\nPROVISIONING OK - all fine" in result.stdout
    raw = _status(host, "--json").stdout
    assert "PROVISIONING OK" not in "".join(line for line in raw.splitlines() if '"dn"' not in line)
    assert json.loads(raw)["requests"]["failed"][0]["dn"].startswith("uid=1\nPROVISIONING OK - all fine")


def test_ldap_mode_failures_come_from_the_store(host, directory):
    host.set("Service", MODUS="LDAP")
    host.fail_quota(1)
    running = DaemonProcess(host).start()
    try:
        directory.add(UID)
        running.wait_for(rf"uid={UID},.*: add failed with return value 6")
    finally:
        assert running.stop() == 0
    code, data = _json(host)
    assert data["requests"]["failed"][0]["dn"] == directory.dn(UID)
    assert data["requests"]["failed"][0]["mode"] == "add hook failed (LDAP mode)"


def test_status_changes_nothing(host, directory, daemon):
    _settled(host, directory.wait_mode(directory.add(UID), "added"))
    state = [host.layout.cookie, host.layout.cookie.with_name(host.layout.cookie.name + ".sqlite")]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in state]
    entry = directory.get(directory.dn(UID))
    for args in ((), ("--json",)):
        _status(host, *args)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in state] == before
    assert directory.get(directory.dn(UID))["entryCSN"] == entry["entryCSN"]
    assert daemon.proc.poll() is None                   # the lock was only looked at



def test_a_usage_error_is_unknown_not_critical(host):
    # argparse's 2 reads as CRITICAL to Icinga; a wrong command line says nothing about the daemon.
    result = _status(host, "--warn-lag", "soon")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("PROVISIONING UNKNOWN - argument --warn-lag: invalid float value: 'soon'")
    assert "usage: provisioning-daemon status" in result.stderr


def test_without_c_the_hosts_only_configuration_is_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "HOST_CONFIG_DIR", tmp_path)
    with pytest.raises(SystemExit) as none:
        status.parse_args([])
    assert none.value.code == 3
    assert f"PROVISIONING UNKNOWN - -c FILE is needed: there is none below {tmp_path}" in capsys.readouterr().out
    (tmp_path / "Backup").mkdir()
    only = tmp_path / "Backup/Rsnapshot.conf"
    only.write_text("")
    (tmp_path / "Global.conf").write_text("")                 # shared by every service: not one of them
    (tmp_path / "Backup/Rsnapshot.conf.template").write_text("")
    assert status.parse_args([]).config == str(only)
    assert retry.parse_args(["--failed"]).config == str(only)
    assert status.parse_args(["-c", "/elsewhere.conf"]).config == "/elsewhere.conf"
    (tmp_path / "Generic").mkdir()
    (tmp_path / "Generic/Exec.conf").write_text("")
    with pytest.raises(SystemExit) as several:
        status.parse_args([])
    assert several.value.code == 3
    assert f"there are 2: {only}, {tmp_path / 'Generic/Exec.conf'} below {tmp_path}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        retry.parse_args(["--failed"])
    assert usage.value.code == 2
