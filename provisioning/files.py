"""Atomic file replacement, shared by the cookie store and the local transport."""
from __future__ import annotations

import os


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int = 0o644,
                     owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the folder.

    A crash leaves either the old or the new file, never a torn one. The
    temporary file is created with O_NOFOLLOW next to the target (same
    filesystem, so the rename is atomic) and removed on any failure.
    """
    folder, name = os.path.split(os.fspath(path))
    temp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if owner is not None:
            os.chown(temp, *owner)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
