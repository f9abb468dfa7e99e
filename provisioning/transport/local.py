"""LocalCLI: commands and files on this host.

Commands run as argv lists (never a shell), each in a session and process
group of its own: a terminal's Ctrl-C (sent to the foreground group) reaches
the daemon only, and a timeout kills the command with everything it started.
A command also dies with the daemon, with what it started in the
background: provisioning.commandguard kills it when the daemon ends, even by
SIGKILL, so it does not keep racing the request resumed at the next start.

File operations are those of provisioning.transport.nofollow: they never go
through a symbolic link a customer could have planted.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from typing import Mapping, Sequence

from provisioning.commandguard import GUARD
from provisioning.transport import nofollow
from provisioning.transport.base import (
    EXIT_NOT_FOUND, EXIT_TIMEOUT, PAST_DEADLINE, CommandResult, Interrupted, Transport,
    stopped_by_signal, time_left,
)

log = logging.getLogger(__name__)

# How long to wait for the output of a command group that was killed.
REAP_SECONDS = 5.0


class LocalCLI(Transport):
    """Runs argv lists with subprocess (never a shell) and changes local files."""

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
            log.warning("not run, %s: %s", PAST_DEADLINE, shown)
            return CommandResult(argv, EXIT_TIMEOUT, stderr=PAST_DEADLINE)
        if shutil.which(argv[0]) is None:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {_why_not_runnable(argv[0])}")
        log.debug("run: %s", shown)
        try:
            proc = subprocess.Popen(argv, start_new_session=True, env=GUARD.environment(env),
                                    stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as err:
            return CommandResult(argv, EXIT_NOT_FOUND, stderr=f"{argv[0]}: {err.strerror}")
        try:
            out, err = communicate(proc, stdin, limit)
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


def communicate(proc: subprocess.Popen, data: bytes | None, limit: float) -> tuple[bytes, bytes]:
    """``proc.communicate(data, timeout=limit)``, woken by the command's end instead of polling for it.

    Popen.communicate with a timeout polls for the exit in sleeps from 0.5 ms
    up once the output has ended, and a command in a session of its own has
    rarely been reaped by then: about 1 ms per command, two per account. A
    pidfd tells the moment it ends. (Without pidfd_open: Popen's own way.)
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.communicate(data, timeout=limit)
    deadline = time.monotonic() + limit
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    output: dict[int, list[bytes]] = {out: [], err: []}
    # select.poll, not a selectors.DefaultSelector: no epoll descriptor made and
    # closed per command, and no Python-level bookkeeping per event.
    waiting = select.poll()
    open_fds = {pidfd, out, err}
    try:
        for fd in open_fds:
            waiting.register(fd, select.POLLIN)
        unsent = _start_input(proc, data, waiting, open_fds)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, limit)
            for fd, _ in waiting.poll(left * 1000 + 1):
                if fd == pidfd:
                    _done_with(fd, waiting, open_fds)
                elif fd in output:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        output[fd].append(chunk)
                    else:
                        _done_with(fd, waiting, open_fds)
                else:
                    unsent = _send_input(proc, unsent, waiting, open_fds)
    finally:
        os.close(pidfd)
    proc.wait()                      # it has ended: no waiting
    proc.stdout.close()
    proc.stderr.close()
    return b"".join(output[out]), b"".join(output[err])


def _done_with(fd: int, waiting: select.poll, open_fds: set[int]) -> None:
    waiting.unregister(fd)
    open_fds.discard(fd)


def _start_input(proc: subprocess.Popen, data: bytes | None, waiting: select.poll,
                 open_fds: set[int]) -> memoryview:
    if proc.stdin is None:
        return memoryview(b"")
    if not data:
        _close_input(proc)
        return memoryview(b"")
    waiting.register(proc.stdin.fileno(), select.POLLOUT)
    open_fds.add(proc.stdin.fileno())
    return memoryview(data)


def _send_input(proc: subprocess.Popen, unsent: memoryview, waiting: select.poll,
                open_fds: set[int]) -> memoryview:
    try:
        unsent = unsent[os.write(proc.stdin.fileno(), unsent[:select.PIPE_BUF]):]
    except BrokenPipeError:          # the command does not read it all: as Popen.communicate, not an error
        unsent = unsent[:0]
    if not unsent:
        _done_with(proc.stdin.fileno(), waiting, open_fds)
        _close_input(proc)
    return unsent


def _close_input(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.stdin = None                # Popen.communicate (after a kill) must not flush it again


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
