"""A jail's programs against the current image, and moving the jail to it file by file.

A jail is current when every file of the current image is in it as that
image's file (a hard link; where the filesystem cannot link, a reflink or a
copy with the image file's size, mtime and mode) and no file of an older
image is left. Moving a jail (``move``) makes it so, one file at a time: the
file is staged next to its place under a temporary name and renamed over
it, so a login sees the old file or the new one, never none; files the new
image adds come first, files only an older image had go last. A copy made by
an earlier builder counts as stale and is replaced the same way.

Nothing is followed or made through a link: the jail and its folders are
opened by jailfs (a folder that is a link or not root's refuses the jail).
The whole move runs under the store's lock, so a jail being built and the
background job never stage the same file at once, and the link counts the
image was chosen by stay true. A crash between two renames leaves a jail
with some files of each image, all present; the next ``move`` finishes it.

Runs as root, in the daemon or in CLISSH's helper on the gateway (with
jailfs.py and jailimage.py): standard library, Python 3.7+.
"""
from __future__ import annotations

import json
import os
import posixpath
import weakref

try:
    from provisioning_backup_rsnapshot.jailfs import Folder, is_same, stage_name
    from provisioning_backup_rsnapshot.jailimage import Store
except ImportError:             # in the gateway's helper: loaded under their own names
    from jailfs import Folder, is_same, stage_name  # type: ignore[no-redef]
    from jailimage import Store  # type: ignore[no-redef]

CURRENT, STALE, NONE = "current", "stale", "none"

# Called after each rename of a move with (the jail's path, the file's path in it). A test puts
# a fault there (a kill -9 between two renames); nothing else sets it.
between_renames = None


class Index:
    """Every image file of a store by inode, and the current content's files by path."""

    def __init__(self, store: Store) -> None:
        current = store.current()
        self.images = store.images()
        self.current = [i for i in self.images if current is not None and i.content == current["content"]]
        self.paths = list(self.current[0].files) if self.current else []
        self.inodes = {}                # (device, inode) -> image name (a current one, if it holds it)
        self.stats = {}                 # path of the current content -> the stat of its first image's file
        # The current images last: a file an old image shares with them counts as theirs.
        for image in sorted(self.images, key=lambda i: i in self.current):
            for path in image.files:
                info = store.file(image, path)
                self.inodes[(info.st_dev, info.st_ino)] = image.name
                if image in self.current and path not in self.stats:
                    self.stats[path] = info
        names = {i.name for i in self.current}
        self.old_paths = sorted({p for i in self.images if i.name not in names for p in i.files} - set(self.paths))
        self.current_names = names


_indexes = weakref.WeakKeyDictionary()        # Store -> (what its Index was made of, the Index)


def index_of(store: Store) -> Index:
    """The store's Index, made again only when its images or its current content changed."""
    key = (json.dumps(store.current()), tuple(sorted(store.names())))
    known = _indexes.get(store)
    if known is None or known[0] != key:
        known = _indexes[store] = (key, Index(store))
    return known[1]


class Plan:
    """What moving one jail takes: files to link, old files to remove, and what it holds now."""

    def __init__(self) -> None:
        self.needs = []             # paths to link from the current image, in the order to do it
        self.obsolete = []          # paths holding a file of an older image that the current one lacks
        self.images = {}            # image name -> how many of the jail's files are that image's
        self.copied = 0             # files at an image's place that are no image's (an old builder's copies)
        self.present = 0            # files of the current image found in the jail, right or not

    @property
    def state(self) -> str:
        if not self.needs and not self.obsolete:
            return CURRENT
        return STALE if self.present or self.obsolete else NONE


def plan(index: Index, jail: Folder) -> Plan:
    """How far ``jail`` is from the current image (reads only)."""
    found, fresh, replace = Plan(), [], []
    for path in index.paths:
        info = _entry(jail, path)
        if info is None:
            fresh.append(path)
            continue
        found.present += 1
        owner = index.inodes.get((info.st_dev, info.st_ino))
        if owner is None and is_same(info, index.stats[path]):
            owner = index.current[0].name          # a copy where the image could not be linked
        if owner is None:
            found.copied += 1
        else:
            found.images[owner] = found.images.get(owner, 0) + 1
        if owner not in index.current_names:
            replace.append(path)
    for path in index.old_paths:
        info = _entry(jail, path)
        if info is not None and (info.st_dev, info.st_ino) in index.inodes:
            found.obsolete.append(path)
            owner = index.inodes[(info.st_dev, info.st_ino)]
            found.images[owner] = found.images.get(owner, 0) + 1
    # What the new image adds first, then the rest with the libraries before the programs
    # that need them (the manifest lists each program before its libraries).
    found.needs = fresh + list(reversed(replace))
    return found


def move(store: Store, jail: Folder, limit: int, now: float, *, fill: bool = False) -> dict:
    """Bring ``jail`` to the current image; {"state", "image", "how", "moved", "removed"}.

    A jail without any program (a home-only jail) is left so, unless
    ``fill`` (a new jail being built).
    """
    with store.lock():
        index = index_of(store)
        todo = plan(index, jail)
        if todo.state == CURRENT or todo.state == NONE and not fill:
            return {"state": todo.state, "moved": 0, "removed": 0, "how": {}, "image": None}
        image = store.target(todo.needs, limit, now) if todo.needs else index.current[0]
        how = {}
        folders = {}                    # each folder of the jail and of the image opened once
        try:
            for path in todo.needs:
                folder, name = posixpath.split(path)
                if folder not in folders:
                    folders[folder] = (jail.subpath(folder), store.tree_folder(image, folder))
                inside, source = folders[folder]
                temp, used = inside.stage_same(name, source, name)
                inside.commit(temp, name)
                how[used] = how.get(used, 0) + 1
                if between_renames is not None:
                    between_renames(jail.path, path)
        finally:
            for pair in folders.values():
                for held in pair:
                    held.close()
        removed = sum(_remove_old(jail, path, index) for path in todo.obsolete)
    return {"state": "moved", "image": image.name, "how": how, "moved": len(todo.needs), "removed": removed}


def _remove_old(jail: Folder, path: str, index: Index) -> int:
    """Unlink an older image's file the current image no longer has (only if it still is one)."""
    folder, name = posixpath.split(path)
    with jail.opened(folder) as inside:
        info = inside.entry(name)
        if info is None or (info.st_dev, info.st_ino) not in index.inodes:
            return 0
        os.unlink(name, dir_fd=inside.fd)
        inside.remove(stage_name(name))
    return 1


def _entry(jail: Folder, path: str) -> os.stat_result | None:
    """What is at ``path`` in the jail, the last component not followed.

    A link or anything but a file where an image file belongs is no image
    file: stale, and ``move`` renames over it (jailfs never writes through
    a link, and refuses a folder where a file belongs).
    """
    try:
        return os.stat(path, dir_fd=jail.fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
