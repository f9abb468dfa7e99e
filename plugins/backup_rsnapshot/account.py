"""A backup account as read from its entry, and where its files live.

Everything here is derived from directory data, which the daemon does not
trust: values are checked before any of them reaches a command line or a
path, and every path must resolve inside BACKUP_ROOT.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import ldap.dn

from provisioning.api import Entry, Transport

from provisioning_backup_rsnapshot.codes import Code, StepError

# rsnapshot retain levels, in the order they must appear, and their attributes.
LEVELS = (("hourly", "sstBackupIntervalHourly"), ("daily", "sstBackupIntervalDaily"),
          ("weekly", "sstBackupIntervalWeekly"), ("monthly", "sstBackupIntervalMonthly"),
          ("yearly", "sstBackupIntervalYearly"))
# What an account is made of, for the daemon to read of each entry (hook provisioning_attributes):
# who it is, where it lives, which backup server serves it, its quota and its levels. Nothing else
# is read, passed on or kept in the store (no password hash, no portal data).
ATTRIBUTES = ("uid", "uidNumber", "gidNumber", "homeDirectory", "host", "sstQuota",
              *(name for _, name in LEVELS))
MAX_ID = 4_294_967_294          # (uid_t)-1 is "no change" to chown
UID = re.compile(r"[0-9]{1,10}")
# ASCII digits only: str.isdigit() also says yes to "²", which int() refuses.
NUMBER = re.compile(r"[0-9]+")
# Paths end up in rsnapshot's TAB-separated file and in argv: no blanks, no
# control characters, nothing a shell or rsnapshot could read twice.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
JAIL_NAME = "chroot"
# Attributes that say who the account is and where it lives: one value each.
IDENTITY = ("uid", "uidNumber", "gidNumber", "homeDirectory")
# In the account directory, next to the jail (both root's, out of the customer's reach).
SNAPSHOTS_NAME = "snapshots"
MARKER_NAME = ".entryUUID"


@dataclass(frozen=True)
class Account:
    """The parts of a backup account entry the plugin works with."""

    dn: str
    uid: str
    uid_number: int
    gid_number: int
    quota_bytes: int | None
    retain: tuple[tuple[str, int], ...]   # (level, count) for counts above 0, in LEVELS order
    home_directory: str | None

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid_number, self.gid_number


def parse(entry: Entry, min_id: int, *, need_service_data: bool = True) -> Account:
    """The account in ``entry``, or StepError naming the first bad value.

    ``need_service_data`` is False for delete, which needs only who and where.
    """
    uid, uid_number, gid_number = entry.get("uid"), entry.get("uidNumber"), entry.get("gidNumber")
    missing = [n for n, v in (("uid", uid), ("uidNumber", uid_number), ("gidNumber", gid_number)) if v is None]
    if missing:
        raise StepError(Code.USER_NOT_PRESENT_IN_BACKEND,
                        f"the entry has no {', '.join(missing)}: not a backup account (posixAccount)")
    _one_identity(entry)
    if not UID.fullmatch(uid):
        raise StepError(Code.INVALID_ACCOUNT_DATA, f"uid {uid!r} is not 1 to 10 digits")
    _dn_names(entry.dn, uid)
    numbers = [_id_number(name, value, min_id) for name, value in
               (("uidNumber", uid_number), ("gidNumber", gid_number))]
    quota = _quota(entry.get("sstQuota")) if need_service_data else None
    retain = _retain(entry) if need_service_data else ()
    return Account(entry.dn, uid, numbers[0], numbers[1], quota, retain, entry.get("homeDirectory"))


def _one_identity(entry: Entry) -> None:
    """One value each for what says who the account is and where it lives.

    uid is multi-valued in the core schema: with two values, which account an
    entry means would depend on the order the server returns them in.
    """
    several = [name for name in IDENTITY if len(entry.values(name)) > 1]
    if several:
        raise StepError(Code.AMBIGUOUS_IDENTITY,
                        f"{', '.join(several)} must have exactly one value: "
                        + "; ".join(f"{name} is {entry.values(name)}" for name in several))


def _dn_names(dn: str, uid: str) -> None:
    """The DN's first RDN must be ``uid=<the entry's uid>`` and nothing else.

    Another entry (elsewhere in the subtree) naming the same uid in its
    attribute would otherwise act on that uid's account.
    """
    try:
        rdn = ldap.dn.str2dn(dn)[0]
    except (ldap.DECODING_ERROR, IndexError):
        raise StepError(Code.AMBIGUOUS_IDENTITY, "the DN cannot be parsed") from None
    if len(rdn) != 1 or rdn[0][0].lower() != "uid" or rdn[0][1] != uid:
        named = "+".join(f"{kind}={value}" for kind, value, _ in rdn)
        raise StepError(Code.AMBIGUOUS_IDENTITY, f"the DN names {named!r}, not uid={uid} (the entry's uid)")


def _id_number(name: str, value: str, min_id: int) -> int:
    if not NUMBER.fullmatch(value) or not min_id <= int(value) <= MAX_ID:
        raise StepError(Code.INVALID_ACCOUNT_DATA,
                        f"{name} {value!r} is not a number from {min_id} to {MAX_ID}")
    return int(value)


def _quota(value: str | None) -> int:
    if value is None:
        raise StepError(Code.INVALID_ACCOUNT_DATA, "sstQuota is missing")
    if not NUMBER.fullmatch(value):
        raise StepError(Code.INVALID_ACCOUNT_DATA, f"sstQuota {value!r} is not a number of bytes >= 1")
    # setquota reads a limit of 0 as "no limit at all": passing it on would
    # give the account unlimited space, the opposite of what 0 bytes says.
    if int(value) == 0:
        raise StepError(Code.INVALID_ACCOUNT_DATA,
                        "sstQuota 0 would mean no limit at all for setquota: give at least 1 byte")
    return int(value)


def _retain(entry: Entry) -> tuple[tuple[str, int], ...]:
    levels = []
    for level, attribute in LEVELS:
        value = entry.get(attribute, "0")
        if not NUMBER.fullmatch(value) or int(value) > 99:
            raise StepError(Code.INVALID_ACCOUNT_DATA, f"{attribute} {value!r} is not a number from 0 to 99")
        if int(value):
            levels.append((level, int(value)))
    if not levels:
        raise StepError(Code.INVALID_ACCOUNT_DATA,
                        "every sstBackupInterval* is 0: rsnapshot needs at least one level to keep")
    return tuple(levels)


# ------------------------------------------------------------------ layout

@dataclass(frozen=True)
class Layout:
    """Where an account lives on the host.

    ``directory`` holds all of the account and is what delete archives: the
    place of its uid, ``BACKUP_ROOT/<last digit>/<last 3>/<digits 2-4>/<uid>``,
    so two accounts' directories never nest. In it, all root's::

        directory/          root 0755
          .entryUUID        root 0600   the entry that owns the account (ownership.py)
          snapshots/        root 0700   rsnapshot's snapshot_root, out of the customer's reach
          chroot/           root 0755   the jail (sshd's ChrootDirectory): ``jail``
            home/<uid>/     root 0755   the home, ``home`` as seen inside the jail
              incoming/     the account's 0700: the only folder the customer can write

    The jail may also be the account directory itself (homeDirectory
    ``<directory>/./<home>``).
    """

    jail: str
    home: str
    directory: str

    @property
    def home_path(self) -> str:
        """The home directory as seen from the host."""
        return self.jail + self.home

    @property
    def snapshot_root(self) -> str:
        return f"{self.directory}/{SNAPSHOTS_NAME}/"

    @property
    def marker(self) -> str:
        return f"{self.directory}/{MARKER_NAME}"

    @property
    def incoming(self) -> str:
        return self.home_path + "/incoming/"

    @property
    def old_snapshot_root(self) -> str:
        """Where snapshots were before: inside the home, which the customer owned."""
        return self.home_path + "/.snapshots"

    @property
    def chain(self) -> list[str]:
        """Every folder from the account directory down to the home: all root's."""
        folders, path = [self.directory], self.directory
        for part in (self.jail[len(self.directory):] + self.home).strip("/").split("/"):
            path = f"{path}/{part}"
            folders.append(path)
        return folders

    def above(self, backup_root: str) -> list[str]:
        """BACKUP_ROOT and the folders between it and the account directory."""
        folders, path = [backup_root], backup_root
        for part in self.directory[len(backup_root):].strip("/").split("/")[:-1]:
            path = f"{path}/{part}"
            folders.append(path)
        return folders


def pattern_directory(uid: str, backup_root: str) -> str:
    """``<root>/<last digit>/<last 3 digits>/<digits 2-4>/<uid>`` (needs 4 digits or more)."""
    if len(uid) < 4:
        raise StepError(Code.INVALID_ACCOUNT_DATA,
                        f"uid {uid} is too short for the directory pattern <last digit>/<last 3>/<digits 2-4>/<uid>")
    return f"{backup_root}/{uid[-1]}/{uid[-3:]}/{uid[1:4]}/{uid}"


def layout(account: Account, backup_root: str) -> Layout:
    """The account's Layout from homeDirectory (``<jail>/./<home>``) or the pattern.

    homeDirectory chooses the jail (``<directory>/chroot`` or the directory
    itself) and the home inside it; the account directory is always the
    uid's place in the pattern. A homeDirectory elsewhere is refused (14):
    "inside BACKUP_ROOT and named after the uid" alone would let an entry put
    its account inside another's (in its incoming/, say) or around others.
    """
    expected = pattern_directory(account.uid, backup_root)
    if account.home_directory is None:
        return Layout(f"{expected}/{JAIL_NAME}", f"/home/{account.uid}", expected)
    value = account.home_directory
    if not SAFE_PATH.fullmatch(value) or value.count("/./") != 1:
        raise StepError(Code.INVALID_ACCOUNT_DATA,
                        f"homeDirectory {value!r} is not <jail>/./<home> made of letters, digits, . _ - /")
    jail, home = value.split("/./")
    jail, home = jail.rstrip("/"), "/" + home.strip("/")
    for part in (jail, home):
        if posixpath.normpath(part) != part or ".." in part.split("/"):
            raise StepError(Code.PATH_OUTSIDE_BACKUP_ROOT,
                            f"homeDirectory {value!r} contains '..' or empty components")
    directory = posixpath.dirname(jail) if posixpath.basename(jail) == JAIL_NAME else jail
    if directory != expected:
        raise StepError(Code.ACCOUNT_DIRECTORY_MISPLACED,
                        f"homeDirectory {value!r} puts the account directory at {directory}; "
                        f"uid {account.uid}'s place is {expected}")
    place = Layout(jail, home, directory)
    if home == "/":
        raise StepError(Code.INVALID_ACCOUNT_DATA, f"homeDirectory {value!r}: the home is the jail itself")
    for reserved in (place.snapshot_root.rstrip("/"), place.marker):
        if place.home_path == reserved or _inside(place.home_path, reserved):
            raise StepError(Code.INVALID_ACCOUNT_DATA,
                            f"homeDirectory {value!r}: the home would lie in {reserved}, which is root's")
    return place


def confine(place: Layout, backup_root: str, archive_dir: str, transport: Transport) -> None:
    """StepError unless, with symlinks resolved, the account stays inside BACKUP_ROOT.

    The account directory must lie strictly inside the root, the home inside
    the jail, and the account must neither contain the archive nor lie in it.
    """
    root, directory, jail, home, archive = transport.realpaths(
        [backup_root, place.directory, place.jail, place.home_path, archive_dir])
    problems = []
    if not _inside(directory, root):
        problems.append(f"account directory {place.directory} resolves to {directory}, outside {root}")
    if not (_inside(jail, directory) or jail == directory):
        problems.append(f"jail {place.jail} resolves to {jail}, outside {directory}")
    if not _inside(home, jail):
        problems.append(f"home {place.home_path} resolves to {home}, outside the jail {jail}")
    if _inside(archive, directory) or archive == directory or _inside(directory, archive):
        problems.append(f"account directory {directory} overlaps the archive {archive}")
    if problems:
        raise StepError(Code.PATH_OUTSIDE_BACKUP_ROOT, "; ".join(problems))


def _inside(path: str, folder: str) -> bool:
    """Strictly inside: ``folder`` itself does not count."""
    return path.startswith(folder.rstrip("/") + "/")
