"""Backup/Rsnapshot under test: a backup host in a temp folder and backup account entries.

Built on provisioning.testing (slapd, entries, daemon), as any plugin's tests
would be; used by this project's tests (t/helpers.py) and benchmarks (bench/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.testing import (
    REPO, EditableConfigs, Entries, SandboxLayout, encode, global_sections, service_sections, write_recorder,
)

__all__ = ["BackupEntries", "BackupHost", "account_attrs", "home_directory"]


class BackupHost(EditableConfigs):
    """One backup host: folders, stand-in commands and configuration files."""

    default_workers: int | None = None      # [Service] WORKERS of every new host (None: the default)

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

    @property
    def root(self) -> Path:
        return self.layout.root

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


def _calls(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t")[1:] for line in path.read_text().splitlines() if line]


def home_directory(backup_root: Path | str, uid: str) -> str:
    """homeDirectory of the stoney layout: ``<account dir>/chroot/./home/<uid>``."""
    return f"{backup_root}/{uid[-1]}/{uid[-3:]}/{uid[1:4]}/{uid}/chroot/./home/{uid}"


def account_attrs(uid: str, backup_root: Path | str, **overrides: Any) -> dict[str, list[bytes]]:
    """A backup account entry as the portal writes it; overrides replace (None drops)."""
    attrs: dict[str, Any] = {
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
    return encode(attrs)


class BackupEntries(Entries):
    """Entries whose add() writes a backup account (account_attrs) below the subtree."""

    def __init__(self, slapd, subtree: str, backup_root: Path) -> None:
        super().__init__(slapd, subtree)
        self.backup_root = backup_root

    def attributes(self, uid: str, **overrides: Any) -> dict[str, list[bytes]]:
        return account_attrs(uid, self.backup_root, **overrides)
