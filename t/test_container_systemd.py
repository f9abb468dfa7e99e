"""The package and its unit under a real systemd: a Debian 12 container, booted once for every check.

A Debian 12 root (minbase and systemd, made by debootstrap once and cached:
t/debian_root.py) is booted with systemd-nspawn, on an overlay that goes with
the test. This checkout's package is installed there with apt (its Depends
come onto a clean system), and the operator's steps of docs/deployment.md
follow: the folders, the wiki's configuration ([Database]: the test's slapd on
this machine's loopback, which the container shares), and
``systemctl enable --now provisioning@Backup-Rsnapshot``. Then, in this order:
the wiki's add, modify and delete; ``systemctl reload`` (a log level changed);
``systemctl stop`` while a command is in hand; after a drop-in that only
shortens RestartSec and WatchdogSec, SIGKILL of the main process and a loop
frozen with SIGSTOP; the journal; ``systemd-analyze security``; the purge.

setquota is a stand-in (the kernel here has no quota support) that records
its calls in the state folder, and waits while the test's ``hold`` file
exists: that is how a command is kept "in hand" for as long as a check needs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import debian_build
import debian_root
import nspawn
from helpers import Directory, wait_until
from provisioning.testing import BACKUP_BASE, make_subtree
from test_installed import WIKI_CONF, wiki_edited

pytestmark = pytest.mark.skipif(os.environ.get("PROVISIONING_TEST_CONTAINERS") != "1",
                                reason="boots a Debian 12 container (a debootstrapped root, cached in "
                                       f"{debian_root.CACHE}): bin/test runs it (PROVISIONING_TEST_CONTAINERS=1)")

ROOT = debian_root.DEBIAN12_SYSTEMD
UNIT = "provisioning@Backup-Rsnapshot.service"
CONFIG = "/etc/Provisioning/Backup/Rsnapshot.conf"
STATE = "/var/lib/provisioning"
RECORDER = "/usr/local/sbin/setquota-recorder"
CALLS = f"{STATE}/setquota.calls"
HOLD = f"{STATE}/hold"
LDIF = "/root/ldif"
DROP_IN = f"/etc/systemd/system/{UNIT}.d/shorter-times.conf"
WATCHDOG_SEC = 5
# What the README's "Running it under systemd" says systemd-analyze security rates the unit.
DOCUMENTED_EXPOSURE = "3.1"
# A real systemd, an install with apt, a restart: more than a test's usual 20 s.
SLOW = 90.0

RECORDER_SCRIPT = f"""#!/bin/sh
# setquota's stand-in: records each call's start and end; waits while {HOLD} exists (at most 2 minutes).
printf 'start %s\\n' "$*" >> {CALLS}
n=0
while [ -e {HOLD} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
printf 'end %s\\n' "$*" >> {CALLS}
"""


@dataclass
class Host:
    """The booted container, the slapd here, and the subtree its daemon follows."""
    box: nspawn.Booted
    directory: Directory
    subtree: str

    def run(self, *argv: str, timeout: float = SLOW) -> str:
        return self.box.exec(list(argv), timeout=timeout, check=True).stdout

    def show(self, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", UNIT, *[f"--property={p}" for p in properties])
        return dict(line.split("=", 1) for line in out.splitlines())

    def file(self, inside: str) -> Path:
        return self.box.path(inside)

    def calls(self) -> list[str]:
        path = self.file(CALLS)
        return path.read_text().splitlines() if path.exists() else []

    def request_add(self, uid: str) -> str:
        """The wiki's way: createBackupAccountLDIF's 01_add file, loaded with loadOpenLDAPsingleLDIF."""
        self.run("createBackupAccountLDIF", "--uid", uid, "--output", LDIF, "--base", self.subtree)
        return self.load(uid, "01_add")

    def load(self, uid: str, step: str) -> str:
        self.run("loadOpenLDAPsingleLDIF", "-c", CONFIG, f"{LDIF}/{step}_{uid}.ldif")
        return self.directory.dn(uid)

    def wait_mode(self, dn: str, mode: str) -> dict[str, str]:
        entry = self.directory.wait_mode(dn, mode, timeout=SLOW)
        assert entry.get("sstProvisioningReturnValue") == "0", entry
        return entry

    def journal(self, *args: str) -> list[dict]:
        out = self.run("journalctl", "--no-pager", "--output=json", f"--unit={UNIT}", *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def cursor(self) -> str:
        out = self.run("journalctl", "--no-pager", "--lines=0", "--show-cursor", f"--unit={UNIT}")
        return out.strip().rpartition("-- cursor: ")[2]

    def wait_state(self, state: str, timeout: float = SLOW) -> dict[str, str]:
        return wait_until(lambda: (shown := self.show("ActiveState", "SubState", "MainPID", "NRestarts",
                                                      "Result", "StatusText", "ExecMainStatus"))
                          ["ActiveState"] == state and shown, f"{UNIT} to be {state}", timeout)


def message(record: dict) -> str:
    text = record.get("MESSAGE", "")
    return bytes(text).decode(errors="replace") if isinstance(text, list) else text


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("one booted container for the module: run it in one process (without -n), as bin/test does")
    return debian_build.build(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def box(deb, tmp_path_factory):
    work = tmp_path_factory.mktemp("debian12")
    with debian_root.cached(ROOT) as lower, nspawn.overlay(lower, work / "overlay") as root:
        container = nspawn.Booted(root, work / "console.log", binds=debian_root.cache_binds(ROOT.release),
                                  read_only=[(deb.parent, "/srv/deb")])
        try:
            yield container.start()
        finally:
            container.stop()


@pytest.fixture(scope="module")
def host(box, slapd) -> Host:
    subtree = make_subtree(slapd, "container-debian12", BACKUP_BASE)
    return Host(box, Directory(slapd, subtree, Path("/var/backup")), subtree)


# ------------------------------------------------------------ install and start

def test_apt_installs_the_package_and_its_dependencies_on_a_clean_debian_12(host, deb):
    missing = host.box.exec(["dpkg-query", "-W", "python3-ldap", "python3-pluggy", "python3-daemon"])
    assert missing.returncode != 0, "the cached root has the dependencies already: it must not"
    host.run("apt-get", "update", "-q", timeout=300)
    # Without Recommends (quota, openssh-server): the Depends alone make it work, and the Debian stays
    # minimal (no procps: no /bin/kill for ExecReload).
    host.run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/srv/deb/{deb.name}", timeout=600)
    status = host.run("dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", "provisioning")
    assert status == "installed 0.1.0"
    assert not host.file("/etc/systemd/system/multi-user.target.wants").joinpath(UNIT).exists()
    assert host.show("UnitFileState")["UnitFileState"] == "disabled"


def test_the_operators_steps_start_the_instance(host, slapd):
    for folder in ("/var/backup", "/etc/rsnapshot"):              # docs/deployment.md, step 2
        host.run("install", "-d", "-o", "root", "-g", "root", "-m", "0755", folder)
    recorder = host.file(RECORDER)
    recorder.write_text(RECORDER_SCRIPT)
    recorder.chmod(0o755)
    host.file(CONFIG).write_text(_wiki_configuration(slapd, host.subtree))
    host.file(CONFIG).chmod(0o600)
    host.run("systemctl", "enable", "--now", UNIT, timeout=SLOW)   # Type=notify: returns at READY=1
    shown = host.wait_state("active")
    assert shown["SubState"] == "running" and shown["NRestarts"] == "0"
    assert shown["StatusText"].startswith("waiting for changes"), shown
    unit = host.show("UnitFileState", "WatchdogUSec", "ExecStartPre", "FragmentPath")
    assert unit["UnitFileState"] == "enabled" and unit["WatchdogUSec"] == "3min"
    # The package's unit (in /usr/lib; systemd 252 may name it by the /lib alias of merged /usr).
    assert unit["FragmentPath"] in ("/usr/lib/systemd/system/provisioning@.service",
                                    "/lib/systemd/system/provisioning@.service"), unit["FragmentPath"]
    assert "argv[]=/usr/bin/provisioning-daemon -c /etc/Provisioning/Backup/Rsnapshot.conf --check ;" in \
        unit["ExecStartPre"] and "code=exited ; status=0 }" in unit["ExecStartPre"], unit["ExecStartPre"]


def _wiki_configuration(slapd, subtree: str) -> str:
    """The wiki's file with [Database] and the paths of this host: as an operator edits it."""
    text = wiki_edited(slapd, subtree, f"{STATE}/Backup-Rsnapshot.cookie", {
        "SET_QUOTA_CMD = /usr/sbin/setquota": f"SET_QUOTA_CMD = {RECORDER}",
        "CREATE_CHROOT_CMD = /root/createDummyBackupDirectory.sh": "CREATE_CHROOT_CMD = /usr/bin/prov-backup-create-chroot",
        "MOUNTPOINT = /": "MOUNTPOINT = /\nBACKUP_ROOT = /var/backup",
    })
    changed = {line for line in text.splitlines()} - set(WIKI_CONF.read_text().splitlines())
    assert {line.split(" = ")[0] for line in changed} == {"SERVER", "ADMIN_USER", "ADMIN_PASSWORD", "SERVICE_SUBTREE",
                                                          "COOKIE_FILE", "SET_QUOTA_CMD", "CREATE_CHROOT_CMD",
                                                          "BACKUP_ROOT"}
    return text


# ------------------------------------------------------------------ the requests

def test_the_wikis_add_modify_and_delete_under_the_full_hardening(host):
    uid = "3724300"
    account = f"/var/backup/0/300/724/{uid}"
    dn = host.request_add(uid)
    host.wait_mode(dn, "added")
    # The shipped builder made the jail, under ProtectSystem=strict, the syscall filter and the capability set.
    assert f"{uid}:x:{uid}:{uid}:" in host.file(f"{account}/chroot/etc/passwd").read_text()
    assert host.file(f"{account}/chroot/bin/sh").exists()
    incoming = host.file(f"{account}/chroot/home/{uid}/incoming").stat()
    assert (incoming.st_uid, incoming.st_mode & 0o7777) == (int(uid), 0o700)
    assert "retain\tdaily\t7\n" in host.file(f"/etc/rsnapshot/rsnapshot.conf.{uid}").read_text()
    assert f"end -u {uid} 1048576 1048576 0 0 /" in host.calls()

    host.load(uid, "02_modify")
    host.wait_mode(dn, "modified")
    assert "retain\tdaily\t14\n" in host.file(f"/etc/rsnapshot/rsnapshot.conf.{uid}").read_text()
    assert f"end -u {uid} 2097152 2097152 0 0 /" in host.calls()

    host.load(uid, "03_delete")
    host.wait_mode(dn, "deleted")
    assert not host.file(account).exists() and not host.file(f"/etc/rsnapshot/rsnapshot.conf.{uid}").exists()
    assert [p.name.split("-")[0] for p in host.file("/var/backup/archive").iterdir()] == [uid]
    host.load(uid, "04_remove")
    wait_until(lambda: host.directory.get(dn) is None, f"{dn} to leave the directory")


def test_reload_takes_a_changed_log_level_at_once(host):
    """ExecReload is the shell's kill: this Debian has no /bin/kill (procps), and reload still works."""
    assert not host.file("/bin/kill").exists() and not host.file("/usr/bin/kill").exists()
    pid = host.show("MainPID")["MainPID"]
    before = host.cursor()
    dn = host.request_add("3724301")
    host.wait_mode(dn, "added")
    assert _debug_lines(host.journal(f"--after-cursor={before}")), "LOG_DEBUG = 1: debug lines expected"

    config = host.file(CONFIG)
    config.write_text(config.read_text().replace("LOG_DEBUG = 1", "LOG_DEBUG = 0"))
    reloaded = host.cursor()
    host.run("systemctl", "reload", UNIT)
    wait_until(lambda: any("SIGHUP: reloaded" in message(r) for r in host.journal(f"--after-cursor={reloaded}")),
               "the daemon to log its reload", SLOW)
    quiet = host.cursor()
    dn = host.request_add("3724302")
    host.wait_mode(dn, "added")
    assert _debug_lines(host.journal(f"--after-cursor={quiet}")) == []
    assert host.show("MainPID")["MainPID"] == pid                  # a reload, not a restart


def _debug_lines(records: list[dict]) -> list[str]:
    return [message(r) for r in records if r.get("PRIORITY") == "7" and r.get("SYSLOG_IDENTIFIER") != "systemd"]


def test_stop_lets_the_command_in_hand_finish_and_writes_its_outcome(host):
    """KillMode=mixed: SIGTERM to the daemon alone; setquota, held, is not cut short."""
    uid = "3724303"
    host.file(HOLD).touch()
    dn = host.request_add(uid)
    wait_until(lambda: f"start -u {uid} 1048576 1048576 0 0 /" in host.calls(), "setquota to be in hand", SLOW)
    host.run("systemctl", "stop", "--no-block", UNIT)
    host.wait_state("deactivating")
    wait_until(lambda: host.show("StatusText")["StatusText"].startswith("stopping"), "STATUS=stopping...", SLOW)
    assert f"end -u {uid} 1048576 1048576 0 0 /" not in host.calls()
    host.file(HOLD).unlink()
    stopped = host.wait_state("inactive")
    assert (stopped["Result"], stopped["ExecMainStatus"]) == ("success", "0"), stopped
    assert host.calls()[-1] == f"end -u {uid} 1048576 1048576 0 0 /"
    host.wait_mode(dn, "added")                                       # the outcome was written before the exit
    host.run("systemctl", "start", UNIT, timeout=SLOW)


def test_a_drop_in_changes_only_the_times(host):
    """What follows waits for RestartSec (30 s) and WatchdogSec (3 min): an operator's drop-in shortens them."""
    drop_in = host.file(DROP_IN)
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(f"[Service]\nRestartSec=1s\nWatchdogSec={WATCHDOG_SEC}s\n")
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "restart", UNIT, timeout=SLOW)
    shown = host.show("WatchdogUSec", "RestartUSec", "DropInPaths", "KillMode", "Restart")
    assert shown == {"WatchdogUSec": f"{WATCHDOG_SEC}s", "RestartUSec": "1s", "DropInPaths": DROP_IN,
                     "KillMode": "mixed", "Restart": "on-failure"}


def test_sigkill_of_the_daemon_is_restarted_and_the_request_in_hand_finishes(host):
    uid = "3724304"
    before = host.show("MainPID", "NRestarts")
    host.file(HOLD).touch()
    dn = host.request_add(uid)
    wait_until(lambda: f"start -u {uid} 1048576 1048576 0 0 /" in host.calls(), "setquota to be in hand", SLOW)
    host.run("systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", UNIT)
    wait_until(lambda: host.show("NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1),
               "systemd to restart the daemon", SLOW)
    # The claim is resumed by the new daemon: setquota runs again (held again), then the request is done.
    wait_until(lambda: host.calls().count(f"start -u {uid} 1048576 1048576 0 0 /") == 2,
               "the resumed request's setquota", SLOW)
    host.file(HOLD).unlink()
    host.wait_mode(dn, "added")
    after = host.wait_state("active")
    assert after["MainPID"] != before["MainPID"] and after["SubState"] == "running"


def test_the_watchdog_restarts_a_daemon_whose_loop_is_frozen(host):
    before = host.show("MainPID", "NRestarts")
    cursor = host.cursor()
    host.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)
    wait_until(lambda: host.show("NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1),
               "the watchdog to restart the daemon", WATCHDOG_SEC + SLOW)
    after = host.wait_state("active")
    assert after["MainPID"] != before["MainPID"]
    said = "\n".join(message(r) for r in host.journal(f"--after-cursor={cursor}"))
    assert re.search(rf"{re.escape(UNIT)}: Watchdog timeout \(limit {WATCHDOG_SEC}s\)!", said), said
    # PYTHONFAULTHANDLER=1: the stack of the frozen loop is in the journal.
    assert "Fatal Python error: Aborted" in said and "most recent call first" in said, said
    host.wait_mode(host.request_add("3724305"), "added")


# ------------------------------------------------------------- what systemd says

def test_the_journal_has_no_traceback_and_no_failed_step(host):
    said = [message(r) for r in host.journal()]
    assert said, "nothing in the journal for the unit"
    assert not [m for m in said if "Traceback (most recent call last)" in m], "\n".join(said)
    assert not [m for m in said if "Failed at step" in m or "status=203/EXEC" in m], "\n".join(said)


def test_systemd_analyze_security_stays_at_the_documented_level(host):
    documents = [REPO_README, *sorted((debian_build.REPO / "docs").glob("*.md"))]
    assert any(f"rates it {DOCUMENTED_EXPOSURE}" in path.read_text() for path in documents)
    out = host.box.exec(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\S+)", out)
    assert found, out
    assert float(found.group(1)) <= float(DOCUMENTED_EXPOSURE), out


REPO_README = debian_build.REPO / "README.md"


# --------------------------------------------------------------- last: the purge

def test_purge_stops_the_instance_and_leaves_only_the_operators_files(host, deb):
    """Purged while its instance is enabled and running, as an operator may well do."""
    host.run("apt-get", "purge", "-y", "-q", "provisioning", timeout=300)
    assert host.box.exec(["dpkg-query", "-W", "-f", "${db:Status-Status}", "provisioning"]).stdout in ("", "not-installed")
    # The operator keeps the configuration (the file and the drop-in) and the state.
    assert all(host.file(path).exists() for path in (CONFIG, f"{STATE}/Backup-Rsnapshot.cookie", DROP_IN))
    left = {
        "daemons still running": _daemons(host),
        "units systemd still knows": host.run("systemctl", "list-units", "--all", "--plain", "--no-legend",
                                              "provisioning@*").splitlines(),
        "paths named after it": sorted(path for path in _paths_named_provisioning(host) if not _operators(path)),
        "files of the package": [path for path in _files_of(deb) if os.path.lexists(host.file(path))],
    }
    assert not any(left.values()), f"left after the purge: {left}"


def _operators(path: str) -> bool:
    """The configuration and state an operator keeps: /etc/Provisioning, the state folder, the drop-in."""
    return path.startswith(("/etc/Provisioning", STATE, str(Path(DROP_IN).parent)))


def _paths_named_provisioning(host: Host) -> set[str]:
    found = host.run("find", "/", "-xdev", "(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/dev",
                     "-o", "-path", "/srv/deb", ")", "-prune", "-o", "-iname", "*provisioning*", "-print")
    return {line for line in found.splitlines() if line}


def _files_of(deb: Path) -> list[str]:
    """The files (not folders) the package brings: /usr/bin/prov-backup-create-chroot, ..."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
    return [line.split(None, 5)[5].split(" -> ")[0].removeprefix(".") for line in listing if not line.startswith("d")]


def _daemons(host: Host) -> list[str]:
    out = host.run("sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
    return [line for line in out.splitlines() if "provisioning-daemon" in line or "-m provisioning" in line]
