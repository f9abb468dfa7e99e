"""--daemon: detach from the terminal, and exit with the daemon's own start-up result.

The command that starts the daemon waits on a pipe until the detached
process says how its start went: ``pid N`` once it is detached, then
``exit 0`` once it is connected and synchronising, or ``exit CODE`` when it
gave up (wrong password 3, LDAP out of reach 4, already running 5). So an
init script sees a failed start as a failure, not as 0. Should the daemon
die without a word, the pipe closes and the starting command says so.

Under systemd or inetd python-daemon does not fork (detaching would hide the
process from its supervisor); the daemon then runs where it was started and
nobody waits.

Without syslog (no /dev/log) a detached daemon's stderr goes nowhere, so it
logs to [Service] LOG_FILE (default COOKIE_FILE.log). The starting command
opens that file (never through a link: provisioning.base.files) and names it, so
a file that cannot be opened stops the start where the operator sees it.
"""
from __future__ import annotations

import logging
import os
import select
import sys
import time
from pathlib import Path

from provisioning.base.codes import ExitCode
from provisioning.base.files import open_private
from provisioning.base.log import STREAM_FORMAT, SYSLOG_SOCKET, LogFileHandler, LevelFlags, install

log = logging.getLogger(__name__)

# How often the starting command says that it is still waiting.
WAIT_REPORT_INTERVAL = 30.0


class Readiness:
    """The daemon's end of the pipe; reports how the start went, once."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd

    def _say(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, f"{text}\n".encode())
        except OSError:
            self.close()            # the starting command is gone: nobody to tell

    def detached(self) -> None:
        self._say(f"pid {os.getpid()}")

    def report(self, code: int) -> None:
        """0: connected and synchronising; anything else: the exit code it stops with."""
        self._say(f"exit {int(code)}")
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def needs_log_file() -> bool:
    """Whether a detached daemon has no syslog to log to."""
    return not os.path.exists(SYSLOG_SOCKET)


def open_log_file(path: Path) -> int:
    """The log file for appending (created 0600); UnsafeFile or OSError when it cannot be used."""
    return open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def log_to_file(fd: int, path: Path, flags: LevelFlags) -> None:
    """Send every record to the already opened log file (and nowhere else)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    # SIGHUP reopens it by its name (logrotate), never through a link either.
    install(LogFileHandler(fd, str(path), lambda: open_log_file(path)), STREAM_FORMAT, flags)
    log.warning("%s is missing: logging to %s", SYSLOG_SOCKET, path)


def detach(keep: list[int]) -> tuple[int | None, Readiness | None]:
    """Fork the daemon off.

    Returns ``(code, None)`` in the starting process, once the daemon has
    reported (``code`` is what the starting command exits with), and
    ``(None, readiness)`` in the daemon. ``keep``: descriptors the daemon
    keeps (python-daemon closes every other one).
    """
    import daemon as python_daemon  # only needed here

    if not python_daemon.daemon.is_detach_process_context_required():
        python_daemon.DaemonContext(working_directory="/", umask=0o022, files_preserve=keep).open()
        return None, Readiness()
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        return _wait(read_end, child), None
    os.close(read_end)
    try:
        context = python_daemon.DaemonContext(working_directory="/", umask=0o022, detach_process=True,
                                              files_preserve=keep + [write_end])
        context.open()          # forks twice; only the daemon returns
    except BaseException as err:  # noqa: BLE001 - the starting command must hear of it
        os.write(write_end, f"error {type(err).__name__}: {err}\nexit {ExitCode.INTERNAL_ERROR}\n".encode())
        os._exit(ExitCode.INTERNAL_ERROR)
    readiness = Readiness(write_end)
    readiness.detached()
    return None, readiness


def _wait(fd: int, child: int) -> int:
    """Read the daemon's reports until its exit line or the end of the pipe."""
    os.waitpid(child, 0)            # the intermediate process exits as soon as it forked again
    buffer, pid, started = b"", "?", time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], WAIT_REPORT_INTERVAL)
            if not ready:
                print(f"provisioning-daemon: waiting for the daemon (process {pid}) to connect to LDAP "
                      f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                print(f"provisioning-daemon: the daemon (process {pid}) ended without reporting how its "
                      f"start went; see its log", file=sys.stderr)
                return ExitCode.INTERNAL_ERROR
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == "pid":
                    pid = rest
                elif word == "error":
                    print(f"provisioning-daemon: cannot detach: {rest}", file=sys.stderr)
                elif word == "exit":
                    return _finish(int(rest), pid)
    finally:
        os.close(fd)


def _finish(code: int, pid: str) -> int:
    if code == ExitCode.OK:
        print(f"provisioning-daemon: running as process {pid}, connected and synchronising", flush=True)
    else:
        print(f"provisioning-daemon: the daemon (process {pid}) did not start: exit code {code} "
              f"({_meaning(code)}); see its log", file=sys.stderr)
    return code


def _meaning(code: int) -> str:
    try:
        return ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown"
