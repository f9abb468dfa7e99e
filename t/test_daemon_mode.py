"""--daemon: the starting command exits with the detached daemon's own start-up result."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DaemonProcess, wait_until

NO_SYSLOG = not os.path.exists("/dev/log")


def _start(host, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config),
                           "-g", str(host.global_config), "--daemon", *extra],
                          capture_output=True, text=True, timeout=60)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "zombie" in status.lower()


@pytest.fixture
def detached():
    """PIDs of detached daemons a test started: stopped afterwards, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: _gone(pid), f"daemon {pid} to stop")


def test_the_parent_returns_once_the_daemon_is_connected_and_synchronising(host, directory, detached):
    result = _start(host)
    assert result.returncode == 0, result.stderr
    match = re.search(r"running as process (\d+), connected and synchronising", result.stdout)
    assert match, result.stdout + result.stderr
    pid = int(match.group(1))
    detached.append(pid)
    # No waiting: when the parent returns, the daemon holds the lock and is connected.
    assert Path(f"{host.layout.cookie}.lock").read_text().strip() == str(pid)
    log_file = Path(f"{host.layout.cookie}.log")
    if NO_SYSLOG:
        assert f"/dev/log is missing: the daemon logs to {log_file} (the default, COOKIE_FILE.log; set " \
               f"[Service] LOG_FILE to change it)" in result.stdout
        assert re.search(r"INFO connected to ldap://127\.0\.0\.1:\d+/; synchronising", log_file.read_text())
        assert log_file.stat().st_mode & 0o777 == 0o600
    dn = directory.add("3723707")
    directory.wait_mode(dn, "added")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: _gone(pid), "the daemon to exit")
    if NO_SYSLOG:
        assert "stopped Backup/Rsnapshot provisioning daemon" in log_file.read_text()


@pytest.mark.skipif(not NO_SYSLOG, reason="this host has /dev/log: the daemon logs to syslog")
def test_log_file_names_where_the_detached_daemon_logs(host, detached):
    wanted = host.layout.root / "log/daemon.log"
    wanted.parent.mkdir()
    host.set("Service", LOG_FILE=wanted)
    result = _start(host)
    assert result.returncode == 0, result.stderr
    detached.append(int(re.search(r"running as process (\d+)", result.stdout).group(1)))
    assert f"the daemon logs to {wanted} ([Service] LOG_FILE)" in result.stdout
    assert "connected to" in wanted.read_text()


@pytest.mark.skipif(not NO_SYSLOG, reason="this host has /dev/log: the daemon logs to syslog")
def test_a_log_file_that_is_a_link_is_refused_before_detaching(host):
    victim = host.layout.root / "victim"
    victim.write_text("precious\n")
    Path(f"{host.layout.cookie}.log").symlink_to(victim)
    result = _start(host)
    assert result.returncode == 3
    assert "is a symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"
    assert not Path(f"{host.layout.cookie}.lock").exists()       # nothing was started


def test_a_wrong_password_is_the_parents_exit_code(host):
    host.set("Database", ADMIN_PASSWORD="wrong")
    result = _start(host)
    assert result.returncode == 3, result.stdout + result.stderr
    assert re.search(r"the daemon \(process \d+\) did not start: exit code 3 \(config error\)", result.stderr)
    if NO_SYSLOG:
        assert "refused the bind" in Path(f"{host.layout.cookie}.log").read_text()


def test_ldap_out_of_reach_is_the_parents_exit_code(host):
    host.set("Database", SERVER="ldap://127.0.0.1:1")
    host.set_global("Global", SLEEP=0.1, ATTEMPTS=2)
    result = _start(host)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "exit code 4 (ldap unreachable)" in result.stderr


def test_a_second_instance_is_the_parents_exit_code(host):
    running = DaemonProcess(host).start()
    try:
        result = _start(host)
    finally:
        assert running.stop() == 0
    assert result.returncode == 5, result.stdout + result.stderr
    assert "exit code 5 (already running)" in result.stderr


def test_a_detached_daemon_over_clissh_keeps_its_lock_and_its_store(host, directory, sshd, detached):
    """The start-up checks ran gateway helpers and the command guard before detaching closed
    their descriptors; the daemon's lock and store then got the same numbers, and those
    objects closed them at the first request (found by review: a second instance started)."""
    host.set("Service", TRANSPORTAPI="CLISSH")
    host.set("Gateway", **sshd)
    result = _start(host)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(re.search(r"running as process (\d+)", result.stdout).group(1))
    detached.append(pid)
    for uid in ("3723707", "3723708"):                 # the second request goes through the store written by the first
        directory.wait_mode(directory.add(uid), "added")
    again = _start(host)
    assert again.returncode == 5, again.stdout + again.stderr
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: _gone(pid), "the daemon to exit")
