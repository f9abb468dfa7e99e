"""systemd: the unit (systemd-analyze), and the notify protocol against a socket of the test's own.

The daemon runs as under systemd: NOTIFY_SOCKET names a datagram socket the
test reads (an abstract one, as systemd's own are), WATCHDOG_USEC is small,
and every message is recorded with the time it arrived.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioning.observe.notify import Notifier, status_field, watchdog_seconds
from provisioning.sandbox.layout import REPO, write_recorder
from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd
from provisioning.observe.watchdog import Watchdog

from helpers import DaemonProcess, Directory, Host, assert_done, wait_until

UNIT = REPO / "etc/systemd/provisioning@.service"
INSTALLED_PROGRAM = "/usr/local/bin/provisioning-daemon"
WATCHDOG_USEC = 1_000_000          # 1 s: WATCHDOG=1 due at least every 0.5 s


# ------------------------------------------------------------------ the unit

def _unit_copy(folder: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's program (verify wants it executable)."""
    program = shutil.which("provisioning-daemon", path=str(Path(sys.executable).parent))
    assert program, "provisioning-daemon is not installed in the virtualenv (bin/setup)"
    folder.mkdir(exist_ok=True)
    path = folder / UNIT.name
    path.write_text((text or UNIT.read_text()).replace(INSTALLED_PROGRAM, program))
    return path


def _verify(unit_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", "provisioning@Backup-Rsnapshot.service"],
                          cwd=unit_dir, capture_output=True, text=True, timeout=60)


def _settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    result = _verify(_unit_copy(tmp_path / "units").parent)
    # verify exits 0 on unknown keys and bad values too; it only says so: nothing may be said.
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt value and an unknown key are reported."""
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd").replace("Type=notify",
                                                                                  "Type=notify\nWatchDogSec=3")
    result = _verify(_unit_copy(tmp_path / "units", broken).parent)
    assert "kill mode" in result.stderr and "WatchDogSec" in result.stderr


def test_the_unit_runs_the_instance_configuration_as_a_notify_service():
    text = UNIT.read_text()
    unit = _settings(text)
    assert unit["Type"] == ["notify"] and unit["KillMode"] == ["mixed"] and unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"] == [f"{INSTALLED_PROGRAM} -c /etc/Provisioning/%I.conf"]
    assert unit["ExecStartPre"] == [f"{INSTALLED_PROGRAM} -c /etc/Provisioning/%I.conf --check"]
    # No /bin/kill (procps, missing on a minimal Debian): the shell's builtin, with the PID systemd
    # puts in ExecReload's environment.
    assert unit["ExecReload"] == ["""/bin/sh -c 'kill -HUP "$$MAINPID"'"""]
    assert unit["WatchdogSec"] == ["3min"] and unit["ProtectSystem"] == ["strict"]
    # %I is the instance name unescaped: Backup-Rsnapshot -> Backup/Rsnapshot.
    unescaped = subprocess.run(["systemd-escape", "--unescape", "Backup-Rsnapshot"], capture_output=True,
                               text=True, check=True).stdout.strip()
    assert f"/etc/Provisioning/{unescaped}.conf" == "/etc/Provisioning/Backup/Rsnapshot.conf"
    # What root needs, and no more.
    assert set(unit["CapabilityBoundingSet"][0].split()) == {
        "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN", "CAP_MKNOD"}
    assert "quotactl" in unit["SystemCallFilter"][0].split()


def test_the_units_reload_signals_the_daemon_without_procps(host, directory):
    """ExecReload as systemd runs it (its $$ is a $, MAINPID in the environment), with nothing on PATH:
    a minimal Debian has no /bin/kill."""
    command = _settings(UNIT.read_text())["ExecReload"][0].replace("$$", "$")
    program = shlex.split(command)[0]
    # Its program comes with every Debian: a package marked Essential (procps, /bin/kill's, is not).
    owner = subprocess.run(["dpkg-query", "-S", program], capture_output=True, text=True, timeout=60)
    package = next((line.split(":", 1)[0] for line in owner.stdout.splitlines()
                    if not line.startswith("diversion ")), "")
    essential = subprocess.run(["dpkg-query", "-W", "-f", "${Essential}", package], capture_output=True,
                               text=True, timeout=60).stdout
    assert essential == "yes", f"{program} comes from {package or 'no package'}, which is not Essential"
    daemon = DaemonProcess(host).start()
    result = subprocess.run(shlex.split(command), env={"MAINPID": str(daemon.proc.pid), "PATH": "/nonexistent"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    daemon.wait_for(r"SIGHUP: reloaded")
    assert daemon.stop() == 0


def test_the_hardening_scores_well(tmp_path):
    path = _unit_copy(tmp_path / "units")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             "provisioning@Backup-Rsnapshot.service"], cwd=path.parent,
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 4.0, result.stdout


# ------------------------------------------------------- the protocol, alone

@dataclass
class Listener:
    """A datagram socket like systemd's NOTIFY_SOCKET; records (time, fields) of every message."""

    sock: socket.socket
    address: str
    messages: list[tuple[float, list[str]]] = field(default_factory=list)
    on_message: list = field(default_factory=list)

    @classmethod
    def abstract(cls) -> "Listener":
        name = f"provisioning-test-{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        listener = cls(sock, "@" + name)
        threading.Thread(target=listener._read, daemon=True).start()
        return listener

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            fields = data.decode().split("\n")
            self.messages.append((time.monotonic(), fields))
            for callback in self.on_message:
                callback(fields)

    def fields(self, key: str) -> list[tuple[float, str]]:
        return [(at, f.partition("=")[2]) for at, fields in list(self.messages) for f in fields
                if f.startswith(key + "=")]

    def statuses(self) -> list[str]:
        return [text for _, text in self.fields("STATUS")]

    def pings(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [at for at, _ in self.fields("WATCHDOG") if start <= at <= end]

    def close(self) -> None:
        self.sock.close()


def _largest_gap(times: list[float], start: float, end: float) -> float:
    points = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def test_notifier_speaks_to_an_abstract_socket_and_a_path(tmp_path):
    listener = Listener.abstract()
    try:
        notifier = Notifier(listener.address)
        assert notifier.ready("up")
        wait_until(lambda: listener.messages, "a datagram")
        assert listener.messages[0][1] == ["READY=1", "STATUS=up"]
    finally:
        listener.close()
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        assert Notifier(str(path)).send("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent_and_a_dead_socket_costs_nothing(tmp_path):
    assert not Notifier.from_environment({}).enabled
    assert Notifier(None).send("READY=1") is False
    assert Notifier(str(tmp_path / "nobody-listens")).send("READY=1") is False       # logged, not raised


def test_the_variables_leave_the_environment_so_commands_cannot_speak_for_the_service():
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    assert Notifier.from_environment(environ).address == "\0x"
    assert watchdog_seconds(environ) == 3.0
    assert environ == {"PATH": "/bin"}
    # A watchdog meant for another process (the variable was inherited) is not ours.
    assert watchdog_seconds({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None


def test_a_status_cannot_carry_a_field_of_its_own():
    """Directory values reach STATUS= (a DN, an error text): a newline must not become READY=1."""
    field_ = status_field("uid=x\nREADY=1\nWATCHDOG=1,ou=accounts\x1b[2J")
    assert "\n" not in field_ and "\x1b" not in field_
    assert field_.startswith("STATUS=uid=x\\nREADY=1")


def test_the_watchdog_stops_pinging_when_the_loop_stops_moving():
    pings: list[float] = []
    dog = Watchdog(0.4, lambda: pings.append(time.monotonic())).start()      # every 0.1 s, grace 0.2 s
    try:
        until = time.monotonic() + 0.6
        while time.monotonic() < until:                                      # the loop moves
            dog.beat()
            time.sleep(0.02)
        stuck = time.monotonic()
        time.sleep(0.8)                                                      # the loop is stuck
        after_grace = [p for p in pings if p > stuck + dog.grace + 0.05]
        assert len([p for p in pings if p <= stuck]) >= 4
        assert after_grace == [], "a stuck loop must not be vouched for"
        with dog.patience(0.6):                                              # an announced wait
            started = time.monotonic()
            time.sleep(0.5)
        assert len([p for p in pings if started < p <= started + 0.5]) >= 3
    finally:
        dog.stop()


# ------------------------------------------------------ the protocol, daemon

def _slow_chroot(host: Host, seconds: float) -> None:
    """CREATE_CHROOT_CMD takes ``seconds``: a command in hand the watchdog must wait for."""
    slow = host.layout.root / "bin/slow-create-home"
    slow.write_text(f"#!/bin/sh\nsleep {seconds}\nexec {REPO / 'bin/prov-backup-create-home'} \"$@\"\n")
    slow.chmod(0o755)
    write_recorder(host.chroot_cmd, host.chroot_log, then=str(slow))


def _notified(host: Host, listener: Listener, *args: str) -> DaemonProcess:
    return DaemonProcess(host, *args, env={"NOTIFY_SOCKET": listener.address,
                                           "WATCHDOG_USEC": str(WATCHDOG_USEC)})


def test_ready_once_after_the_first_refresh_status_watchdog_while_a_command_runs_and_stopping(host, directory):
    first = directory.add("3723707")                    # open before the start: the first refresh does it
    _slow_chroot(host, 2.0)
    listener = Listener.abstract()
    mode_at_ready: list[str] = []
    peek = Directory(host.slapd, host.subtree, host.layout.backup_root)
    listener.on_message.append(lambda fields: "READY=1" in fields
                               and mode_at_ready.append(peek.get(first)["sstProvisioningMode"]))
    try:
        daemon = _notified(host, listener).start()
        wait_until(lambda: listener.fields("READY"), "READY=1")
        # READY=1 only once the refresh and its work are done: the request has its outcome.
        wait_until(lambda: mode_at_ready, "the listener to look at the entry when READY=1 came")
        assert mode_at_ready == ["added"]
        ready_at = listener.fields("READY")[0][0]
        statuses = listener.statuses()
        assert "connecting to LDAP" in statuses
        assert any(re.match(rf"synchronising {re.escape(host.subtree)} from ldap://127\.0\.0\.1:\d+/ \(full "
                            r"refresh\): \d+ entries seen", s) for s in statuses), statuses
        assert statuses[-1] == "waiting for changes; 1 requests done, 0 failed or refused since the start"

        # A command of 2 s in the loop itself (WORKERS = 1): the watchdog is fed all along.
        second = directory.add("3723708")
        daemon.wait_for(r"run: .*create-chroot", count=2)
        busy_from = time.monotonic()
        assert_done(directory.wait_mode(second, "added"), "added")
        busy_to = time.monotonic()
        assert busy_to - busy_from > 1.5
        assert _largest_gap(listener.pings(), busy_from, busy_to) <= WATCHDOG_USEC / 2e6
        wait_until(lambda: "2 requests done" in listener.statuses()[-1], "the status to count 2 requests")

        stop_at = time.monotonic()
        assert daemon.stop() == 0
        wait_until(lambda: listener.fields("STOPPING"), "STOPPING=1")
        assert listener.fields("STOPPING")[0][1] == "1"
        assert [s for s in listener.statuses() if s.startswith("stopping")]
        # Fed from the start to the stop, at the rate asked for and not much faster.
        pings = listener.pings()
        assert _largest_gap(pings, pings[0], stop_at) <= WATCHDOG_USEC / 2e6
        assert len(pings) <= (stop_at - pings[0]) / (WATCHDOG_USEC / 4e6) * 1.5 + 3
        assert len(listener.fields("READY")) == 1 and ready_at < stop_at
    finally:
        listener.close()
        peek.conn.unbind_s()


def test_the_watchdog_is_fed_while_the_daemon_waits_for_ldap_and_ready_is_not_repeated(tmp_path):
    slapd = StoneySlapd(rundir=str(tmp_path / "slapd"))
    slapd.start()
    listener = Listener.abstract()
    try:
        host = Host(tmp_path / "host", slapd, ACCOUNTS_BASE)
        # Attempts 4 s apart: each pause is longer than WatchdogSec/2 and than an attempt's own
        # bound (6 TIMEOUT), so only the pause announced as such keeps the watchdog fed.
        host.set_global("Operation Mode", ATTEMPTS=0, SLEEP=4)
        host.set("Database", TIMEOUT=0.3)
        daemon = _notified(host, listener).start()
        wait_until(lambda: listener.fields("READY"), "READY=1")
        slapd.terminate()
        slapd.wait()
        daemon.wait_for(r"attempt 1 to reach LDAP failed")
        away_from = time.monotonic()
        wait_until(lambda: any(s.startswith("waiting for LDAP since") for s in listener.statuses()),
                   "a STATUS saying that it waits for LDAP")
        time.sleep(5)                   # observing: more than one pause between attempts
        away_to = time.monotonic()
        assert _largest_gap(listener.pings(), away_from, away_to) <= WATCHDOG_USEC / 2e6
        slapd.resume()
        daemon.wait_for(r"LDAP answers again")
        directory = Directory(slapd, ACCOUNTS_BASE, host.layout.backup_root)
        directory.wait_mode(directory.add("3723707"), "added")
        wait_until(lambda: listener.statuses()[-1].startswith("waiting for changes; 1 requests done"),
                   "the status after the reconnect")
        assert daemon.stop() == 0
        assert len(listener.fields("READY")) == 1          # a reconnect is no second start
    finally:
        listener.close()
        slapd.stop()
