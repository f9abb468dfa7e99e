"""Folders, files, devices and links that root makes in a jail, never through a link.

A jail may exist already and hold what someone else put there: ``etc`` as a
link to the host's /etc, ``dev/null`` as a link to a file. ``install -d``,
``cp``, ``mknod`` and ``>`` by path would follow such links. Here every
folder is opened one component at a time with O_NOFOLLOW and held as a
descriptor; everything is made relative to a held descriptor; files and
devices are made under a temporary name and renamed over the entry, which
replaces a link instead of writing through it. A folder in the jail that is
a link or is not root's is refused, never used.

Used by the chroot scripts (chroot.py), which run as root.
"""
from __future__ import annotations

import errno
import os
import stat

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT = (0, 0)


class Refused(Exception):
    """Something in the way that root must not go through, use or replace."""


def describe(info: os.stat_result) -> str:
    kinds = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFREG: "a file",
             stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
             stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
    kind = kinds.get(stat.S_IFMT(info.st_mode), "something")
    return f"{kind} owned by {info.st_uid}:{info.st_gid}"


def _root_only(info: os.stat_result) -> bool:
    return info.st_uid == 0 and not info.st_mode & 0o022


class Folder:
    """An open folder: its descriptor and the path it was reached by (for messages)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def name(self, entry: str) -> str:
        return f"{self.path.rstrip('/')}/{entry}"

    def entry(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is not followed), or None."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------- folders

    def sub(self, name: str, mode: int = 0o755, owner: tuple[int, int] = ROOT) -> "Folder":
        """The folder ``name`` in this one, made if absent; refused if it is a link or someone else's.

        A folder made here gets ``mode`` and ``owner``; one that exists must
        already belong to ``owner``, and loses group and other write bits.
        """
        try:
            fd = os.open(name, O_DIR, dir_fd=self.fd)
        except FileNotFoundError:
            # Made 0700 and root's first, so it is never open to anyone before it is right.
            os.mkdir(name, 0o700, dir_fd=self.fd)
            fd = os.open(name, O_DIR, dir_fd=self.fd)
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            return Folder(fd, self.name(name))
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                raise Refused(f"{self.name(name)} is {describe(self.entry(name))}, not a folder: "
                              f"not going through it") from None
            raise
        folder = Folder(fd, self.name(name))
        info = os.fstat(fd)
        if info.st_uid != owner[0]:
            folder.close()
            raise Refused(f"{folder.path} is {describe(info)}, not {owner[0]}'s: not using it")
        if info.st_mode & 0o022:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o022)
        return folder

    def subpath(self, relative: str) -> "Folder":
        """``sub`` for each component of ``relative``, all root's."""
        folder = Folder(os.dup(self.fd), self.path)
        for part in [p for p in relative.split("/") if p]:
            inner = folder.sub(part)
            folder.close()
            folder = inner
        return folder

    def remove(self, name: str) -> None:
        """Remove the entry ``name`` (a folder with all in it); links are removed, never followed."""
        info = self.entry(name)
        if info is None:
            return
        if stat.S_ISDIR(info.st_mode):
            import shutil   # rarely needed (a crash left a half-built home): imported then

            # rmtree with dir_fd opens every folder with O_NOFOLLOW (avoids_symlink_attacks).
            shutil.rmtree(name, dir_fd=self.fd)
        else:
            os.unlink(name, dir_fd=self.fd)

    def rename(self, name: str, new: str) -> None:
        os.rename(name, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    # ------------------------------------------------- files, devices, links

    def put_file(self, name: str, data: bytes | None = None, *, source: str | None = None,
                 mode: int = 0o644, owner: tuple[int, int] = ROOT) -> None:
        """Replace the entry ``name`` with a file holding ``data`` (or a copy of the host file ``source``)."""
        temp = self._temp(name)
        fd = os.open(temp, O_NEW_FILE, 0o600, dir_fd=self.fd)
        try:
            if source is not None:
                with open(source, "rb") as src:
                    while chunk := src.read(1 << 20):
                        _write_all(fd, chunk)
            elif data:
                _write_all(fd, data)
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=self.fd)
            raise
        os.close(fd)
        self._replace(temp, name)

    def put_device(self, name: str, major: int, minor: int, mode: int) -> None:
        """A character device ``name`` (kept if it is that device already, root's, with ``mode``)."""
        info = self.entry(name)
        device = os.makedev(major, minor)
        if (info is not None and stat.S_ISCHR(info.st_mode) and info.st_rdev == device
                and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == mode):
            return
        temp = self._temp(name)
        old_umask = os.umask(0)
        try:
            os.mknod(temp, stat.S_IFCHR | mode, device, dir_fd=self.fd)
        finally:
            os.umask(old_umask)
        self._replace(temp, name)

    def put_link(self, name: str, target: str) -> None:
        """The link ``name -> target``; refused if something else is there."""
        info = self.entry(name)
        if info is None:
            os.symlink(target, name, dir_fd=self.fd)
        elif not (stat.S_ISLNK(info.st_mode) and os.readlink(name, dir_fd=self.fd) == target
                  and info.st_uid == 0):
            raise Refused(f"{self.name(name)} is {describe(info)}, not root's link to {target}: not using it")

    def _temp(self, name: str) -> str:
        temp = f".{name}.tmp-{os.getpid()}"
        if self.entry(temp) is not None:      # left by a crash
            self.remove(temp)
        return temp

    def _replace(self, temp: str, name: str) -> None:
        # rename() replaces a link or a file at ``name``; it never writes through one.
        info = self.entry(name)
        if info is not None and stat.S_ISDIR(info.st_mode):
            os.unlink(temp, dir_fd=self.fd)
            raise Refused(f"{self.name(name)} is {describe(info)} where a file belongs: not replacing it")
        os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def walk(path: str) -> Folder:
    """Open the folder ``path`` from ``/``, making missing folders (root's, 0755).

    This is the way *to* a jail, which the script does not own: every folder
    on it must be root's, and one that others can write must be sticky (like
    /tmp), so that nobody but root can swap a folder on the way. A link is
    followed only where only root could have put it: root's link, with every
    folder walked so far root's and writable by nobody else (an
    administrator's /var/backup -> /data/backup).
    """
    fd = os.open("/", O_DIR)
    folder = Folder(fd, "/")
    trusted = _root_only(os.fstat(fd))
    for part in [p for p in path.split("/") if p]:
        try:
            inner_fd = _open_step(folder, part, trusted)
        except BaseException:
            folder.close()
            raise
        here, above = os.fstat(inner_fd), os.fstat(folder.fd)
        inner = Folder(inner_fd, folder.name(part))
        folder.close()
        folder = inner
        if here.st_uid != 0:
            folder.close()
            raise Refused(f"{folder.path} is {describe(here)}, not root's: not going through it")
        if above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX:
            folder.close()
            raise Refused(f"the folder above {folder.path} is writable by others: "
                          f"what is in it could be swapped; not going through it")
        trusted = trusted and _root_only(here)
    return folder


def _open_step(folder: Folder, part: str, trusted: bool) -> int:
    try:
        return os.open(part, O_DIR, dir_fd=folder.fd)
    except FileNotFoundError:
        try:
            os.mkdir(part, 0o755, dir_fd=folder.fd)
        except FileExistsError:
            pass
        return os.open(part, O_DIR, dir_fd=folder.fd)
    except OSError as err:
        if err.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    info = folder.entry(part)
    if info is not None and stat.S_ISLNK(info.st_mode) and info.st_uid == 0 and trusted:
        return os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder.fd)
    raise Refused(f"{folder.name(part)} is {describe(info)}, not a folder only root could have put there: "
                  f"not going through it")
