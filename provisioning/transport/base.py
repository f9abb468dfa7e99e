"""The transport interface, command results, request deadlines, and the dry-run wrapper."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import shlex
import signal
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Mapping, Sequence

from provisioning.base.log import print_line

log = logging.getLogger(__name__)

EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124
PAST_DEADLINE = "the request ran past its deadline"

# Exit codes a shell reports for a child killed by one of these signals (128 + N).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP)
# How long a command a signal ended waits for the daemon's own stop (see ended_by_the_stop).
STOP_NOTICE = 1.0


class Interrupted(BaseException):
    """The command ended because the daemon is stopping.

    A BaseException, like KeyboardInterrupt, so that plugin code catching
    Exception does not turn it into the request's failure: the core can end
    the request without an outcome and resume it later.
    """


class Unreachable(BaseException):
    """The host the transport works on did not answer: the CLISSH gateway is away.

    Not the request's fault, and nothing the host said about the account: the
    core keeps the request claimed without an outcome (or leaves it open),
    waits for the host as it waits for the directory ([Operation Mode] SLEEP
    and ATTEMPTS), and works it again once the host answers. A BaseException,
    like Interrupted, so that plugin code catching Exception or OSError does
    not turn it into a return value. Whether an operation under way when the
    host went away took effect is unknown: the request is worked again whole.
    """


# When the request being worked on must be done, as a time.monotonic() value
# (None: no deadline). A ContextVar, so each worker thread has its own.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_deadline", default=None)


@contextlib.contextmanager
def within_deadline(seconds: float) -> Iterator[float]:
    """Commands run inside the block (in this thread/context) end at the latest ``seconds`` from now.

    Nested blocks never extend an outer deadline: the earlier one holds.
    Yields the deadline (a time.monotonic() value).
    """
    deadline = time.monotonic() + seconds
    outer = request_deadline.get()
    if outer is not None:
        deadline = min(deadline, outer)
    token = request_deadline.set(deadline)
    try:
        yield deadline
    finally:
        request_deadline.reset(token)


def time_left(timeout: float) -> float | None:
    """The limit for a command starting now: ``timeout`` or less, None when the deadline passed."""
    deadline = request_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    return min(timeout, left) if left > 0 else None


def not_run_past_deadline(argv: list[str], shown: str) -> "CommandResult":
    """The result of a command the request's deadline left no time for (logged)."""
    log.warning("not run, %s: %s", PAST_DEADLINE, shown)
    return CommandResult(argv, EXIT_TIMEOUT, stderr=PAST_DEADLINE)


def killed_after(limit: float, wanted: float) -> str:
    """What a command killed at ``limit`` seconds says (``wanted``: its own timeout)."""
    why = " (the request's deadline)" if limit < wanted else ""
    return f"killed after {limit:g} s{why}"


def stopped_by_signal(returncode: int) -> bool:
    """Whether ``returncode`` says a signal ended the command (directly or through a shell)."""
    return returncode < 0 or returncode in {128 + int(sig) for sig in STOP_SIGNALS}


def ended_by_the_stop(returncode: int | None, stopping: threading.Event | None) -> bool:
    """Whether a command (``returncode`` None: a gateway helper) ended because the daemon is stopping.

    systemd's default KillMode sends SIGTERM to the daemon and its commands at
    once, and a worker can see its command end before the main thread has run
    the daemon's handler: one a signal ended waits up to STOP_NOTICE seconds
    for the stop to be noticed.
    """
    if stopping is None or (returncode is not None and not stopped_by_signal(returncode)):
        return False
    return stopping.wait(STOP_NOTICE)


@dataclass(frozen=True)
class Reach:
    """What a transport knows of whether its host answers (for the log, status, --check, metrics)."""

    where: str                  # the host, as the log names it: root@gateway port 22
    up: bool                    # False: away (an operation found it out of reach), until it answers again
    since: float                # time.time() of the last change between up and away
    answered: float | None      # time.time() of its last answer (None: none yet)
    why: str = ""               # what showed it away

    def silent_for(self, now: float | None = None) -> float | None:
        """Seconds since the host last answered (None: it never did)."""
        if self.answered is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.answered)


@dataclass
class CommandResult:
    """How a command ended. Commands never raise: failures are results.

    ``stdout`` and ``stderr`` are the end of each (the last
    nofollow.OUTPUT_KEPT bytes); ``stdout_dropped`` and ``stderr_dropped``
    count the bytes before it that were read and not kept.
    """

    argv: list[str]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line for the log: the command, its exit code and its last words (and what was dropped before)."""
        stream, text, dropped = (("stderr", self.stderr, self.stderr_dropped) if self.stderr.strip() else
                                 ("stdout", self.stdout, self.stdout_dropped))
        said = text.strip().splitlines()
        tail = f": {said[-1]}" if said else ""
        cut = f" ({dropped} earlier bytes of {stream} dropped)" if dropped else ""
        return f"{shlex.join(self.argv)} exited {self.returncode}{tail}{cut}"


class Transport(ABC):
    """Runs commands and changes files on the host being provisioned.

    File operations raise OSError on failure and never go through a symbolic
    link a customer could have planted (see provisioning.transport.nofollow);
    ``run`` returns a result, except that it raises Interrupted when the
    command was ended by a signal while the daemon is stopping.
    """

    dry_run = False
    # Where commands run and files change: None for this host, else the remote
    # host as people read it ("user@gateway port 22"). What a plugin asks
    # instead of comparing the transport's class name.
    where: str | None = None

    @abstractmethod
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        """Run ``argv`` (no shell) and wait for it.

        The command gets at most ``timeout`` (default: the transport's) and
        never more than the time left until ``request_deadline``. ``env`` is
        its whole environment (None: the daemon's own); it never appears on
        a command line, so values from the directory can go there.
        """

    @abstractmethod
    def call(self, modules: Sequence[ModuleType], function: str, *args: Any, shown: str = "") -> Any:
        """``function(*args)`` of the last of ``modules``, run where the files are; its result.

        For host work that would otherwise start a program each time (the
        jail builder): LocalCLI calls it in this process, CLISSH in its
        helper on the gateway, which is sent the modules' source once and
        keeps them. Each module must be self-contained there (standard
        library, Python 3.7+) and import the ones before it in ``modules``
        by their last name when its package is missing. Arguments and result
        are JSON values; an OSError raised there is raised here. It may
        change the host: a dry run says what it would call (``shown``, or
        the function's name) and returns None.
        """

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether ``path`` exists; OSError for any error but "does not exist"."""

    @abstractmethod
    def lstat(self, paths: Sequence[str]) -> dict[str, dict | None]:
        """What is at each path, never following a link: {"kind", "uid", "gid", "mode"} or None.

        kind is "directory", "symbolic link", "regular file" or "special
        file". A read: it runs in dry-run too.
        """

    @abstractmethod
    def read_small(self, path: str, limit: int = 4096) -> str:
        """The first ``limit`` bytes of a regular file, never through a link (OSError otherwise)."""

    @abstractmethod
    def realpath(self, path: str) -> str:
        """``path`` with symlinks and ``..`` resolved (it need not exist)."""

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        """``realpath`` of each path, in one go (a transport may share the work between them)."""
        return [self.realpath(path) for path in paths]

    @abstractmethod
    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        """Replace ``path`` atomically: readers see the old or the new file, never half."""

    @abstractmethod
    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        """Create ``path`` and missing parents; set mode and owner on ``path``."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (same filesystem)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove the file ``path``; a missing file is fine."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Remove the directory tree ``path``; a missing one is fine."""

    def close(self) -> None:
        """Let go of what the transport keeps open between operations (CLISSH's connection)."""

    def reach(self) -> "Reach | None":
        """Whether the host answers, and since when; None for this host (always here)."""
        return None

    def reconnect(self) -> None:
        """After Unreachable: reach the host again (Unreachable if it still does not answer)."""

    def discard(self, path: str) -> None:
        """Remove the file ``path`` (a missing file is fine), and never raise Unreachable: when the
        host is out of reach, it is removed as soon as it answers again. OSError as ``remove``."""
        self.remove(path)


class DryRun(Transport):
    """Prints what would change and changes nothing; reads still happen."""

    dry_run = True

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.where = inner.where

    def _say(self, what: str) -> None:
        # Printed, not only logged: dry-run output must show even with
        # LOG_INFO off or without --debug.
        line = f"DRY-RUN: would {what}"
        print_line(line)
        log.info("%s", line)

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        shown = shlex.join(argv)
        if env is not None:
            shown = shlex.join(["env", "-i", *(f"{name}={value}" for name, value in env.items())]) + " " + shown
        self._say(f"run: {shown}")
        return CommandResult(list(argv), 0)

    def call(self, modules: Sequence[ModuleType], function: str, *args: Any, shown: str = "") -> Any:
        self._say(f"call {shown or modules[-1].__name__.rpartition('.')[2] + '.' + function}")
        return None

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def close(self) -> None:
        self.inner.close()

    def reach(self) -> "Reach | None":
        return self.inner.reach()

    def reconnect(self) -> None:
        self.inner.reconnect()

    def discard(self, path: str) -> None:
        self._say(f"remove {path}")

    def realpath(self, path: str) -> str:
        return self.inner.realpath(path)

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        return self.inner.realpaths(paths)

    def lstat(self, paths: Sequence[str]) -> dict[str, dict | None]:
        return self.inner.lstat(paths)

    def read_small(self, path: str, limit: int = 4096) -> str:
        return self.inner.read_small(path, limit)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        self._say(f"write {len(data)} bytes to {path} (mode {mode:o}, owner {owner})")

    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        self._say(f"create directory {path} (mode {mode:o}, owner {owner})")

    def rename(self, src: str, dst: str) -> None:
        self._say(f"move {src} to {dst}")

    def remove(self, path: str) -> None:
        self._say(f"remove {path}")

    def remove_tree(self, path: str) -> None:
        self._say(f"remove the tree {path}")
