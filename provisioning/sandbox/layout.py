"""A scratch folder laid out like a backup host, with configurations pointing into it.

Used by the sandbox (``python -m provisioning.sandbox``) and by the tests: all
paths a daemon touches (backup root, rsnapshot configurations, cookie, lock)
lie under one root folder, and setquota is a stand-in that records its argv,
because the kernel here has no quota support.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

# The source checkout this module lies in, for the tests that run the bin/
# wrappers of a checkout. Meaningless in an installed package: the sandbox
# itself uses the installed commands (installed_command).
REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = "/tmp/provisioning-sandbox"
# Written into every folder the sandbox makes: only such a folder is ever deleted.
MARKER = ".provisioning-sandbox"


class SandboxRefused(Exception):
    """The sandbox folder is not the sandbox's to delete or use."""


@dataclass(frozen=True)
class SandboxLayout:
    root: Path

    @classmethod
    def default(cls) -> "SandboxLayout":
        return cls(Path(os.environ.get("PROVISIONING_SANDBOX", DEFAULT_ROOT)))

    @property
    def service_config(self) -> Path:
        return self.root / "etc/Provisioning/Backup/Rsnapshot.conf"

    @property
    def global_config(self) -> Path:
        return self.root / "etc/Provisioning/Global.conf"

    @property
    def backup_root(self) -> Path:
        return self.root / "var/backup"

    @property
    def rsnapshot_dir(self) -> Path:
        return self.root / "etc/rsnapshot"

    @property
    def cookie(self) -> Path:
        return self.root / "var/lib/provisioning/Backup-Rsnapshot.cookie"

    @property
    def setquota(self) -> Path:
        return self.root / "bin/setquota"

    @property
    def setquota_log(self) -> Path:
        """One line per setquota call: its argv, TAB-separated."""
        return self.root / "setquota.calls"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def pid_file(self) -> Path:
        """The running sandbox's PID: tools use its configuration only while it runs."""
        return self.root / "sandbox.pid"

    def reset(self) -> None:
        """Make way for a new sandbox: delete the old one, but only a folder the sandbox made.

        A folder without the marker is refused (SandboxRefused), unless it is
        empty; a symbolic link is refused whatever it points at.
        """
        root = self.root
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise SandboxRefused(f"{root} is a symbolic link; the sandbox uses only a folder of its own: "
                                 f"set PROVISIONING_SANDBOX to a new folder")
        if not stat.S_ISDIR(info.st_mode):
            raise SandboxRefused(f"{root} exists and is not a folder: set PROVISIONING_SANDBOX to a new folder")
        try:
            marker = os.lstat(self.marker)
        except FileNotFoundError:
            marker = None
        if marker is not None and stat.S_ISREG(marker.st_mode):
            shutil.rmtree(root)
            return
        if any(root.iterdir()):
            raise SandboxRefused(f"{root} exists and was not made by the sandbox (it has no {MARKER} file): "
                                 f"refusing to delete what is in it. Set PROVISIONING_SANDBOX to a new "
                                 f"folder, or empty {root} yourself")

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.marker.exists():
            self.marker.write_text(f"Made by provisioning.sandbox on {dt.datetime.now():%Y-%m-%d %H:%M:%S}.\n"
                                   f"The sandbox deletes this folder when it starts again here.\n")
        for folder in (self.service_config.parent, self.backup_root, self.rsnapshot_dir,
                       self.cookie.parent, self.setquota.parent, self.data):
            folder.mkdir(parents=True, exist_ok=True)
        write_recorder(self.setquota, self.setquota_log)

    def running_pid(self) -> int | None:
        """The PID of the sandbox that runs in this folder, or None when none does."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"provisioning.sandbox" in cmdline else None


def write_recorder(path: Path, log: Path, then: str | None = None) -> None:
    """A stand-in command that appends its argv to ``log``, then exits 0 or runs ``then``.

    If ``<log>.exit`` exists, its content is the exit code instead: tests
    make the command fail that way. With ``then``, the real command runs
    with the same arguments after the call was recorded.
    """
    finish = f'exec {shlex.quote(then)} "$@"' if then else "exit 0"
    script = f"""#!/bin/sh
# Stand-in that records how it was called (one line per call, TAB-separated argv).
log={shlex.quote(str(log))}
# One append per call: concurrent callers (two daemons) must not interleave.
line='' sep=''
for arg in "$0" "$@"; do line=$line$sep$arg; sep='\t'; done
printf '%s\\n' "$line" >> "$log"
[ -f "$log.exit" ] && exit "$(cat "$log.exit")"
{finish}
"""
    path.write_text(script)
    path.chmod(0o755)


def render_ini(sections: dict[str, dict[str, object]]) -> str:
    """INI text in the daemon's format (values are written as they are)."""
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in keys.items())
        out.append("")
    return "\n".join(out)


def service_sections(layout: SandboxLayout, *, uri: str, bind_dn: str, password: str,
                     subtree: str, create_chroot_cmd: str | None = None) -> dict[str, dict[str, object]]:
    """The service configuration of a sandboxed Backup/Rsnapshot daemon."""
    return {
        "Global": {"LOG_DEBUG": 1, "LOG_INFO": 1, "LOG_WARNING": 1, "LOG_ERR": 1, "ENVIRONMENT": "sandbox"},
        "Database": {"BACKEND": "LDAP", "SERVER": uri, "ADMIN_USER": bind_dn, "ADMIN_PASSWORD": password,
                     "SERVICE_SUBTREE": subtree, "COOKIE_FILE": layout.cookie,
                     "DEFAULT_COOKIE": "rid=001,csn=",
                     "SEARCH_FILTER": "(&(entryCSN>=%entryCSN%)(objectClass=*))", "TIMEOUT": 10},
        "Service": {"MODUS": "selfcare", "TRANSPORTAPI": "LocalCLI", "SERVICE": "Backup",
                    "TYPE": "Rsnapshot", "SYSLOG": "Backup-Rsnapshot"},
        "Gateway": {"HOST": "localhost", "USER": "provisioning", "DSA_FILE": "none"},
        "Backup": {"RSNAPSHOT_CONFIG_FILE": layout.rsnapshot_dir / "rsnapshot.conf.%uid%",
                   "SET_QUOTA_CMD": layout.setquota,
                   "CREATE_CHROOT_CMD": create_chroot_cmd or installed_command("prov-backup-create-home"),
                   "MOUNTPOINT": "/", "BACKUP_ROOT": layout.backup_root},
    }


def installed_command(name: str) -> Path:
    """A console script of this package: the one installed next to the running Python.

    That is the virtualenv's bin/ (a checkout's .venv too), so the sandbox
    runs the commands of the installation it was started from; else the
    first on PATH.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    return Path(found) if found else beside


def global_sections(*, sleep: float = 1, attempts: int = 3,
                    operation_sleep: float = 1, operation_attempts: int = 10) -> dict[str, dict[str, object]]:
    """Global.conf with short retry intervals: a sandbox should not make anyone wait."""
    return {
        "Global": {"LOG_DEBUG": 0, "LOG_INFO": 1, "LOG_WARNING": 1, "LOG_ERR": 1,
                   "SLEEP": sleep, "ATTEMPTS": attempts},
        "Operation Mode": {"SLEEP": operation_sleep, "ATTEMPTS": operation_attempts},
        "Mail": {"SENDTO": "", "HOST": "", "PORT": 587},
    }


def write_configs(layout: SandboxLayout, service: dict, global_: dict | None = None) -> None:
    layout.service_config.write_text(render_ini(service))
    layout.service_config.chmod(0o600)   # it holds the LDAP password
    layout.global_config.write_text(render_ini(global_ or global_sections()))
