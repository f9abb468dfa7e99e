"""Folders, files, devices and links that root makes in a jail, never through a link.

A jail may exist already and hold what someone else put there: ``etc`` as a
link to the host's /etc, ``dev/null`` as a link to a file. ``install -d``,
``cp``, ``mknod`` and ``>`` by path would follow such links. Here every
folder is opened one component at a time with O_NOFOLLOW and held as a
descriptor; everything is made relative to a held descriptor; files and
devices are made under a temporary name and renamed over the entry, which
replaces a link instead of writing through it. A folder in the jail that is
a link or is not root's is refused, never used.

Programs and libraries come from the jail image (jailimage.py): ``put_same``
makes an entry the very file of the image (a hard link), or, where the
filesystem cannot, a reflink or a copy that keeps the image's mtime.

Used by the chroot builder (chroot.py) and the relinking of jails (relink.py),
which run as root: in the daemon, or in CLISSH's helper on the gateway, which
gets these files' source alone (standard library, Python 3.7+).
"""
from __future__ import annotations

import errno
import os
import stat

try:
    import fcntl
except ImportError:                                  # pragma: no cover - Linux has it
    fcntl = None  # type: ignore[assignment]

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT = (0, 0)
# ioctl FICLONE (linux/fs.h): the destination shares the source's blocks (btrfs, XFS).
FICLONE = 0x40049409
# How an entry was made the same file as the image's, best first.
LINK, REFLINK, COPY = "hard link", "reflink", "copy"
# link() errors that say "not here" (another filesystem, no hard links, the link limit), not "broken".
NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS)


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

    def opened(self, relative: str) -> "Folder":
        """The existing folder ``relative`` below this one, opened without making or following anything."""
        folder = Folder(os.dup(self.fd), self.path)
        for part in [p for p in relative.split("/") if p]:
            try:
                fd = os.open(part, O_DIR, dir_fd=folder.fd)
            except OSError as err:
                folder.close()
                if err.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise Refused(f"{folder.name(part)} is not a folder: not going through it") from None
                raise
            inner = Folder(fd, folder.name(part))
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
        def fill(fd: int) -> None:
            if source is not None:
                with open(source, "rb") as src:
                    _copy_all(src.fileno(), fd)
            elif data:
                _write_all(fd, data)
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        temp = self._temp(name)
        self._new_file(temp, fill)
        self._replace(temp, name)

    def put_copy(self, name: str, src: int, mode: int, mtime_ns: int) -> str:
        """Replace ``name`` with a durable copy of the open file ``src`` (root's, ``mode``, mtime
        ``mtime_ns``); the copy's sha256, computed from the bytes written."""
        import hashlib     # only images are hashed: the builder run by hand starts faster without

        digest = hashlib.sha256()

        def fill(fd: int) -> None:
            _copy_all(src, fd, digest)
            os.fchown(fd, *ROOT)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)
        temp = self._temp(name)
        self._new_file(temp, fill)
        self._replace(temp, name)
        return digest.hexdigest()

    def put_device(self, name: str, major: int, minor: int, mode: int) -> None:
        """A character device ``name`` (kept if it is that device already, root's, with ``mode``)."""
        info = self.entry(name)
        device = os.makedev(major, minor)
        if (info is not None and stat.S_ISCHR(info.st_mode) and info.st_rdev == device
                and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == mode):
            return
        temp = self._temp(name)
        # Made 0600 and set to ``mode`` by name (a device cannot be fchmod'ed without opening
        # it): never os.umask(), which is the whole process's and would race the daemon's
        # other threads. The name is our fresh temporary one, in a folder only root can write.
        os.mknod(temp, stat.S_IFCHR | 0o600, device, dir_fd=self.fd)
        os.chmod(temp, mode, dir_fd=self.fd)
        self._replace(temp, name)

    def put_link(self, name: str, target: str) -> None:
        """The link ``name -> target``; refused if something else is there."""
        info = self.entry(name)
        if info is None:
            os.symlink(target, name, dir_fd=self.fd)
        elif not (stat.S_ISLNK(info.st_mode) and os.readlink(name, dir_fd=self.fd) == target
                  and info.st_uid == 0):
            raise Refused(f"{self.name(name)} is {describe(info)}, not root's link to {target}: not using it")

    # ------------------------------------------------ files of the jail image

    def same_file(self, name: str, image: "Folder", source: str) -> bool:
        """Whether the entry ``name`` is the file ``source`` of ``image`` (its hard link or copy)."""
        mine, theirs = self.entry(name), image.entry(source)
        return mine is not None and theirs is not None and is_same(mine, theirs)

    def stage_same(self, name: str, image: "Folder", source: str) -> tuple[str, str]:
        """The file ``source`` of ``image`` under a temporary name next to ``name``: (that name, how).

        A hard link where the filesystem allows it; else a reflink, else a
        copy, either with the image file's mode, owner and mtime (so that
        is_same knows it again). ``commit`` then renames it over ``name``.
        """
        temp = stage_name(name)
        self.remove(temp)                              # left by a crash
        try:
            os.link(source, temp, src_dir_fd=image.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            return temp, LINK
        except OSError as err:
            if err.errno not in NO_LINK:
                raise
        return temp, self._clone(temp, image, source)

    def commit(self, temp: str, name: str) -> None:
        """Rename ``temp`` over ``name``: a login sees the old file or the new one, never none."""
        self._replace(temp, name)

    def _clone(self, temp: str, image: "Folder", source: str) -> str:
        src = os.open(source, O_READ_FILE, dir_fd=image.fd)
        try:
            info = os.fstat(src)

            def fill(fd: int) -> str:
                how = REFLINK if _reflink(src, fd) else COPY
                if how == COPY:
                    _copy_all(src, fd)
                os.fchown(fd, info.st_uid, info.st_gid)
                os.fchmod(fd, stat.S_IMODE(info.st_mode))
                os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
                return how
            return self._new_file(temp, fill)
        finally:
            os.close(src)

    def _new_file(self, temp: str, fill):
        """Make the file ``temp`` and have ``fill(fd)`` write it; removed again if that fails.
        What ``fill`` returned."""
        fd = os.open(temp, O_NEW_FILE, 0o600, dir_fd=self.fd)
        try:
            done = fill(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=self.fd)
            raise
        os.close(fd)
        return done

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


def _copy_all(src: int, dst: int, digest=None) -> None:
    """Copy what is left to read of ``src`` into ``dst`` (and into ``digest``, a hashlib object)."""
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        if digest is not None:
            digest.update(chunk)
        _write_all(dst, chunk)


def _reflink(src: int, dst: int) -> bool:
    """Whether the filesystem made ``dst`` share ``src``'s blocks."""
    if fcntl is None:
        return False
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError:
        return False
    return True


def stage_name(name: str) -> str:
    """The temporary name a file of the image is staged under before it replaces ``name``."""
    return ".%s.jail-new" % name


def is_same(mine: os.stat_result, image: os.stat_result) -> bool:
    """Whether a jail's file is the image's: the same inode, or a copy of it (same size, mtime, mode).

    A copy counts only where the image could not be linked (another
    filesystem, no hard links): the old builder's copies had the time of
    copying as their mtime, and root's, so they never pass for the image.
    """
    if (mine.st_dev, mine.st_ino) == (image.st_dev, image.st_ino):
        return True
    return (stat.S_ISREG(mine.st_mode) and mine.st_uid == 0 and mine.st_size == image.st_size
            and mine.st_mtime_ns == image.st_mtime_ns and stat.S_IMODE(mine.st_mode) == stat.S_IMODE(image.st_mode)
            and mine.st_nlink == 1)


def walk(path: str, *, make: bool = True) -> Folder:
    """Open the folder ``path`` from ``/``, making missing folders (root's, 0755) unless not ``make``
    (then FileNotFoundError: the jail job must never bring back an account directory delete archived).

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
            inner_fd = _open_step(folder, part, trusted, make)
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


def _open_step(folder: Folder, part: str, trusted: bool, make: bool) -> int:
    try:
        return os.open(part, O_DIR, dir_fd=folder.fd)
    except FileNotFoundError:
        if not make:
            raise
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
