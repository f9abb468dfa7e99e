"""LocalCLI: commands and files on this host."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from typing import Sequence

from provisioning.files import write_atomically
from provisioning.transport.base import EXIT_NOT_FOUND, EXIT_TIMEOUT, CommandResult, Transport

log = logging.getLogger(__name__)


class LocalCLI(Transport):
    """Runs argv lists with subprocess (never a shell) and changes local files."""

    def __init__(self, timeout: float = 600) -> None:
        self.timeout = timeout

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None) -> CommandResult:
        argv = [str(a) for a in argv]
        limit = timeout or self.timeout
        log.debug("run: %s", shlex.join(argv))
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=limit,
                                  check=False, stdin=None if stdin is not None else subprocess.DEVNULL)
        except (FileNotFoundError, PermissionError) as err:   # missing, or not executable
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {err.strerror}")
        except subprocess.TimeoutExpired:
            return CommandResult(argv, EXIT_TIMEOUT, stderr=f"killed after {limit:g} s")
        return CommandResult(argv, done.returncode,
                             done.stdout.decode("utf-8", "replace"),
                             done.stderr.decode("utf-8", "replace"))

    def exists(self, path: str) -> bool:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return False
        return True

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        write_atomically(path, data, mode=mode, owner=owner)

    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        os.makedirs(path, exist_ok=True)
        # Mode and owner go through a descriptor opened without following a
        # symlink: a folder inside a customer's home may have been replaced
        # by a link to somewhere else, and chmod must not land there.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as err:
            raise OSError(err.errno, f"{path} is not a plain directory: {err.strerror}") from err
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        _unlink_quietly(path)

    def remove_tree(self, path: str) -> None:
        if os.path.lexists(path):
            shutil.rmtree(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
