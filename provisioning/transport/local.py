"""LocalCLI: commands and files on this host.

Commands run as argv lists (never a shell), each in a session and process
group of its own: a terminal's Ctrl-C (sent to the foreground group) reaches
the daemon only, and a timeout kills the command with everything it started,
in its group or not (found by the marker in its environment, see
provisioning.transport.commandguard).
A command also dies with the daemon, with what it started in the
background: provisioning.transport.commandguard kills it when the daemon ends, even by
SIGKILL, so it does not keep racing the request resumed at the next start.

File operations are those of provisioning.transport.nofollow: they never go
through a symbolic link a customer could have planted.
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import subprocess
import threading
from types import ModuleType
from typing import Any, Mapping, Sequence

from provisioning.transport.commandguard import GUARD, command_marker
from provisioning.transport import nofollow
from provisioning.transport.base import (
    EXIT_NOT_FOUND, EXIT_TIMEOUT, CommandResult, Interrupted, Transport, ended_by_the_stop, killed_after,
    not_run_past_deadline, time_left,
)
from provisioning.transport.spawn import Child, communicate, kill_group

log = logging.getLogger(__name__)


class LocalCLI(Transport):
    """Runs argv lists with posix_spawn (never a shell) and changes local files."""

    def __init__(self, timeout: float = 600, *, stopping: threading.Event | None = None) -> None:
        self.timeout = timeout
        self.stopping = stopping

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        argv = [str(a) for a in argv]
        return self.execute(argv, stdin=stdin, timeout=timeout, shown=shlex.join(argv), env=env)

    def execute(self, argv: list[str], *, stdin: bytes | None, timeout: float | None,
                shown: str, env: Mapping[str, str] | None = None) -> CommandResult:
        """Run ``argv``, logged as ``shown``; the work behind ``run`` (CLISSH uses it for ssh)."""
        wanted = timeout or self.timeout
        limit = time_left(wanted)
        if limit is None:
            return not_run_past_deadline(argv, shown)
        marker = command_marker()
        env_b = GUARD.environment(env, command=marker)
        path = _program(argv[0], env_b)
        if path is None:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {_why_not_runnable(argv[0])}")
        log.debug("run: %s", shown)
        try:
            proc = Child(path, argv, env_b, with_stdin=stdin is not None)
        except OSError as err:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {err.strerror}")
        try:
            out, err = communicate(proc, stdin, limit)
        except subprocess.TimeoutExpired:
            kill_group(proc, marker)
            return CommandResult(argv, EXIT_TIMEOUT, stderr=killed_after(limit, wanted))
        except BaseException:
            kill_group(proc, marker)
            raise
        if ended_by_the_stop(proc.returncode, self.stopping):
            raise Interrupted(f"{shown} ended ({proc.returncode}) because the daemon is stopping")
        return CommandResult(argv, proc.returncode, out.text(), err.text(), out.dropped, err.dropped)

    def call(self, modules: Sequence[ModuleType], function: str, *args: Any, shown: str = "") -> Any:
        # In this process: the modules are imported already.
        log.debug("call: %s", shown or f"{modules[-1].__name__}.{function}")
        return getattr(modules[-1], function)(*args)

    def exists(self, path: str) -> bool:
        return nofollow.exists(path)

    def realpath(self, path: str) -> str:
        return nofollow.realpath(path)

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        return nofollow.realpaths(list(paths))

    def lstat(self, paths: Sequence[str]) -> dict[str, dict | None]:
        return nofollow.lstat(list(paths))

    def read_small(self, path: str, limit: int = 4096) -> str:
        return nofollow.read_small(path, limit)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        nofollow.write_file(path, data, mode, owner)

    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        nofollow.makedirs(path, mode, owner)

    def rename(self, src: str, dst: str) -> None:
        nofollow.rename(src, dst)

    def remove(self, path: str) -> None:
        nofollow.remove(path)

    def remove_tree(self, path: str) -> None:
        nofollow.remove_tree(path)


def _program(name: str, env: Mapping[bytes, bytes]) -> str | None:
    """The file to run for ``name``: itself when it has a slash, else found in the command's PATH."""
    if "/" in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name, path=os.fsdecode(env.get(b"PATH", os.defpath.encode())))


def _why_not_runnable(program: str) -> str:
    if "/" in program and os.path.exists(program):
        return os.strerror(errno.EACCES)      # there, but not executable (or a folder)
    return os.strerror(errno.ENOENT)
