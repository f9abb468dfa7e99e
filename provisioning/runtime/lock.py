"""A PID lock file held with flock: released by the kernel when the process dies.

The lock file is opened with provisioning.base.files.open_private: never through a
symlink, and only if it is a regular file of the daemon's user that nobody
else can write. Everything after the open goes through that descriptor, so
writing the PID and emptying the file on release touch this file and no
other, whatever happens to the path meanwhile.

A lock file that cannot be created (its folder is read-only, or has no room
for one more file) must not stop the daemon: it then locks the folder
instead, exclusively. Every daemon that has its lock file also holds a shared
lock on the folder, so the two kinds keep each other off. (Two daemons of
different services may share a folder: their shared locks do not conflict,
but a daemon without its lock file keeps them off, and they keep it off.)
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from provisioning.base.files import open_private

log = logging.getLogger(__name__)


class AlreadyLocked(Exception):
    """Another process holds the lock."""


class PidLock:
    """Exclusive lock on ``path``; the file holds the holder's PID for operators.

    ``acquire`` raises provisioning.base.files.UnsafeFile if the path is a link, a
    file of another user or one others can write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._folder_fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        if fd is None:
            self._folder_fd = self._lock_folder(fcntl.LOCK_EX)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyLocked(f"{self.path} is held by process {holder}") from None
        try:
            self._folder_fd = self._lock_folder(fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            # The lock holds all the same (flock needs no write); only the
            # PID shown to operators is missing.
            log.warning("%s: locked, but the PID cannot be written into it: %s", self.path, err.strerror)
        self._fd = fd

    def _open(self) -> int | None:
        """The lock file's descriptor; None when it does not exist and cannot be created."""
        try:
            return open_private(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise
            why = err.strerror
        # A folder that went read-only or full must not keep the daemon
        # from starting (it would crash-loop): an existing lock file can
        # be locked through a read-only descriptor.
        try:
            fd = open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            log.warning("%s cannot be created (%s): locking its folder instead (a second daemon is kept off "
                        "all the same; 'status' does not see this one)", self.path, why)
            return None
        log.warning("%s cannot be opened for writing (%s): locking it read-only", self.path, why)
        return fd

    def _lock_folder(self, how: int) -> int:
        """flock the lock file's folder (LOCK_SH beside a lock file, LOCK_EX instead of one)."""
        folder = self.path.absolute().parent
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if how == fcntl.LOCK_SH:
                raise AlreadyLocked(f"{folder} is locked by a daemon that could not create its lock file "
                                    f"there") from None
            raise AlreadyLocked(f"{self.path} cannot be created, and another daemon locks its folder "
                                f"{folder}") from None
        return fd

    def release(self) -> None:
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None
        if self._fd is None:
            return
        # The file stays: unlinking a locked file lets two processes lock two
        # different inodes under one name. An empty file means "not running".
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass        # read-only or full: the PID stays, the lock goes with the descriptor
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "PidLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
