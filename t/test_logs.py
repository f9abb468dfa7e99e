"""logrotate and rsyslog for the daemons' logs (etc/logrotate.d/provisioning, etc/rsyslog.d/60-provisioning.conf).

logrotate runs for real on the shipped file (its paths moved into the test's
folder): a daemon detached without syslog logs to its LOG_FILE, the file is
rotated, and postrotate's SIGHUP makes the daemon write to the new one; a
process whose PID a stale lock file names, but which does not hold that lock,
is left alone. The rsyslog rule is checked against what the daemon sends:
facility local0, and the ident of every plugin shipped.
"""
from __future__ import annotations

import configparser
import logging.handlers
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.runtime.detach import SYSLOG_SOCKET
from provisioning.base.log import _syslog_handler

from helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
LOGROTATE = REPO / "etc/logrotate.d/provisioning"
RSYSLOG = REPO / "etc/rsyslog.d/60-provisioning.conf"

needs_no_syslog = pytest.mark.skipif(os.path.exists(SYSLOG_SOCKET),
                                     reason="this host has /dev/log: a detached daemon logs to syslog, not LOG_FILE")


def _logrotate(conf_text: str, work: Path) -> subprocess.CompletedProcess:
    conf = work / "logrotate.conf"
    conf.write_text(conf_text)
    conf.chmod(0o644)
    return subprocess.run(["logrotate", "-f", "-s", str(work / "logrotate.state"), str(conf)],
                          capture_output=True, text=True, timeout=60)


def _moved(state: Path, varlog: Path) -> str:
    text = LOGROTATE.read_text()
    assert text.count("/var/lib/provisioning/*.log") == 1 and text.count("/var/log/provisioning/*.log") == 1
    return text.replace("/var/lib/provisioning/", f"{state}/").replace("/var/log/provisioning/", f"{varlog}/")


@needs_no_syslog
def test_logrotate_rotates_log_file_and_the_daemon_writes_on_in_the_new_one(host, directory, tmp_path):
    log_file = Path(str(host.layout.cookie) + ".log")          # LOG_FILE's default: COOKIE_FILE.log
    started = subprocess.run([sys.executable, "-m", "provisioning", "-c", str(host.config), "-g",
                              str(host.global_config), "--daemon"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"running as process (\d+)", started.stdout).group(1))
    try:
        wait_until(lambda: "connected to" in log_file.read_text(), "the daemon's first lines")
        rotated = _logrotate(_moved(log_file.parent, tmp_path / "varlog"), tmp_path)
        assert rotated.returncode == 0, rotated.stderr
        old = log_file.with_name(log_file.name + ".1")
        assert "connected to" in old.read_text()
        assert (os.stat(log_file).st_mode & 0o777) == 0o600
        # postrotate found the daemon by the lock file next to the log and sent SIGHUP: it reopened.
        wait_until(lambda: "SIGHUP: reloaded" in log_file.read_text(), "the reload, logged in the new file")
        directory.wait_mode(directory.add("3723701"), "added")
        wait_until(lambda: "3723701" in log_file.read_text(), "the request in the new file")
        assert "3723701" not in old.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in
                   Path(f"/proc/{pid}/status").read_text().lower(), "the daemon to stop")


def test_a_lock_naming_a_process_that_does_not_hold_it_is_not_signalled(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "other.cookie.log").write_text("a line\n")
    bystander = subprocess.Popen(["sleep", "60"])          # SIGHUP would end it
    try:
        (state / "other.cookie.lock").write_text(f"{bystander.pid}\n")      # stale: the PID was reused
        rotated = _logrotate(_moved(state, tmp_path / "varlog"), tmp_path)
        assert rotated.returncode == 0, rotated.stderr
        assert (state / "other.cookie.log.1").read_text() == "a line\n"
        assert bystander.poll() is None, "a process that holds no lock of ours got SIGHUP"
    finally:
        bystander.kill()
        bystander.wait()


def test_rsyslog_routes_local0_and_the_ident_of_every_shipped_plugin(tmp_path):
    text = RSYSLOG.read_text()
    rule = re.search(r'if \$syslogfacility-text == "(\w+)" and \$programname == \[([^\]]*)\] then', text)
    assert rule, text
    facility, idents = rule.group(1), set(re.findall(r'"([^"]+)"', rule.group(2)))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log_socket:       # a /dev/log of the test's own
        log_socket.bind(str(tmp_path / "log"))
        handler = _syslog_handler("Backup-Rsnapshot", str(tmp_path / "log"))
        try:
            names = {v: k for k, v in logging.handlers.SysLogHandler.facility_names.items()}
            assert names[handler.facility] == facility
        finally:
            handler.close()
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    shipped = {line.split("=")[0].strip().replace("/", "-")
               for line in cfg["options.entry_points"]["provisioning.plugins"].strip().splitlines()}
    assert shipped == idents       # [Service] SYSLOG's default: SERVICE-TYPE
    assert 'string="/var/log/provisioning/%programname%.log"' in text and "stop" in text
