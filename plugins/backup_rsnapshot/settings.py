"""The [Backup] section as typed settings, with the start-up checks."""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from provisioning.api import ServiceContext, Transport, etc_path

# Where the package ships this plugin's files (the default rsnapshot template).
SHIPPED = "Provisioning/Backup"
# A JAIL_PROGRAMS word without a slash: a file name a PATH lookup can find.
PROGRAM_NAME = re.compile(r"[A-Za-z0-9._+-]+")
# Folders of the operating system. BACKUP_ROOT may be none of them nor hold one:
# an account's place or the archive would then sit among the system's files.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt",
                  "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/usr/bin",
                  "/usr/lib", "/usr/local", "/usr/sbin", "/var/cache", "/var/lib", "/var/log",
                  "/var/spool", "/var/tmp")


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
    quota_report_cmd: str = ""

    @classmethod
    def of(cls, ctx: ServiceContext) -> "Settings":
        """[Backup] of the service configuration the plugin runs with."""
        b = ctx.section("Backup")
        # Normalised once, here: every rule and every path built from them
        # sees the one spelling ("/./", "//." and "/usr/.." are all "/").
        root = normal_path(b["BACKUP_ROOT"])
        return cls(b["RSNAPSHOT_CONFIG_FILE"], b["SET_QUOTA_CMD"], b["CREATE_CHROOT_CMD"].strip(),
                   b["MOUNTPOINT"], find_template(b["RSNAPSHOT_TEMPLATE"], ctx.config_dir),
                   b["RSNAPSHOT_CMD"], b["CONFIGTEST"], root, b["DELETE_DATA"],
                   normal_path(b["ARCHIVE_DIR"] or posixpath.join(root, "archive")), b["MIN_ID_NUMBER"],
                   b["JAIL_PROGRAMS"].split(), b["JAIL_LINK_LIMIT"], b["JAIL_CHECK_SECONDS"],
                   b["JAIL_RELINK_RATE"], b["QUOTA_REPORT_CMD"].strip())


def normal_path(path: str) -> str:
    """``path`` without ``.``, ``..``, repeated or trailing slashes (``//`` too).

    posixpath.normpath keeps a leading ``//`` (POSIX leaves its meaning to
    the system); on Linux it is ``/``, and a rule comparing with "/" must
    see it so.
    """
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("/") else normal


def holds_system_folder(root: str) -> str | None:
    """The system folder ``root`` is or lies above (``/`` for ``/``), or None."""
    for folder in SYSTEM_FOLDERS:
        if folder == root or folder.startswith(root.rstrip("/") + "/"):
            return folder
    return None


def find_template(name: str, config_dir: Path) -> Path:
    """RSNAPSHOT_TEMPLATE: absolute, or next to the service config, or shipped with the package."""
    path = Path(name)
    if path.is_absolute():
        return path
    for folder in (config_dir, etc_path(SHIPPED)):
        if (folder / path).is_file():
            return folder / path
    return config_dir / path


def problems(settings: Settings, ctx: ServiceContext) -> list[str]:
    """Start-up checks of [Backup]: each problem names the file and key."""
    where = f"{ctx.config_path}: [Backup]"
    transport = ctx.transport
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
    found.extend(f"{where} BACKUP_ROOT: {problem}" for problem in _root_problems(settings.backup_root, transport))
    if not settings.archive_dir.startswith("/"):
        found.append(f"{where} ARCHIVE_DIR: {settings.archive_dir} is not an absolute path")
    if not settings.template.is_file():
        found.append(f"{where} RSNAPSHOT_TEMPLATE: {settings.template} does not exist")
    return found


def _root_problems(root: str, transport: Transport) -> list[str]:
    """BACKUP_ROOT as written (normalised), then with links resolved: not /, no system folder."""
    try:
        resolved = transport.realpaths([root])[0]
    except OSError:
        resolved = root          # the existence check says why
    for path, how in ((root, ""), (resolved, f" (it resolves to {resolved})")):
        if path == "/":
            return [f"must not be /{how}"]
        system = holds_system_folder(path)
        if system:
            return [f"must not be or hold the system folder {system}{how}"]
    return []
