"""The jail work done where the jails are: the functions the daemon calls through ``Transport.call``.

LocalCLI calls them in the daemon's own process; CLISSH in its helper on the
gateway, which is sent the source of MODULES once and keeps it (no new
interpreter per account either way). Arguments and results are JSON values.
A refusal (a link or a foreign folder in the way, bad arguments) is a result,
``{"refused": why}``; an OSError is raised, and the transport carries it back.

- ``build``: the shipped CREATE_CHROOT_CMD (chroot.py), its programs linked
  from the jail image;
- ``look``: whether the host's programs changed, and a new image if so;
- ``survey``: the account directories of one bucket of BACKUP_ROOT, each
  with its owner marker and how far its jail is from the current image;
- ``relink``: move one jail to the current image (relink.py);
- ``prune``: remove the old images nothing links to any more.

Standard library, Python 3.7+ (the gateway's python3).
"""
from __future__ import annotations

import os
import posixpath
import stat
import threading
import time

try:
    from provisioning_backup_rsnapshot import jailimage, relink as relinking
    from provisioning_backup_rsnapshot.chroot import BadArguments, build_jail
    from provisioning_backup_rsnapshot.jailfs import Refused, walk
except ImportError:             # in the gateway's helper: loaded under their own names
    import jailimage  # type: ignore[no-redef]
    import relink as relinking  # type: ignore[no-redef]
    from chroot import BadArguments, build_jail  # type: ignore[no-redef]
    from jailfs import Refused, walk  # type: ignore[no-redef]

MARKER_NAME = ".entryUUID"      # account.MARKER_NAME: the owner marker (ownership.py)
JAIL_NAME = "chroot"            # account.JAIL_NAME
MARKER_MAX = 128
# What a jail holds at its top besides programs (the home's first folder under /home).
NOT_PROGRAMS = ("home", "dev", "etc")


def build(kind: str, argv: list, images: dict | None) -> dict:
    """``kind`` chroot or home, ``argv`` as CREATE_CHROOT_CMD gets it; ``images``: {"backup_root",
    "programs", "limit"} to link the programs from (None: copies). {"linked": ...} or {"refused": ...}."""
    def link(jail):
        store = _store(jailimage.top_for(images["backup_root"], jail.path))
        jailimage.ensure(store, images["programs"], images["limit"])
        return relinking.move(store, jail, images["limit"], time.time(), fill=True)
    try:
        return {"linked": build_jail(kind, argv, link if images else None)}
    except BadArguments as err:
        return {"refused": str(err), "usage": True}
    except Refused as err:
        return {"refused": str(err)}


def programs(names: list) -> dict:
    """Where each JAIL_PROGRAMS word is on this host, for --check (changes nothing): {name:
    {"paths": [the program, a script's interpreters]}, {"missing": True} or {"refused": why}}."""
    found = {}
    for name in names:
        try:
            jailimage.resolve(name)
        except Refused:
            found[name] = {"missing": True}
            continue
        try:
            paths = jailimage.chain(name)
            for path in paths:
                jailimage.libraries(path)           # a library ldd does not find is refused
            found[name] = {"paths": paths}
        except (Refused, OSError) as err:
            found[name] = {"refused": str(err)}
    return found


def look(tops: list, programs: list, quiet: float, make: list, limit: int) -> list:
    """For each store top: the current content, since when, and whether a new image was made.

    A store is made only for the tops in ``make`` (where jails with programs
    were found): a host whose jails hold none gets no image. Others without
    a store answer {"absent": True}.
    """
    found = []
    for top in tops:
        try:
            result = jailimage.look(_store(top, make=top in make), programs, quiet, limit)
        except FileNotFoundError:
            result = {"absent": True}
        except (Refused, jailimage.Changed) as err:
            result = {"refused": str(err)}
        result["top"] = top
        found.append(result)
    return found


def survey(backup_root: str, bucket: str) -> dict:
    """The account directories ``backup_root/<bucket>/*/*/*`` whose jail holds programs.

    {"jails": [[directory, jail, marker, top, state, {image: files}, copied], ...],
    "without": count of jails without programs (a home-only jail)}. ``marker``
    is the owner marker's text, or None when it is missing or not root's
    small regular file; ``state`` current, stale, or nostore (no image yet).
    """
    tops, indexes, jails, without = {}, {}, [], 0
    for directory in _account_directories(posixpath.join(backup_root, bucket)):
        jail = posixpath.join(directory, JAIL_NAME)
        if not _is_folder(jail):
            jail = directory
        try:
            device = os.lstat(jail).st_dev
            if device not in tops:
                tops[device] = jailimage.top_for(backup_root, jail)
        except FileNotFoundError:
            continue                    # archived (or deleted) while the bucket was looked at
        top = tops[device]
        if top not in indexes:
            indexes[top] = _index(top)
        index = indexes[top]
        if index is None:
            if _holds_programs(jail):
                jails.append([directory, jail, _marker(directory), top, "nostore", {}, 0])
            else:
                without += 1
            continue
        try:
            with walk(jail, make=False) as folder:
                plan = relinking.plan(index, folder)
        except FileNotFoundError:
            continue
        except (Refused, OSError) as err:
            jails.append([directory, jail, _marker(directory), top, "refused: %s" % err, {}, 0])
            continue
        if plan.state == relinking.NONE:
            without += 1
            continue
        jails.append([directory, jail, _marker(directory), top, plan.state, plan.images, plan.copied])
    return {"jails": jails, "without": without}


def relink(backup_root: str, directory: str, jail: str, limit: int, marker: str) -> dict:
    """Move the jail ``jail`` to its store's current image (see relink.move), if the owner marker
    of ``directory`` still says ``marker`` (what the daemon judged the jail by)."""
    top = jailimage.top_for(backup_root, jail)
    if not _holds_programs(jail):
        # Nothing to move (a script that makes only the folders): answered before the store is
        # walked to, which an operator's script that way would otherwise cost every add.
        return {"state": relinking.NONE, "top": top}
    try:
        store = _store(top, make=False)
        if store.current() is None:
            raise FileNotFoundError(top)
    except FileNotFoundError:
        # No image to move to yet; this jail has programs to move, so one is made (jailjob).
        return {"state": "nostore", "top": top}
    try:
        with walk(jail, make=False) as folder:
            if _marker(directory) != marker:
                return {"refused": "its owner marker changed since it was looked at"}
            return relinking.move(store, folder, limit, time.time())
    except Refused as err:
        return {"refused": str(err)}


def prune(tops: list, in_use: list) -> dict:
    """Remove, in each store, the images of an old content that nothing links to; {top: [names]}."""
    removed = {}
    for top in tops:
        try:
            store = _store(top, make=False)
        except FileNotFoundError:
            continue
        with store.lock():
            removed[top] = store.prune(set(in_use))
    return removed


# Stores kept open between calls (top -> Store), in the process that opened them: a daemon
# that detached after opening one must not use (nor close) a descriptor number it lost.
_stores = {}
_stores_pid = [os.getpid()]
_stores_lock = threading.Lock()        # the daemon's workers build jails at the same time


def _store(top: str, make: bool = True):
    """The store of ``top``, open; opened again when its folder is no longer the one held.

    FileNotFoundError when there is none and ``make`` is false.
    """
    with _stores_lock:
        if _stores_pid[0] != os.getpid():
            _stores.clear()
            _stores_pid[0] = os.getpid()
        store = _stores.get(top)
        if store is not None and not _still_there(store):
            store.close()
            store = None
        if store is None:
            store = _stores[top] = jailimage.Store.open(top, make=make)
        return store


def _still_there(store) -> bool:
    try:
        held, there = os.fstat(store.folder.fd), os.stat(store.path, follow_symlinks=False)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def image_index(top: str):
    """The Index of the current image of the store of ``top`` (None: no store or no image yet)."""
    return _index(top)


def _index(top: str):
    try:
        store = _store(top, make=False)
    except FileNotFoundError:
        return None
    return relinking.index_of(store) if store.current() is not None else None


def _account_directories(bucket: str):
    """``bucket/<3 digits>/<3 digits>/<uid>``: folders only, links skipped (never followed)."""
    for middle in _folders(bucket, 3):
        for upper in _folders(middle, 3):
            for account in _folders(upper, None):
                yield account


def _folders(parent: str, digits: int | None):
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if not name.isdigit() or not name.isascii() or digits is not None and len(name) != digits:
            continue
        path = posixpath.join(parent, name)
        if _is_folder(path):
            yield path


def _is_folder(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _holds_programs(jail: str) -> bool:
    """Whether a jail may hold programs (before an image is compared with it): a program folder
    with something in it, or anything at its top but home, dev and etc (JAIL_PROGRAMS may name
    programs in /usr/local/bin, /opt...). A jail of the home alone, or with dev/ and etc/ for
    sftp, holds none."""
    for folder in ("usr/bin", "bin"):
        path = posixpath.join(jail, folder)
        if _is_folder(path) and os.listdir(path):
            return True
    return _is_folder(jail) and any(name not in NOT_PROGRAMS for name in os.listdir(jail))


def _marker(directory: str) -> str | None:
    return read_marker(posixpath.join(directory, MARKER_NAME))


def read_marker(path: str, dir_fd: int | None = None) -> str | None:
    """The owner marker's text when it is root's small regular file (never through a link), else None.

    ``path``: the marker's path, or with ``dir_fd`` its name in that open folder (the audit's walk).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_size > MARKER_MAX:
            return None
        return os.read(fd, MARKER_MAX).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
