"""Starting a command and waiting for it: posix_spawn, pipes, a pidfd, a deadline.

subprocess.Popen spent about 0.35 ms of the daemon's CPU per command in
Python (two commands per account); os.posix_spawn does the same work in C
for about 0.13 ms, and through ctypes (provisioning.transport.cspawn) it lets
the daemon's other threads run meanwhile. What Popen did for us is done here
on purpose:

- Descriptors: posix_spawn has no close_fds. Every descriptor Python opens
  is close-on-exec (PEP 446), and so are libldap's sockets and SQLite's
  files; t/test_transport.py checks that a command the daemon starts finds
  only its stdin, stdout and stderr open.
- Signals: Python ignores SIGPIPE (and SIGXFSZ); an ignored signal stays
  ignored across exec, so both are set back to their default in the child,
  as Popen's restore_signals does. One difference remains: glibc starts the
  child with its two internal real-time signals (32 and 33) ignored, and
  they cannot be reset here; every program linked with glibc installs its
  own handlers for them, and no command of ours uses them.
- A session of its own (setsid), as Popen's start_new_session.
- Output: only the last nofollow.OUTPUT_KEPT bytes of stdout and of stderr
  are kept (nofollow.Tail); the rest is read and dropped.

Waiting needs pidfd_open (Linux 5.3 and later).
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Mapping

from provisioning.transport import cspawn
from provisioning.transport.commandguard import COMMAND_VARIABLE, kill_marked
from provisioning.transport.nofollow import Tail

# How long to wait for the output of a command group that was killed.
REAP_SECONDS = 5.0
# Restored to their default in every command (see the module's docstring).
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
                         if hasattr(signal, name))


class Child:
    """A started command: its pid, the parent's ends of its pipes, and how it ended."""

    def __init__(self, path: str, argv: list[str], env: Mapping[bytes, bytes], with_stdin: bool) -> None:
        ends: list[int] = []
        try:
            stdin_r, self.stdin = os.pipe() if with_stdin else (-1, None)
            ends += [stdin_r, self.stdin] if with_stdin else []
            self.stdout, stdout_w = os.pipe()
            ends += [self.stdout, stdout_w]
            self.stderr, stderr_w = os.pipe()
            ends += [self.stderr, stderr_w]
            first = ((os.POSIX_SPAWN_DUP2, stdin_r, 0) if with_stdin else
                     (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
            self.pid = cspawn.spawn(path, argv, env, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                                    file_actions=[first, (os.POSIX_SPAWN_DUP2, stdout_w, 1),
                                                  (os.POSIX_SPAWN_DUP2, stderr_w, 2)])
        except BaseException:
            for fd in ends:
                os.close(fd)
            raise
        for fd in (stdin_r, stdout_w, stderr_w):
            if fd >= 0:
                os.close(fd)
        self.argv = argv
        self.returncode: int | None = None

    def wait(self) -> int:
        """Collect the command (it has ended, or is about to)."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close_input(self) -> None:
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def close_output(self) -> None:
        for name in ("stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def communicate(child: Child, data: bytes | None, limit: float) -> tuple[Tail, Tail]:
    """Send ``data``, read stdout and stderr to their end and collect the command, within ``limit`` s.

    Returns the tails of stdout and stderr. Raises subprocess.TimeoutExpired
    when ``limit`` passes first (the command is left running: see
    kill_group). Waits on a pidfd, so the command's end wakes it, not a
    polling sleep.
    """
    deadline = time.monotonic() + limit
    output = {child.stdout: Tail(), child.stderr: Tail()}
    pidfd = os.pidfd_open(child.pid)
    waiting = select.poll()
    open_fds = {pidfd, *output}
    try:
        for fd in open_fds:
            waiting.register(fd, select.POLLIN)
        unsent = _start_input(child, data, waiting, open_fds)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(child.argv, limit)
            for fd, _ in waiting.poll(left * 1000 + 1):
                if fd == pidfd:
                    _done_with(fd, waiting, open_fds)
                elif fd in output:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        output[fd].add(chunk)
                    else:
                        _done_with(fd, waiting, open_fds)
                else:
                    unsent = _send_input(child, unsent, waiting, open_fds)
    finally:
        os.close(pidfd)
    child.wait()                     # it has ended: no waiting
    out, err = output[child.stdout], output[child.stderr]
    child.close_output()
    return out, err


def kill_group(child: Child, marker: str) -> None:
    """SIGKILL the command's whole process group and every process carrying its ``marker``, then collect it.

    The group id is the command's pid, held while the command is unreaped,
    so the signal cannot reach a stranger. The marker (commandguard's
    COMMAND_VARIABLE) finds what left the group: a child that called setsid,
    a daemon's double fork. Output still held open by a process that
    escaped both (it replaced its environment, and left the group) is
    abandoned after REAP_SECONDS.
    """
    if child.returncode is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_marked(marker, COMMAND_VARIABLE)
    child.close_input()
    try:
        communicate(child, None, REAP_SECONDS)
    except subprocess.TimeoutExpired:
        child.close_output()
        child.wait()


def _done_with(fd: int, waiting: select.poll, open_fds: set[int]) -> None:
    waiting.unregister(fd)
    open_fds.discard(fd)


def _start_input(child: Child, data: bytes | None, waiting: select.poll, open_fds: set[int]) -> memoryview:
    if child.stdin is None:
        return memoryview(b"")
    if not data:
        child.close_input()
        return memoryview(b"")
    os.set_blocking(child.stdin, False)
    waiting.register(child.stdin, select.POLLOUT)
    open_fds.add(child.stdin)
    return memoryview(data)


def _send_input(child: Child, unsent: memoryview, waiting: select.poll, open_fds: set[int]) -> memoryview:
    try:
        unsent = unsent[os.write(child.stdin, unsent[:select.PIPE_BUF]):]
    except BlockingIOError:
        return unsent
    except BrokenPipeError:          # the command does not read it all: as Popen.communicate, not an error
        unsent = unsent[:0]
    if not unsent:
        _done_with(child.stdin, waiting, open_fds)
        child.close_input()
    return unsent
