"""Dry-run takes no lock and writes no state, speaks in the conditional; --once exits after the refresh."""
from __future__ import annotations

import re
from pathlib import Path

from helpers import DaemonProcess, assert_done, wait_until

UID = "3723707"


def _state(host) -> dict[str, tuple[bytes, int] | None]:
    """Bytes and mtime of each state file (None when absent)."""
    out = {}
    for path in (host.layout.cookie, Path(f"{host.layout.cookie}.sqlite"), Path(f"{host.layout.cookie}.lock")):
        out[path.name] = (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
    return out


def test_a_dry_run_once_says_what_would_happen_and_changes_nothing(host, directory):
    dn = directory.add(UID)
    run = DaemonProcess(host, "-r", "--once").start(wait_ready=False)
    assert run.wait_exit() == 0, run.text()[-3000:]
    text = run.text()
    assert re.search(rf"uid={UID},.*: add request would be claimed \(sstProvisioningMode: add -> adding\)", text)
    assert re.search(rf"uid={UID},.*: home \S+/home/{UID} would be created", text)
    assert re.search(rf"uid={UID},.*: add: home \S+, quota 1073741824 bytes, \S+rsnapshot.conf.{UID} would be "
                     rf"written", text)
    assert re.search(rf"uid={UID},.*: add would be done in [0-9.]+ s \(sstProvisioningMode: added", text)
    assert "stopping after the first refresh (--once)" in text
    # Nothing in the past tense that did not happen.
    for claim in (r": \w+ request claimed \(", r"home \S+ created", r"add done in", r"(?<!would be) written$"):
        assert not re.search(claim, text, re.MULTILINE), claim
    assert directory.get(dn)["sstProvisioningMode"] == "add"
    assert _state(host) == {"Backup-Rsnapshot.cookie": None, "Backup-Rsnapshot.cookie.sqlite": None,
                            "Backup-Rsnapshot.cookie.lock": None}
    assert host.quota_calls() == [] and not any(host.layout.backup_root.iterdir())


def test_a_dry_run_runs_next_to_the_daemon_without_its_lock_and_state(host, directory, daemon):
    dn = directory.add(UID)
    assert_done(directory.wait_mode(dn, "added"), "added")
    directory.request(dn, "delete", sstIsActive="FALSE")
    final = directory.wait_mode(dn, "deleted")
    assert_done(final, "deleted")
    # The daemon is at rest once its cookie covers the echo of its last write.
    wait_until(lambda: host.layout.cookie.exists() and final["entryCSN"] in host.layout.cookie.read_text(),
               "the daemon's cookie to pass its last write")
    before = _state(host)
    # A second real daemon would exit with 5 here; a dry-run does not take the lock.
    run = DaemonProcess(host, "-r", "--once", log_name="dry.log").start(wait_ready=False)
    assert run.wait_exit() == 0, run.text()[-3000:]
    assert "in dry-run mode: no lock, no cookie, nothing changes" in run.text()
    assert "already running" not in run.text()
    assert _state(host) == before


def test_a_dry_run_of_a_delete_says_it_would_archive(host, directory):
    dn = directory.add(UID)
    once = DaemonProcess(host, "--once").start(wait_ready=False)
    assert once.wait_exit() == 0
    assert_done(directory.get(dn), "added")
    directory.request(dn, "delete", sstIsActive="FALSE")
    run = DaemonProcess(host, "-r", "--once", log_name="dry.log").start(wait_ready=False)
    assert run.wait_exit() == 0, run.text()[-3000:]
    text = run.text()
    assert re.search(rf"uid={UID},.*: delete: \S+/{UID} would be archived as \S+/archive/{UID}-\S+, "
                     rf"\S+rsnapshot.conf.{UID} would be removed, quota would be lifted", text)
    assert re.search(rf"uid={UID},.*: delete would be done in", text)
    assert host.account_dir(UID).is_dir() and host.rsnapshot_config(UID).exists()
    assert directory.get(dn)["sstProvisioningMode"] == "delete"


def test_once_does_the_open_requests_and_exits(host, directory):
    dns = [directory.add(uid) for uid in (UID, "3723708")]
    once = DaemonProcess(host, "--once").start(wait_ready=False)
    assert once.wait_exit() == 0, once.text()[-3000:]
    for dn in dns:
        assert_done(directory.get(dn), "added")
    assert "stopped Backup/Rsnapshot provisioning daemon" in once.text()
    assert host.layout.cookie.read_text().startswith("rid=")
    assert Path(f"{host.layout.cookie}.lock").read_text() == ""     # released
