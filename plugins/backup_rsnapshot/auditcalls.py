"""The audit's one pass over the host: what ``Transport.call`` runs where the files are.

Reads only. LocalCLI calls these in the daemon's (or the audit command's)
process; CLISSH in its helper on the gateway, which is sent this file's
source (with the jail modules before it in auditor.MODULES): standard
library, Python 3.7+. Results are JSON values.

- ``accounts``: the account directories of one bucket of BACKUP_ROOT (or of
  one uid), each with its owner marker, what is at the paths an account's
  layout uses, and how far its jail is from the current jail image;
- ``configs``: the rsnapshot configurations, each as its SHA-256 (the
  caller compares it with what the template renders now), or what is there
  instead of a regular file;
- ``quotas``: the users' limits, from one run of QUOTA_REPORT_CMD
  (quotareport.py: its report is read here whole, only the limits travel).

Nothing is followed: every folder is opened with O_NOFOLLOW relative to the
one above it, so a link a customer planted is reported as a link, and what
it points at is never looked at.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import stat

try:
    from provisioning_backup_rsnapshot import jailcalls, quotareport, relink as relinking
    from provisioning_backup_rsnapshot.jailfs import Refused, walk
except ImportError:             # in the gateway's helper: loaded under their own names
    import jailcalls  # type: ignore[no-redef]
    import quotareport  # type: ignore[no-redef]
    import relink as relinking  # type: ignore[no-redef]
    from jailfs import Refused, walk  # type: ignore[no-redef]

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MARKER_NAME = ".entryUUID"      # account.MARKER_NAME
CONFIG_MAX = 1 << 20            # a configuration larger than this is read no further (it differs anyway)


def layout_paths(uid: str) -> list:
    """The paths (relative to the account directory) an account of the stoney layout uses, top down:
    the jail ``chroot`` (or the directory itself) with ``home/<uid>`` in it."""
    found = []
    for jail in ("chroot/", ""):
        found += [jail + "home", jail + "home/" + uid, jail + "home/" + uid + "/incoming",
                  jail + "home/" + uid + "/.snapshots"]
    return ["chroot"] + found + ["snapshots", MARKER_NAME]


def accounts(backup_root: str, bucket: str, only: str = "") -> dict:
    """The account directories ``backup_root/<bucket>/*/*/<uid>`` (with ``only``: that uid's alone).

    {"accounts": [{"uid", "path", "dir": node, "nodes": {relative path: node}, "marker": text or None,
    "jail": state or None}, ...], "folders": {path: node}} where a node is [kind, uid, gid, mode] or
    None; ``folders`` holds BACKUP_ROOT and each folder on the way to an account directory.
    """
    found, folders = [], {}
    for directory in _directories(backup_root, bucket, only, folders):
        record = _account(directory)
        if record is not None:
            found.append(record)
    _jails(backup_root, found)
    return {"accounts": found, "folders": folders}


def configs(folder: str, prefix: str, suffix: str, only: str = "") -> dict:
    """``folder/<prefix><digits><suffix>``: {uid: [kind, sha256 or None]}; kind "regular file" or what is
    there instead (a link is not followed)."""
    try:
        fd = os.open(folder, O_DIR)
    except FileNotFoundError:
        return {}
    found = {}
    try:
        for name in _names(fd):
            uid = name[len(prefix):len(name) - len(suffix)] if name.startswith(prefix) and name.endswith(suffix) \
                else ""
            if not uid.isdigit() or not uid.isascii() or only and uid != only:
                continue
            found[uid] = _config(fd, name)
    finally:
        os.close(fd)
    return found


def quotas(cmd: str, mountpoint: str, timeout: float) -> dict:
    """{"limits": {uidNumber: [soft, hard]}} from QUOTA_REPORT_CMD, or {"why": reason} (see quotareport.run)."""
    return quotareport.run(cmd, mountpoint, timeout)


# ------------------------------------------------------------------ walking

def _directories(backup_root: str, bucket: str, only: str, folders: dict):
    """The account directories of one bucket, every folder on the way recorded in ``folders``."""
    folders[backup_root] = _node_at(backup_root)
    if only:
        if not (only.isdigit() and only.isascii() and len(only) >= 4):
            return                      # no account of the layout has that name
        parts = [only[-1], only[-3:], only[1:4]]
        path = backup_root
        for part in parts:
            path = posixpath.join(path, part)
            folders[path] = _node_at(path)
        target = posixpath.join(path, only)
        if _is_dir(folders[path]) and _is_dir(_node_at(target)):
            yield target
        return
    top = posixpath.join(backup_root, bucket)
    folders[top] = _node_at(top)
    for middle in _digit_folders(top, 3, folders):
        for upper in _digit_folders(middle, 3, folders):
            for account in _digit_folders(upper, None, {}):
                yield account


def _digit_folders(parent: str, digits, folders: dict):
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if not name.isdigit() or not name.isascii() or digits is not None and len(name) != digits:
            continue
        path = posixpath.join(parent, name)
        node = _node_at(path)
        if digits is not None:
            folders[path] = node
        if _is_dir(node):               # a link is recorded, never entered
            yield path


def _account(directory: str):
    """One account directory as the audit needs it; None when it went away meanwhile."""
    uid = posixpath.basename(directory)
    try:
        fd = os.open(directory, O_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:                # a link put there since it was listed: ELOOP
        return {"uid": uid, "path": directory, "dir": _node_at(directory), "nodes": {}, "marker": None,
                "jail": None, "error": str(err)}
    try:
        record = {"uid": uid, "path": directory, "dir": _node(os.fstat(fd)), "nodes": {}, "marker": None,
                  "jail": None}
        for relative in layout_paths(uid):
            record["nodes"][relative] = _node_below(fd, relative)
        record["marker"] = jailcalls.read_marker(MARKER_NAME, dir_fd=fd)
    finally:
        os.close(fd)
    return record


def _node_below(fd: int, relative: str):
    """The node at ``relative`` below the folder ``fd``; None when it, or a folder above it, is not there.

    A link or a file on the way ends the walk there: what lies behind a link is not looked at."""
    *folders, name = relative.split("/")
    held = []
    try:
        current = fd
        for part in folders:
            try:
                current = os.open(part, O_DIR, dir_fd=current)
            except (FileNotFoundError, NotADirectoryError, OSError):
                return None
            held.append(current)
        try:
            return _node(os.stat(name, dir_fd=current, follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return None
    finally:
        for each in held:
            os.close(each)


def _jails(backup_root: str, found: list) -> None:
    """Each account's jail against the current jail image (None: no image yet, or no programs in it)."""
    indexes = {}
    for record in found:
        jail = posixpath.join(record["path"], "chroot")
        if not _is_dir(record["nodes"].get("chroot")):
            jail = record["path"]
        try:
            top = jailcalls.jailimage.top_for(backup_root, jail)
            if top not in indexes:
                indexes[top] = jailcalls.image_index(top)
            index = indexes[top]
            if index is None:
                continue
            with walk(jail, make=False) as folder:
                plan = relinking.plan(index, folder)
        except FileNotFoundError:
            continue
        except (Refused, OSError) as err:
            record["jail"] = "refused: %s" % err
            continue
        if plan.state != relinking.NONE:
            record["jail"] = plan.state


def _config(fd: int, name: str) -> list:
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        return ["gone", None]           # removed while the folder was read
    except OSError:                     # a link (ELOOP), or no permission: say what is there
        try:
            return [_kind(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode), None]
        except OSError:
            return ["gone", None]
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            return [_kind(info.st_mode), None]
        digest = hashlib.sha256()
        left = CONFIG_MAX
        while left > 0:
            chunk = os.read(handle, min(left, 65536))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        return ["regular file", digest.hexdigest()]
    finally:
        os.close(handle)


def _names(fd: int) -> list:
    return sorted(entry.name for entry in os.scandir(fd))


def _node_at(path: str):
    try:
        return _node(os.lstat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _node(info: os.stat_result) -> list:
    return [_kind(info.st_mode), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"),
                       (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "special file"


def _is_dir(node) -> bool:
    return node is not None and node[0] == "directory"
