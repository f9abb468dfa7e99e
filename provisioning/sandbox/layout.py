"""A scratch folder laid out like a backup host, with configurations pointing into it.

Used by the sandbox (``python -m provisioning.sandbox``) and by the tests: all
paths a daemon touches (backup root, rsnapshot configurations, cookie, lock)
lie under one root folder, and setquota is a stand-in that records its argv,
because the kernel here has no quota support.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = "/tmp/provisioning-sandbox"


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

    def create(self) -> None:
        for folder in (self.service_config.parent, self.backup_root, self.rsnapshot_dir,
                       self.cookie.parent, self.setquota.parent, self.data):
            folder.mkdir(parents=True, exist_ok=True)
        write_recorder(self.setquota, self.setquota_log)


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
                   "CREATE_CHROOT_CMD": create_chroot_cmd or REPO / "bin/prov-backup-create-home",
                   "MOUNTPOINT": "/", "BACKUP_ROOT": layout.backup_root},
    }


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
