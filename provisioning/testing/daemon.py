"""provisioning-daemon in a subprocess, its output in a file a test can search."""
from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

from provisioning.testing.wait import DEADLINE, wait_until

# What the daemon logs once it is connected and has seen the whole subtree.
READY = r"initial synchronisation of .* done"
TAIL = 8000         # of the daemon's log, shown when a test fails while it runs


def reap_leftovers() -> int:
    """SIGKILL every daemon (with its commands) started here and still running; how many.

    A test that fails between start() and stop() must not leave a daemon
    behind that retries a dead directory forever (ATTEMPTS = 0): the pytest
    plugin calls this after every test, and this process at its exit.
    """
    reaped = 0
    for daemon in list(DaemonProcess.started):
        if daemon.running:
            daemon.kill_all()
            reaped += 1
    DaemonProcess.started.clear()
    return reaped


atexit.register(reap_leftovers)


class DaemonProcess:
    """``python -m provisioning -c CONFIG [-g GLOBAL] [--debug] ARGS`` started in ``workdir``.

    ``python`` is the interpreter (default: this one), so a test can run the
    daemon of another virtualenv, where the plugin under test is installed;
    ``env`` its whole environment (default: this process's).
    """

    started: list["DaemonProcess"] = []     # see reap_leftovers()

    def __init__(self, config: Path, global_config: Path | None, workdir: Path, *args: str,
                 log_name: str = "daemon.log", python: str | Path | None = None,
                 env: dict[str, str] | None = None, debug: bool = True) -> None:
        self.config = Path(config)
        self.global_config = global_config
        self.workdir = Path(workdir)
        self.args = list(args)
        self.python = str(python or sys.executable)
        self.env = env
        self.debug = debug
        self.log_path = self.workdir / log_name
        self.proc: subprocess.Popen | None = None
        self._log: IO[str] | None = None
        self.files = None       # the ServiceFiles it was started with (fixture provisioning_daemon)
        self.collected = False  # stop(), kill() or wait_exit() took its exit code

    def command(self) -> list[str]:
        global_args = ["-g", str(self.global_config)] if self.global_config else []
        debug = ["--debug"] if self.debug else []
        return [self.python, "-m", "provisioning", "-c", str(self.config), *global_args, *debug, *self.args]

    def start(self, wait_ready: bool = True) -> "DaemonProcess":
        """Start it; with ``wait_ready`` wait until its first refresh is done."""
        self._log = open(self.log_path, "a")
        # A session of its own: kill_all() can take the daemon and its children.
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=self.env, start_new_session=True)
        DaemonProcess.started.append(self)
        if wait_ready:
            self.wait_for(READY)
        return self

    def __enter__(self) -> "DaemonProcess":
        return self if self.proc is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            # A test that failed inside the block (a wait_until of its own, an assert): its
            # report then shows what the daemon was doing, not only what the test waited for.
            print(f"--- {self.log_path}, its last {TAIL} characters ---\n{self.text()[-TAIL:]}")
        if self.running:
            self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        """Everything it wrote so far (stdout and stderr)."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text(), re.MULTILINE))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = DEADLINE) -> None:
        """Wait until ``pattern`` (a regular expression) matched ``count`` times; fail early if it exits."""
        def seen() -> bool:
            if self.proc and self.proc.poll() is not None and self.count(pattern) < count:
                raise AssertionError(f"daemon exited {self.proc.returncode} before logging {pattern!r}:\n"
                                     + self.text()[-3000:])
            return self.count(pattern) >= count
        try:
            wait_until(seen, f"{count} log line(s) matching {pattern!r}", timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- daemon log tail ---\n{self.text()[-3000:]}") from None

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE)
        self._close()

    def kill_all(self) -> None:
        """SIGKILL to the daemon and every command it runs: a crash of the whole service."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:               # the group is gone already
            pass
        self.proc.wait(DEADLINE)
        self._close()

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        self.collected = True
        if self._log is not None:
            self._log.close()
