"""State on disk and stops: a wrong cookie, a full or read-only state folder, Ctrl-C, a stop mid-command."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from provisioning.backend.cookie import covered
from provisioning.backend.ldap import DirectoryUnavailable
from provisioning.engine.daemon import Retry, with_retries

from faults import PauseAt
from helpers import DaemonProcess, assert_done, wait_until
from test_mail import Server, free_port

pytestmark = pytest.mark.with_workers

UID = "3723707"
FUTURE = "rid=001,sid=001,csn=20991231235959.000000Z#000000#001#000000"


def _store(host) -> Path:
    return Path(f"{host.layout.cookie}.sqlite")


def _set_cookie_everywhere(host, cookie: str) -> None:
    host.layout.cookie.write_text(cookie + "\n")
    with sqlite3.connect(_store(host)) as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('cookie', ?)", (cookie,))


# ------------------------------------------------------------------ cookie

def test_a_cookie_ahead_of_the_provider_means_a_full_refresh_not_a_deaf_daemon(host, directory):
    first = DaemonProcess(host).start()
    assert first.stop() == 0
    _set_cookie_everywhere(host, FUTURE)                # a foreign file, or a provider clock set back
    dn = directory.add(UID)
    daemon = DaemonProcess(host, log_name="second.log").start()
    daemon.wait_for(r"ERROR the cookie's CSN 20991231235959.* is newer than anything the provider has .*: "
                    r"refreshing from scratch")
    assert_done(directory.wait_mode(dn, "added"), "added")
    assert daemon.stop() == 0
    assert "20991231" not in host.layout.cookie.read_text()


def test_a_cookie_file_ahead_is_not_taken_as_handled_either(host, directory):
    """Only the file (no store yet, as after an upgrade): nothing it claims to cover is skipped."""
    host.set("Service", MODUS="LDAP")
    dn = directory.add(UID, objectClass=["account", "posixAccount", "shadowAccount", "sstBackup",
                                         "sstRelationship"],
                       sstProvisioningMode=None, sstProvisioningState=None, sstProvisioningExecutionDate=None)
    host.layout.cookie.write_text(FUTURE + "\n")
    daemon = DaemonProcess(host).start()
    daemon.wait_for(r"COOKIE_FILE: the cookie's CSN .* is newer than anything the provider has")
    daemon.wait_for(rf"uid={UID},.*: add done in")
    assert daemon.stop() == 0
    assert directory.get(dn)


@pytest.mark.parametrize("content, reason", [
    ("this is not a cookie\n", "not a sync cookie"),
    ("rid=001,csn=yesterday\n", "not a sync cookie"),
    (b"\xff\xfe\x00garbage", "not a sync cookie"),
])
def test_a_cookie_file_that_cannot_be_parsed_is_a_configuration_error(host, content, reason):
    path = host.layout.cookie
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3
    assert f"COOKIE_FILE {path}: {reason}" in daemon.text()
    assert "Traceback" not in daemon.text()


def test_a_cookie_file_that_cannot_be_read_is_a_configuration_error(host):
    host.layout.cookie.mkdir()                          # a folder where the file should be
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3
    assert f"COOKIE_FILE {host.layout.cookie}" in daemon.text() and "Traceback" not in daemon.text()


# ------------------------------------------------------------ state folder

@pytest.fixture
def small_state_folder(host):
    """The folder of cookie, store and lock on a tmpfs of its own (1 MiB), to fill or make read-only."""
    folder = host.layout.cookie.parent
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass                                            # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_a_full_state_folder_does_not_stop_provisioning_and_nothing_is_lost(host, directory, small_state_folder):
    daemon = DaemonProcess(host).start()
    first = directory.add(UID)
    directory.wait_mode(first, "added")
    on_disk = host.layout.cookie.read_text()
    filler = _fill(small_state_folder)
    dns = [directory.add(str(3723710 + i)) for i in range(20)]      # enough to need new store pages
    for dn in dns:
        assert_done(directory.wait_mode(dn, "added"), "added")
    daemon.wait_for(r"ERROR .*cannot write .*; the daemon goes on with its position in memory")
    assert daemon.proc.poll() is None
    assert host.layout.cookie.read_text() == on_disk    # never moved while it could not be written
    filler.unlink()
    daemon.wait_for(r"the state in \S+ is written again \(it could not be for [\d.]+ s\); nothing was lost")
    assert daemon.count(r"ERROR .*cannot write ") == 1             # said once, not per request
    assert daemon.stop() == 0
    again = DaemonProcess(host, log_name="again.log").start()     # the position on disk is right
    assert again.stop() == 0
    assert again.count(r": add done") == 0


# ------------------------------------------- state folder full or read-only at start

@pytest.fixture
def mail_server():
    server = Server(free_port())
    yield server
    server.stop()


def _mail_to(host, server: Server) -> None:
    host.set_global("Mail", SENDTO="ops@example.org", HOST="127.0.0.1", PORT=server.port, SSL="none",
                    WANTINFOMAIL=0)


def _cookie_text(host) -> str | None:
    path = host.layout.cookie
    return path.read_text() if path.exists() else None


def _leave_state(host, directory, how: str) -> str | None:
    """A daemon that provisioned UID and stopped, or was killed (SIGKILL), or none; COOKIE_FILE then."""
    if how == "nothing":
        return None
    daemon = DaemonProcess(host, log_name="first.log").start()
    entry = directory.wait_mode(directory.add(UID), "added")
    # COOKIE_FILE is written after the store: once it covers the outcome, so does the store.
    wait_until(lambda: covered(entry["entryCSN"], _cookie_text(host)), "COOKIE_FILE to cover the outcome")
    wal = Path(f"{_store(host)}-wal")
    if how == "killed":
        daemon.kill_all()
        assert wal.stat().st_size > 0                   # the newest transactions are in the log alone
    else:
        assert daemon.stop() == 0
        assert not wal.exists()
    return _cookie_text(host)


def _fill_with_dd(folder: Path) -> Path:
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4096"], capture_output=True, check=False)
    assert os.statvfs(folder).f_bavail == 0             # dd stopped at ENOSPC
    return filler


def _provisions_and_says_so_once(host, directory, daemon, mail_server, on_disk: str | None) -> str:
    dn = directory.add("3723708")
    assert_done(directory.wait_mode(dn, "added"), "added")
    daemon.wait_for(r"ERROR .*cannot .*; the daemon goes on with its position in memory and tries again")
    [mail] = mail_server.wait(1)
    assert mail.kind == "warning" and "cannot be written" in mail.message["Subject"]
    assert _cookie_text(host) == on_disk                # the position on disk did not move
    return dn


def _written_again_with_nothing_lost(host, daemon, mail_server, dn: str) -> None:
    daemon.wait_for(r"the state in \S+ is written again \(it could not be for [\d.]+ s\); nothing was lost")
    assert daemon.count(r"ERROR .*; the daemon goes on with its position in memory") == 1   # said once
    assert len(mail_server.received) == 1
    assert daemon.stop() == 0
    cookie = _cookie_text(host).strip()
    with sqlite3.connect(_store(host)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='cookie'").fetchone() == (cookie,)
        assert db.execute("SELECT count(*) FROM entries WHERE dn=?", (dn,)).fetchone() == (1,)
    again = DaemonProcess(host, log_name="again.log").start()
    assert again.stop() == 0
    assert again.count(r": add done") == 0 and "disagree" not in again.text()


@pytest.mark.parametrize("before", ["stopped", "killed", "nothing"])
def test_a_state_folder_full_at_start_does_not_stop_provisioning(host, directory, small_state_folder,
                                                                mail_server, before):
    """Issue 18 item 3: with a store (and a -wal a killed daemon left), or none yet; filled with dd."""
    _mail_to(host, mail_server)
    on_disk = _leave_state(host, directory, before)
    filler = _fill_with_dd(small_state_folder)
    daemon = DaemonProcess(host, log_name="full.log").start()
    if before == "killed":
        assert "disagree" not in daemon.text()          # the log's transactions were read: same cookie
    dn = _provisions_and_says_so_once(host, directory, daemon, mail_server, on_disk)
    filler.unlink()
    _written_again_with_nothing_lost(host, daemon, mail_server, dn)


@pytest.mark.parametrize("before", ["stopped", "killed"])
def test_a_state_folder_read_only_at_start_does_not_stop_provisioning(host, directory, small_state_folder,
                                                                     mail_server, before):
    _mail_to(host, mail_server)
    on_disk = _leave_state(host, directory, before)
    subprocess.run(["mount", "-o", "remount,ro", str(small_state_folder)], check=True)
    daemon = DaemonProcess(host, log_name="ro.log").start()
    if before == "killed":
        assert "disagree" not in daemon.text()
    dn = _provisions_and_says_so_once(host, directory, daemon, mail_server, on_disk)
    subprocess.run(["mount", "-o", "remount,rw", str(small_state_folder)], check=True)
    _written_again_with_nothing_lost(host, daemon, mail_server, dn)


LDAP_ONLY = dict(objectClass=["account", "posixAccount", "shadowAccount", "sstBackup", "sstRelationship"],
                 sstProvisioningMode=None, sstProvisioningState=None, sstProvisioningExecutionDate=None)


@pytest.mark.parametrize("fault, before", [("read-only", "stopped"), ("full", "killed")])
def test_what_the_store_knew_is_still_known_while_it_cannot_be_written(host, directory, small_state_folder,
                                                                       fault, before):
    """LDAP mode: a removal named by entryUUID alone is acted on with the entry the store knew before."""
    host.set("Service", MODUS="LDAP")
    first = DaemonProcess(host, log_name="first.log").start()
    known = directory.add(UID, **LDAP_ONLY)
    first.wait_for(rf"uid={UID},.*: add done in")
    csn = directory.get(known)["entryCSN"]
    wait_until(lambda: covered(csn, _cookie_text(host)), "COOKIE_FILE to cover the add")
    first.kill_all() if before == "killed" else first.stop()
    if fault == "full":
        filler = _fill_with_dd(small_state_folder)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_state_folder)], check=True)
    daemon = DaemonProcess(host).start()
    directory.add("3723708", **LDAP_ONLY)               # something to write: the writes fail
    daemon.wait_for(r"uid=3723708,.*: add done in")
    daemon.wait_for(r"ERROR .*; the daemon goes on with its position in memory and tries again")
    directory.conn.delete_s(known)
    daemon.wait_for(rf"uid={UID},.*: delete done for the removed entry")
    if fault == "full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_state_folder)], check=True)
    daemon.wait_for(r"the state in \S+ is written again")
    assert daemon.stop() == 0


def test_a_lock_file_a_read_only_folder_cannot_take_still_keeps_a_second_daemon_off(host, directory,
                                                                                   small_state_folder):
    subprocess.run(["mount", "-o", "remount,ro", str(small_state_folder)], check=True)
    daemon = DaemonProcess(host).start()
    daemon.wait_for(rf"WARNING {re.escape(str(host.layout.cookie))}.lock cannot be created \(Read-only file "
                    rf"system\): locking its folder instead")
    assert_done(directory.wait_mode(directory.add(UID), "added"), "added")
    second = DaemonProcess(host, log_name="second.log").start(wait_ready=False)
    assert second.wait_exit() == 5
    subprocess.run(["mount", "-o", "remount,rw", str(small_state_folder)], check=True)
    # Now it can make the lock file and lock it: the folder's lock still keeps it off.
    third = DaemonProcess(host, log_name="third.log").start(wait_ready=False)
    assert third.wait_exit() == 5
    assert "already running" in third.text()
    daemon.wait_for(r"the state in \S+ is written again")
    assert daemon.stop() == 0


# ---------------------------------------------------------------- stops

def test_ctrl_c_in_a_terminal_lets_the_command_in_hand_finish(host, directory, tmp_path):
    (tmp_path / "stand-ins").mkdir()
    pause = PauseAt(tmp_path / "stand-ins", "setquota")
    host.set("Backup", SET_QUOTA_CMD=pause.command)
    daemon = DaemonProcess(host).start()          # its own process group, as a shell's foreground job
    dn = directory.add(UID)
    pause.wait_paused()
    # The chroot script runs beside setquota: signal once it has started. A command still being
    # started is in the daemon's group for a moment and would get the signal too (docs/how-it-works.md, Stops).
    wait_until(host.chroot_calls, "the chroot script to start")
    os.killpg(daemon.proc.pid, signal.SIGINT)      # what Ctrl-C does: the whole foreground group
    pause.release()
    # The daemon stops by itself (it got the signal), after finishing the
    # entry in hand: its command never saw the signal, ran once and succeeded.
    assert daemon.wait_exit() == 0
    assert_done(directory.get(dn), "added")        # finished, not failed with 5
    assert [c[1] for c in pause.call_args()] == [UID]
    assert "stopped Backup/Rsnapshot provisioning daemon" in daemon.text()


def test_a_command_killed_by_the_stop_leaves_the_request_to_the_next_start(host, directory, tmp_path):
    (tmp_path / "stand-ins").mkdir()
    pause = PauseAt(tmp_path / "stand-ins", "setquota")
    host.set("Backup", SET_QUOTA_CMD=pause.command)
    daemon = DaemonProcess(host).start()
    dn = directory.add(UID)
    pause.wait_paused()
    command = _pid_of(str(pause.command))
    daemon.proc.send_signal(signal.SIGTERM)        # systemd's stop with KillMode=control-group:
    os.kill(command, signal.SIGTERM)               # the daemon and its command get SIGTERM
    assert daemon.wait_exit() == 0
    entry = directory.get(dn)
    assert entry["sstProvisioningMode"] == "adding" and "sstProvisioningReturnValue" not in entry
    assert daemon.count(rf"uid={UID},.*: add interrupted by the stop; it stays adding and is resumed") == 1
    pause.release()
    again = DaemonProcess(host, log_name="again.log").start()
    assert_done(directory.wait_mode(dn, "added"), "added")
    again.wait_for(rf"uid={UID},.*: resuming add")
    assert again.stop() == 0


def _pid_of(script: str) -> int:
    def find() -> int | None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if len(cmdline) > 1 and cmdline[1].decode(errors="replace") == script:
                    return int(proc.name)
        return None
    return wait_until(find, f"the process of {script}")


# -------------------------------------------------- resumes are re-checked

def test_deleting_written_into_an_active_entry_is_refused_not_done(host, directory, daemon):
    """Issue 7 §3: whoever can write the entry writes a claim with a dead owner; resume re-checks it."""
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    forged = f"claim: {os.uname().nodename} 999999 20200101T000000Z"
    directory.modify(dn, sstProvisioningMode="deleting", sstProvisioningState="0",
                     sstProvisioningReturnValue=None, sstProvisioningExecutionTime=forged)
    entry = directory.wait_return_value(dn, 101)
    assert entry["sstProvisioningMode"] == "deleting" and entry["sstIsActive"] == "TRUE"
    assert host.home(UID).is_dir() and host.rsnapshot_config(UID).is_file()
    assert not [c for c in host.quota_calls() if c[2] == "0"]              # the quota was not lifted


@pytest.mark.parametrize("forged", ["claim: x 1 99991231T235959Z", "claim: x y z"])
def test_a_claim_the_portal_forged_is_foreign_and_taken_over_at_once(directory, daemon, forged):
    """Issue 18: a stamp far ahead raised OverflowError at every judgement, and the entry stayed stuck."""
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.modify(dn, sstProvisioningMode="modifying", sstProvisioningState="0",
                     sstProvisioningReturnValue=None, sstProvisioningExecutionTime=forged)
    directory.wait_mode(dn, "modified")
    daemon.wait_for(rf"uid={UID},.*: resuming modify: modifying without an outcome, claimed by .*: "
                    rf"foreign, taken as expired")
    assert "Traceback" not in daemon.text()


def test_a_claim_without_an_owner_is_resumed_only_after_the_lease_and_re_checked(host, directory):
    host.set("Service", COMMAND_TIMEOUT=1, CLAIM_LEASE=2)
    daemon = DaemonProcess(host).start()
    dn = directory.add(UID)
    directory.wait_mode(dn, "added")
    directory.modify(dn, sstProvisioningMode="deleting", sstProvisioningState="0",       # no owner at all
                     sstProvisioningReturnValue=None, sstProvisioningExecutionTime=None)
    daemon.wait_for(rf"uid={UID},.*: deleting: claimed without an owner .*; taken over if still open at")
    directory.wait_return_value(dn, 101, timeout=30)
    assert host.home(UID).is_dir()
    assert daemon.stop() == 0


# ------------------------------------------------------ out of reach long

def test_waiting_for_ldap_for_ever_says_so_once_a_minute(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr("provisioning.engine.daemon.time.monotonic", lambda: now[0])
    attempts = []

    def action():
        attempts.append(now[0])
        if len(attempts) < 400:
            raise DirectoryUnavailable("Can't contact LDAP server")

    def sleep(seconds):
        now[0] += seconds
        return True

    with caplog.at_level("WARNING"):
        with_retries(action, Retry(attempts=0, sleep=1.0), sleep)       # 0: for ever
    assert len(attempts) == 400
    said = [r.getMessage() for r in caplog.records if "to reach LDAP failed" in r.getMessage()]
    assert len(said) == 7                              # at 0 s, then once a minute up to 399 s
    assert said[0].startswith("attempt 1 to reach LDAP failed")
    assert "waiting for 60 s" in said[1]
    assert [r.getMessage() for r in caplog.records][-1] == "LDAP answers again after 400 attempts in 399.0 s"
