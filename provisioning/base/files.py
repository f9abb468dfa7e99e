"""The daemon's own state files (lock, cookie, store): opened safely, replaced atomically.

The daemon runs as root. A state file must not be a symlink or hard link to
another file (root would truncate or overwrite that file), must belong to the
daemon's user and must not be writable by anyone else; its folder must not let
another user put something in its place. These helpers refuse, with
UnsafeFile, what does not hold, instead of going through it.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat

StrPath = str | os.PathLike


class UnsafeFile(OSError):
    """A state file or its folder could be steered by someone else: not used."""

    def __init__(self, path: StrPath, problem: str) -> None:
        super().__init__(errno.EPERM, problem, os.fspath(path))
        self.path = os.fspath(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; refusing to use it"


def open_private(path: StrPath, flags: int, mode: int = 0o600) -> int:
    """``os.open`` for a state file: no link followed, owner and mode checked.

    The folder is checked first (see check_private), then the file is opened
    with O_NOFOLLOW and O_CLOEXEC and checked through its descriptor, so what
    is checked is what was opened. Returns the descriptor; on refusal it is
    closed and UnsafeFile raised. A missing file is FileNotFoundError unless
    ``flags`` has O_CREAT.
    """
    _check_folder(os.path.dirname(os.path.abspath(path)))
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the open.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFile(path, "is a symbolic link") from None
        if err.errno == errno.EISDIR:
            raise UnsafeFile(path, "is a directory, not a regular file") from None
        raise
    try:
        _check_file(path, os.fstat(fd))
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private(path: StrPath) -> None:
    """The checks of open_private for a file some library opens itself (SQLite).

    A missing file is fine (the library will create it; the folder is checked
    all the same). Also refused: a folder writable by others (or by a group
    other than root's and ours) without the sticky bit, or owned by a user
    other than root and us.
    """
    _check_folder(os.path.dirname(os.path.abspath(path)))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    _check_file(path, info)


def _check_file(path: StrPath, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(path, "is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(path, "is not a regular file")
    if info.st_uid != os.geteuid():
        raise UnsafeFile(path, f"belongs to uid {info.st_uid}, not to the daemon's uid {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(path, f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
                               f"chmod go-w it")
    if info.st_nlink != 1:
        raise UnsafeFile(path, f"has {info.st_nlink} names (hard links): it may be another file too")


def _check_folder(folder: str) -> None:
    info = os.stat(folder)      # followed on purpose: what counts is the folder used
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeFile(folder, f"(the folder) belongs to uid {info.st_uid}, not to root or the daemon")
    if info.st_mode & stat.S_ISVTX:
        return      # like /tmp: others may add files but not replace ours
    writable_by_group = info.st_mode & stat.S_IWGRP and info.st_gid not in (0, os.getegid())
    if info.st_mode & stat.S_IWOTH or writable_by_group:
        raise UnsafeFile(folder, f"(the folder) is writable by others (mode {stat.S_IMODE(info.st_mode):o}, "
                                 f"gid {info.st_gid}) and not sticky")


def write_atomically(path: StrPath, data: bytes, *, mode: int = 0o644,
                     owner: tuple[int, int] | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the folder.

    ``durable=False`` leaves out the two fsyncs, for a file that only has to
    be whole (another file holds the same data durably).

    A crash leaves either the old or the new file, never a torn one. The
    folder is checked as for check_private (a folder others can write lets
    them swap the file after us). The temporary file is created next to the
    target (same filesystem, so the rename is atomic) with a random name,
    O_EXCL and O_NOFOLLOW, so it is always a new file of ours, and removed on
    any failure. The rename replaces a symlink at ``path``, never its target.
    """
    folder, name = os.path.split(os.fspath(path))
    _check_folder(folder or ".")
    temp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            if durable:
                os.fsync(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
