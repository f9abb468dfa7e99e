"""The [Backup] section as typed settings, with the start-up checks."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provisioning import resources
from provisioning.config import Config
from provisioning.transport import Transport

# Where the package ships this plugin's files (the default rsnapshot template).
SHIPPED = "Provisioning/Backup"
# A JAIL_PROGRAMS word without a slash: a file name a PATH lookup can find.
PROGRAM_NAME = re.compile(r"[A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Settings:
    config_file: str          # RSNAPSHOT_CONFIG_FILE, with %uid%
    set_quota_cmd: str
    create_chroot_cmd: str
    mountpoint: str
    template: Path
    rsnapshot_cmd: str
    configtest: str           # cached | always
    backup_root: str
    delete_data: str          # archive | keep | remove
    archive_dir: str
    min_id: int
    jail_programs: list[str]
    jail_link_limit: int
    jail_check_seconds: float
    jail_relink_rate: float

    @classmethod
    def from_config(cls, config: Config) -> "Settings":
        b = config.service["Backup"]
        root = b["BACKUP_ROOT"].rstrip("/") or "/"
        return cls(b["RSNAPSHOT_CONFIG_FILE"], b["SET_QUOTA_CMD"], b["CREATE_CHROOT_CMD"].strip(),
                   b["MOUNTPOINT"], find_template(b["RSNAPSHOT_TEMPLATE"], config.directory),
                   b["RSNAPSHOT_CMD"], b["CONFIGTEST"], root, b["DELETE_DATA"],
                   (b["ARCHIVE_DIR"] or root.rstrip("/") + "/archive").rstrip("/"), b["MIN_ID_NUMBER"],
                   b["JAIL_PROGRAMS"].split(), b["JAIL_LINK_LIMIT"], b["JAIL_CHECK_SECONDS"],
                   b["JAIL_RELINK_RATE"])


def find_template(name: str, config_dir: Path) -> Path:
    """RSNAPSHOT_TEMPLATE: absolute, or next to the service config, or shipped with the package."""
    path = Path(name)
    if path.is_absolute():
        return path
    for folder in (config_dir, resources.etc_path(SHIPPED)):
        if (folder / path).is_file():
            return folder / path
    return config_dir / path


def problems(settings: Settings, config: Config, transport: Transport) -> list[str]:
    """Start-up checks of [Backup]: each problem names the file and key."""
    where = f"{config.path}: [Backup]"
    found = []
    name = Path(settings.config_file).name
    if "%uid%" not in name:
        found.append(f"{where} RSNAPSHOT_CONFIG_FILE: the file name must contain %uid%")
    checks = [("RSNAPSHOT_CONFIG_FILE", str(Path(settings.config_file).parent), "folder"),
              ("SET_QUOTA_CMD", settings.set_quota_cmd, "program"),
              ("RSNAPSHOT_CMD", settings.rsnapshot_cmd, "program"),
              ("BACKUP_ROOT", settings.backup_root, "folder"),
              ("MOUNTPOINT", settings.mountpoint, "folder")]
    if settings.create_chroot_cmd:        # empty: the shipped builder, in the daemon
        if not settings.create_chroot_cmd.startswith("/"):
            found.append(f'{where} CREATE_CHROOT_CMD: "{settings.create_chroot_cmd}" is not an absolute path')
        else:
            checks.insert(2, ("CREATE_CHROOT_CMD", settings.create_chroot_cmd, "program"))
    for program in settings.jail_programs:
        if not program.startswith("/") and not PROGRAM_NAME.fullmatch(program):
            found.append(f"{where} JAIL_PROGRAMS: {program!r} is neither a program name nor an absolute path")
    if not settings.jail_programs:
        found.append(f"{where} JAIL_PROGRAMS: names no program (the default is: sh rsync)")
    for key, path, kind in checks:
        try:
            present = transport.exists(path)
        except OSError as err:
            found.append(f"{where} {key}: cannot check {path}: {err}")
            continue
        if not present:
            found.append(f"{where} {key}: {kind} {path} does not exist")
    if settings.backup_root == "/":
        found.append(f"{where} BACKUP_ROOT: must not be /")
    if not settings.archive_dir.startswith("/"):
        found.append(f"{where} ARCHIVE_DIR: {settings.archive_dir} is not an absolute path")
    if not settings.template.is_file():
        found.append(f"{where} RSNAPSHOT_TEMPLATE: {settings.template} does not exist")
    return found
