"""SIGHUP: log levels and [Mail] reloaded, logs reopened, a broken file changes nothing, no reconnect.

The daemons here run without -d (which would force debug on), so their log
goes to stderr (this host has no /dev/log) and into the test's file.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.runtime.detach import log_to_file, open_log_file
from provisioning.base.log import LevelFlags, reopen, set_levels

from helpers import DaemonProcess, Host, wait_until
from test_mail import Server, free_port

NO_SYSLOG = not os.path.exists("/dev/log")
needs_stderr_log = pytest.mark.skipif(not NO_SYSLOG, reason="this host has /dev/log: the daemon logs to syslog")

RELOADED = r"SIGHUP: reloaded"


def _quiet(host: Host) -> DaemonProcess:
    """A daemon without -d, LOG_DEBUG off in both files."""
    host.set("Global", LOG_DEBUG=0)
    host.set_global("Global", LOG_DEBUG=0)
    return DaemonProcess(host, debug=False)


def _hup(daemon: DaemonProcess, count: int) -> None:
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(RELOADED, count=count)


def _debug_lines(text: str) -> int:
    return len(re.findall(r"^\S+ \S+ DEBUG ", text, re.MULTILINE))


@needs_stderr_log
def test_sighup_turns_debug_lines_on_and_off_without_a_reconnect(host, directory):
    daemon = _quiet(host).start()
    directory.wait_mode(directory.add("3723701"), "added")
    assert _debug_lines(daemon.text()) == 0

    host.set("Global", LOG_DEBUG=1)
    _hup(daemon, 1)
    directory.wait_mode(directory.add("3723702"), "added")
    assert re.search(r"DEBUG run: .*create-chroot .*3723702", daemon.text())

    host.set("Global", LOG_DEBUG=0)
    _hup(daemon, 2)
    before = _debug_lines(daemon.text())
    directory.wait_mode(directory.add("3723703"), "added")
    daemon.wait_for(r"3723703.*add done")
    assert _debug_lines(daemon.text()) == before           # off again

    text = daemon.text()
    assert text.count("connected to ") == 1                 # the stream was never dropped
    assert "lost the LDAP connection" not in text
    assert daemon.stop() == 0


@needs_stderr_log
def test_keys_that_need_a_restart_are_named_and_kept(host, directory):
    daemon = _quiet(host).start()
    host.set("Database", TIMEOUT=7)
    host.set_global("Operation Mode", SLEEP=9)
    _hup(daemon, 1)
    daemon.wait_for(r"SIGHUP: changed, but taking effect only at the next restart: \[Database\] TIMEOUT, "
                    r"Global.conf \[Operation Mode\] SLEEP")
    directory.wait_mode(directory.add("3723701"), "added")
    assert daemon.stop() == 0


@needs_stderr_log
def test_a_broken_file_is_logged_and_changes_nothing(host, directory):
    daemon = _quiet(host).start()
    # Debug on in the same file as the error: a broken file must not be half applied.
    host.set("Global", LOG_DEBUG=1)
    host.set("Database", TIMEOUT="soon")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"SIGHUP: 1 configuration problem\(s\): nothing reloaded, the settings in use are kept")
    assert re.search(r"ERROR SIGHUP: .*Rsnapshot\.conf: \[Database\] TIMEOUT", daemon.text())
    dn = directory.add("3723701")
    directory.wait_mode(dn, "added")
    daemon.wait_for(r"3723701.*add done")
    assert _debug_lines(daemon.text()) == 0                 # LOG_DEBUG = 1 was not taken
    # Fixed, it is taken.
    host.set("Database", TIMEOUT=10)
    _hup(daemon, 1)
    directory.wait_mode(directory.add("3723702"), "added")
    assert re.search(r"DEBUG run: .*3723702", daemon.text())
    assert daemon.stop() == 0


@needs_stderr_log
def test_a_misspelt_key_is_not_reloaded_as_a_start_would_refuse_it(host, directory):
    daemon = _quiet(host).start()
    host.set("Global", LOG_DEBUG=1)
    host.set("Backup", SET_QUOTA_COMAND="/usr/sbin/setquota")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"SIGHUP: 1 configuration problem\(s\): nothing reloaded, the settings in use are kept")
    assert re.search(r"ERROR SIGHUP: .*Rsnapshot\.conf: \[Backup\] SET_QUOTA_COMAND: unknown key; did you mean "
                     r"SET_QUOTA_CMD\?", daemon.text())
    assert _debug_lines(daemon.text()) == 0                 # LOG_DEBUG = 1 was not taken
    assert daemon.stop() == 0


def test_sighup_sends_the_next_mail_through_the_new_server(host, directory):
    first, second = Server(free_port()), Server(free_port())
    try:
        host.set_global("Mail", SENDTO="ops@example.org", HOST="127.0.0.1", PORT=first.port, SSL="none",
                        WANTINFOMAIL=1)
        daemon = DaemonProcess(host).start()
        directory.wait_mode(directory.add("3723701"), "added")
        [done] = first.wait(1)
        assert done.kind == "done"

        host.set_global("Mail", PORT=second.port, FROMNAME="Backup host 7 <backup7@example.org>")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(rf"SIGHUP: \[Mail\] changed: mail alerts to ops@example.org through 127\.0\.0\.1:{second.port}")
        host.fail_quota(6)
        directory.wait_return_value(directory.add("3723702"), 6)
        [failure] = second.wait(1)
        assert failure.kind == "failure" and "3723702" in failure.message["Subject"]
        assert failure.mail_from == "backup7@example.org"
        assert len(first.received) == 1                     # nothing more went to the old server
        assert daemon.stop() == 0
    finally:
        first.stop()
        second.stop()


def test_a_reload_with_a_broken_mail_section_keeps_the_old_server(host, directory):
    server = Server(free_port())
    try:
        host.set_global("Mail", SENDTO="ops@example.org", HOST="127.0.0.1", PORT=server.port, SSL="none",
                        WANTINFOMAIL=0)
        daemon = DaemonProcess(host).start()
        host.set_global("Mail", SSL="sometimes")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(r"nothing reloaded, the settings in use are kept")
        assert re.search(r"ERROR SIGHUP: .*Global\.conf: \[Mail\] SSL", daemon.text())
        host.fail_quota(6)
        directory.wait_return_value(directory.add("3723702"), 6)
        [failure] = server.wait(1)
        assert failure.kind == "failure"
        assert daemon.stop() == 0
    finally:
        server.stop()


# ------------------------------------------------------------- reopening logs

def test_reopen_follows_logrotate_and_levels_change(tmp_path, restore_logging):
    path = tmp_path / "log/daemon.log"
    path.parent.mkdir()
    log_to_file(open_log_file(path), path, LevelFlags())
    logging.getLogger("provisioning.test").info("before the rotation")
    path.rename(path.with_suffix(".log.1"))
    reopen()
    logging.getLogger("provisioning.test").info("after the rotation")
    logging.getLogger("provisioning.test").debug("hidden")
    set_levels(LevelFlags(debug=True))
    logging.getLogger("provisioning.test").debug("shown")
    assert "before the rotation" in path.with_suffix(".log.1").read_text()
    assert "after the rotation" not in path.with_suffix(".log.1").read_text()
    rotated = path.read_text()
    assert "after the rotation" in rotated and "hidden" not in rotated and "DEBUG shown" in rotated
    assert path.stat().st_mode & 0o777 == 0o600


def test_reopen_never_follows_a_link_planted_at_the_log_file(tmp_path, restore_logging):
    """After a rotation a link in its place must not get root's log lines (nor be created through)."""
    path = tmp_path / "log/daemon.log"
    path.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log_to_file(open_log_file(path), path, LevelFlags())
    path.rename(path.with_suffix(".log.1"))
    path.symlink_to(victim)
    reopen()
    logging.getLogger("provisioning.test").warning("still logged")
    assert victim.read_text() == "precious\n"
    old = path.with_suffix(".log.1").read_text()
    assert "cannot reopen the log file" in old and "still logged" in old


@pytest.mark.skipif(not NO_SYSLOG, reason="this host has /dev/log: a detached daemon logs to syslog")
def test_a_detached_daemon_reopens_its_log_file_on_sighup(host, directory):
    log_file = host.layout.root / "log/daemon.log"
    log_file.parent.mkdir()
    host.set("Service", LOG_FILE=log_file)
    result = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config), "-g",
                             str(host.global_config), "--daemon"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = int(re.search(r"running as process (\d+)", result.stdout).group(1))
    try:
        rotated = log_file.with_suffix(".log.1")
        log_file.rename(rotated)                           # logrotate
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: log_file.exists() and "SIGHUP: reloaded" in log_file.read_text(),
                   "the reload logged in a new log file")
        directory.wait_mode(directory.add("3723701"), "added")
        wait_until(lambda: "3723701" in log_file.read_text(), "the request in the new log file")
        assert "3723701" not in rotated.read_text()
        assert "connected to" in rotated.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in
                   Path(f"/proc/{pid}/status").read_text().lower(), "the daemon to stop")
