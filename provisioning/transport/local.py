"""LocalCLI: commands and files on this host.

Commands run as argv lists (never a shell), each in a session and process
group of its own: a terminal's Ctrl-C (sent to the foreground group) reaches
the daemon only, and a timeout kills the command with everything it started.
A command also dies with the daemon: it is started through
``setpriv --pdeathsig KILL --`` (util-linux), so a daemon killed with
SIGKILL does not leave it running and racing the request that is resumed at
the next start. (The death signal is tied to the thread that started the
command, which waits for it, so that thread cannot end first. It reaches the
command itself, not what the command started in the background.)

File operations are those of provisioning.transport.nofollow: they never go
through a symbolic link a customer could have planted.
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from typing import Mapping, Sequence

from provisioning.transport import nofollow
from provisioning.transport.base import (
    EXIT_NOT_FOUND, EXIT_TIMEOUT, PAST_DEADLINE, CommandResult, Interrupted, Transport,
    stopped_by_signal, time_left,
)

log = logging.getLogger(__name__)

# How long to wait for the output of a command group that was killed.
REAP_SECONDS = 5.0


def death_signal_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``, or nothing (with a warning) where setpriv is missing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: commands will outlive a daemon that is killed")
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


class LocalCLI(Transport):
    """Runs argv lists with subprocess (never a shell) and changes local files."""

    def __init__(self, timeout: float = 600, *, stopping: threading.Event | None = None) -> None:
        self.timeout = timeout
        self.stopping = stopping
        self.prefix = death_signal_prefix()

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
            log.warning("not run, %s: %s", PAST_DEADLINE, shown)
            return CommandResult(argv, EXIT_TIMEOUT, stderr=PAST_DEADLINE)
        if shutil.which(argv[0]) is None:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {_why_not_runnable(argv[0])}")
        log.debug("run: %s", shown)
        try:
            proc = subprocess.Popen(self.prefix + argv, start_new_session=True, env=env,
                                    stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as err:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {err.strerror}")
        try:
            out, err = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            why = " (the request's deadline)" if limit < wanted else ""
            return CommandResult(argv, EXIT_TIMEOUT, stderr=f"killed after {limit:g} s{why}")
        except BaseException:
            _kill_group(proc)
            raise
        if self.stopping is not None and self.stopping.is_set() and stopped_by_signal(proc.returncode):
            raise Interrupted(f"{shown} ended ({proc.returncode}) because the daemon is stopping")
        return CommandResult(argv, proc.returncode, out.decode("utf-8", "replace"),
                             err.decode("utf-8", "replace"))

    def exists(self, path: str) -> bool:
        return nofollow.exists(path)

    def realpath(self, path: str) -> str:
        return nofollow.realpath(path)

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


def _why_not_runnable(program: str) -> str:
    if "/" in program and os.path.exists(program):
        return os.strerror(errno.EACCES)      # there, but not executable (or a folder)
    return os.strerror(errno.ENOENT)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's whole process group, then collect it.

    The group id is the command's pid, held while the command is unreaped,
    so the signal cannot reach a stranger. Output still held open by a
    process that left the group is abandoned after REAP_SECONDS.
    """
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.communicate(timeout=REAP_SECONDS)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
