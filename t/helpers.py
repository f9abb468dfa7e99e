"""Test helpers: a backup host in a temp folder, a daemon process, LDAP accounts.

Everything waits for an observable condition with a deadline; nothing sleeps
and hopes.
"""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import ldap
import ldap.modlist

from provisioning.sandbox.layout import (
    REPO, SandboxLayout, global_sections, render_ini, service_sections, write_recorder,
)

DEADLINE = 20.0
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Host:
    """One backup host: folders, stand-in commands and configuration files."""

    default_workers: int | None = None      # set by the `workers` fixture of t/conftest.py

    def __init__(self, root: Path, slapd, subtree: str) -> None:
        self.layout = SandboxLayout(root)
        self.layout.create()
        self.slapd = slapd
        self.subtree = subtree
        self.chroot_cmd = root / "bin/create-chroot"
        self.chroot_log = root / "create-chroot.calls"
        write_recorder(self.chroot_cmd, self.chroot_log, then=str(REPO / "bin/prov-backup-create-home"))
        self.service = service_sections(self.layout, uri=slapd.ldap_uri, bind_dn=slapd.root_dn,
                                        password=slapd.root_pw, subtree=subtree,
                                        create_chroot_cmd=str(self.chroot_cmd))
        self.global_ = global_sections(sleep=0.2, attempts=3, operation_sleep=0.2, operation_attempts=50)
        if self.default_workers is not None:
            self.service["Service"]["WORKERS"] = self.default_workers
        self.write()

    @property
    def config(self) -> Path:
        return self.layout.service_config

    @property
    def global_config(self) -> Path:
        return self.layout.global_config

    def set(self, section: str, **keys) -> "Host":
        """Change keys of the service configuration (None removes one)."""
        _update(self.service, section, keys)
        self.write()
        return self

    def set_global(self, section: str, **keys) -> "Host":
        """Change keys of Global.conf (None removes one)."""
        _update(self.global_, section, keys)
        self.write()
        return self

    def write(self) -> None:
        self.layout.service_config.write_text(render_ini(self.service))
        self.layout.global_config.write_text(render_ini(self.global_))

    def quota_calls(self) -> list[list[str]]:
        return _calls(self.layout.setquota_log)

    def chroot_calls(self) -> list[list[str]]:
        return _calls(self.chroot_log)

    def fail_quota(self, code: int = 1) -> None:
        Path(f"{self.layout.setquota_log}.exit").write_text(str(code))

    def rsnapshot_config(self, uid: str) -> Path:
        return self.layout.rsnapshot_dir / f"rsnapshot.conf.{uid}"

    def home(self, uid: str) -> Path:
        return Path(f"{self.layout.backup_root}/{uid[-1]}/{uid[-3:]}/{uid[1:4]}/{uid}/chroot/home/{uid}")

    def account_dir(self, uid: str) -> Path:
        return Path(f"{self.layout.backup_root}/{uid[-1]}/{uid[-3:]}/{uid[1:4]}/{uid}")


def _update(sections: dict, section: str, keys: dict) -> None:
    for key, value in keys.items():
        if value is None:
            sections.setdefault(section, {}).pop(key, None)
        else:
            sections.setdefault(section, {})[key] = value


def _calls(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t")[1:] for line in path.read_text().splitlines() if line]


class DaemonProcess:
    """provisioning-daemon in a subprocess, its output in a file we can search."""

    def __init__(self, host: Host, *args: str, log_name: str = "daemon.log",
                 env: dict[str, str] | None = None, debug: bool = True) -> None:
        self.host = host
        self.args = list(args)
        self.env = env                  # extra environment variables
        self.debug = debug
        self.log_path = host.layout.root / log_name
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "provisioning", "-c", str(self.host.config),
                "-g", str(self.host.global_config), *(["--debug"] if self.debug else []), *self.args]

    def start(self, wait_ready: bool = True) -> "DaemonProcess":
        self._log = open(self.log_path, "a")
        # A session of its own: kill_all() can take the daemon and its children.
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.host.layout.root, start_new_session=True, env=env)
        if wait_ready:
            self.wait_for(r"initial synchronisation of .* done")
        return self

    def text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text(), re.MULTILINE))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = DEADLINE) -> None:
        def seen() -> bool:
            if self.proc and self.proc.poll() is not None and self.count(pattern) < count:
                raise AssertionError(f"daemon exited {self.proc.returncode} before logging {pattern!r}:\n"
                                     + self.text()[-3000:])
            return self.count(pattern) >= count
        try:
            wait_until(seen, f"{count} log line(s) matching {pattern!r}", timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- daemon log tail ---\n{self.text()[-3000:]}") from None

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE)
        self._log.close()

    def kill_all(self) -> None:
        """SIGKILL to the daemon and every command it runs: a crash of the whole service."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(DEADLINE)
        self._log.close()

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code


def home_directory(backup_root: Path | str, uid: str) -> str:
    """homeDirectory of the stoney layout: ``<account dir>/chroot/./home/<uid>``."""
    return f"{backup_root}/{uid[-1]}/{uid[-3:]}/{uid[1:4]}/{uid}/chroot/./home/{uid}"


def account_attrs(uid: str, backup_root: Path | str, **overrides) -> dict[str, list[bytes]]:
    """A backup account entry as the portal writes it; overrides replace (None drops)."""
    attrs: dict[str, object] = {
        "objectClass": ["account", "posixAccount", "shadowAccount", "sstBackup", "sstProvisioning",
                        "sstRelationship"],
        "uid": uid, "uidNumber": uid, "gidNumber": uid, "cn": "Givenname Surname",
        "homeDirectory": home_directory(backup_root, uid) if len(uid) >= 4 else f"/nowhere/./{uid}",
        "sstBackupIntervalHourly": "0", "sstBackupIntervalDaily": "7", "sstBackupIntervalWeekly": "4",
        "sstBackupIntervalMonthly": "3", "sstBackupIntervalYearly": "0",
        "sstBackupWarningDays": "3", "sstBackupWarningNumbers": "3", "sstBackupWarningOn": "TRUE",
        "sstNotificationWarningLevel": "85", "sstNotificationWarningMedium": "mail",
        "sstUseSelfcare": "TRUE", "sstUseSSH": "TRUE", "sstIsActive": "TRUE",
        "sstQuota": "1073741824",
        "sstBelongsToResellerUID": "4000000", "sstBelongsToCustomerUID": "4000001",
        "sstBelongsToPersonUID": "4000002",
        "sstProvisioningMode": "add", "sstProvisioningState": "0", "sstProvisioningExecutionDate": "0",
    }
    attrs.update(overrides)
    out = {}
    for name, value in attrs.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        out[name] = [str(v).encode() for v in values]
    return out


class Directory:
    """Root access to the test slapd below one subtree."""

    def __init__(self, slapd, subtree: str, backup_root: Path) -> None:
        self.conn = slapd.connect()
        self.subtree = subtree
        self.backup_root = backup_root

    def dn(self, uid: str) -> str:
        return f"uid={ldap.dn.escape_dn_chars(uid)},{self.subtree}"

    def add(self, uid: str, **overrides) -> str:
        dn = self.dn(uid)
        self.conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, self.backup_root, **overrides)))
        return dn

    def modify(self, dn: str, **changes) -> None:
        mods = [(ldap.MOD_REPLACE, name, None if v is None else [str(v).encode()])
                for name, v in changes.items()]
        self.conn.modify_s(dn, mods)

    def request(self, dn: str, mode: str, **changes) -> None:
        """Write a request the way the portal does: mode, state 0, date 0, plus changes."""
        self.modify(dn, sstProvisioningMode=mode, sstProvisioningState="0",
                    sstProvisioningExecutionDate=changes.pop("date", "0"), **changes)

    def get(self, dn: str) -> dict[str, str] | None:
        try:
            found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"])
        except ldap.NO_SUCH_OBJECT:
            return None
        return {k: v[0].decode() for k, v in found[0][1].items()}

    def entry_uuid(self, dn: str) -> str:
        """The entry's entryUUID (an operational attribute: get() leaves it out)."""
        found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["entryUUID"])
        return found[0][1]["entryUUID"][0].decode()

    def get_all(self, dn: str) -> dict[str, list[str]]:
        """Every value of every attribute (multi-valued ones too); {} if the entry is gone."""
        try:
            found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"])
        except ldap.NO_SUCH_OBJECT:
            return {}
        return {k: [v.decode() for v in vs] for k, vs in found[0][1].items()}

    def wait_mode(self, dn: str, mode: str, timeout: float = DEADLINE) -> dict[str, str]:
        return wait_until(lambda: (e := self.get(dn)) and e.get("sstProvisioningMode") == mode and e,
                          f"{dn} to reach sstProvisioningMode {mode}", timeout)

    def wait_return_value(self, dn: str, value: int, timeout: float = DEADLINE) -> dict[str, str]:
        return wait_until(lambda: (e := self.get(dn)) and e.get("sstProvisioningReturnValue") == str(value) and e,
                          f"{dn} to get sstProvisioningReturnValue {value}", timeout)


def picture(top: Path | str, skip: tuple[Path | str, ...] = ()) -> dict[str, tuple]:
    """Every path under ``top`` (but ``skip``) with kind, owner, mode, device, content or link target.

    Compared before and after an attack: root must not have changed anything in it.
    """
    skipped = {str(p) for p in skip}
    seen = {}
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if path in skipped:
                continue
            info = os.lstat(path)
            content = (os.readlink(path) if stat.S_ISLNK(info.st_mode)
                       else Path(path).read_bytes() if stat.S_ISREG(info.st_mode) else None)
            seen[path] = (stat.S_IFMT(info.st_mode), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode),
                          info.st_rdev, content)
    return seen


def as_user(uid: int, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``uid`` (its own group, no others): what a customer could do on the host.

    With ``cwd`` the command starts there (entered as root, like sshd enters
    a jail), and Path arguments are given relative to it: the customer
    reaches their folders without passing root's private folders above them.
    """
    args = [os.path.relpath(a, cwd) if cwd and isinstance(a, Path) else str(a) for a in argv]
    return subprocess.run(args, user=uid, group=uid, extra_groups=[], cwd=cwd,
                          capture_output=True, text=True, timeout=DEADLINE)


STAMP = re.compile(r"^\d{8}T\d{6}Z$")


def assert_done(entry: dict[str, str], mode: str) -> None:
    """The entry shows a finished request: mode, UTC stamp in state, return value 0."""
    assert entry["sstProvisioningMode"] == mode
    assert STAMP.match(entry["sstProvisioningState"]), entry["sstProvisioningState"]
    assert entry["sstProvisioningReturnValue"] == "0"
