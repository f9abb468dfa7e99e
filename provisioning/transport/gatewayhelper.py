"""CLISSH's file operations: nofollow helpers kept running on the gateway, one request at a time each.

Starting ``python3`` over ssh for every file operation cost a session and an
interpreter start each (an add made some 25). A helper (nofollow.serve) now
answers one operation after another over one ssh session, and the helpers
not in use wait in a pool: as many as operations ran at the same time.

A helper that fails in any way (it ended, the connection dropped, no answer
within COMMAND_TIMEOUT or the request's deadline, an answer that is not
JSON) is killed with its process group and never used again; the operation
fails with the reason, as a failed ssh did before. Whether the operation took
effect is then unknown, as it was when a single ssh was killed. A helper
found dead while it waited in the pool is dropped before it is used.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import select
import shlex
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from provisioning.transport.commandguard import GUARD
from provisioning.transport.spawn import REAP_SECONDS

log = logging.getLogger(__name__)

# What a login script on the gateway may print before the helper starts.
MAX_GREETING = 65536
# The stderr kept to explain a failure.
STDERR_KEPT = 4096
# A helper not used for this long is ended (as ssh's ControlPersist ends the connection).
IDLE_SECONDS = 60


class Broken(Exception):
    """The helper can no longer be used; the message says why."""


class Helper:
    """One ``python3 nofollow.py serve`` on the gateway, reached over one local ssh process."""

    def __init__(self, ssh: list[str], remote: list[str], deadline: float) -> None:
        self.nonce = nonce = secrets.token_hex(8)
        self.proc = subprocess.Popen([*ssh, shlex.join([*remote, "serve", nonce])], start_new_session=True,
                                     env=GUARD.environment(None), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out, self._err = bytearray(), bytearray()
        for fd in (self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.proc.stderr.fileno()):
            os.set_blocking(fd, False)
        try:
            self._greeting(nonce, deadline)
        except BaseException:
            self.kill()
            raise

    def ask(self, request: dict, data: bytes, deadline: float) -> dict:
        """Send one request (and its file data) and return the helper's answer."""
        header = json.dumps({**request, "size": len(data)}).encode("utf-8") + b"\n"
        self._send(header + data, deadline)
        answer = self._json(self._line(deadline))
        if not isinstance(answer, dict) or not ("value" in answer or "errno" in answer):
            raise Broken(f"answered {answer!r:.200}")
        return answer

    def usable(self) -> bool:
        """Alive and silent, as a helper waiting for its next request is."""
        if self.proc.poll() is not None:
            return False
        waiting = select.poll()
        waiting.register(self.proc.stdout.fileno(), select.POLLIN)
        return not waiting.poll(0)

    def close(self) -> None:
        """Let the helper end (end of its input), killing it if it does not."""
        try:
            self.proc.stdin.close()
            self.proc.wait(REAP_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the local ssh's process group and collect it."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        self.proc.wait()

    def why(self) -> str:
        """How the helper ended, with what it said on stderr."""
        code = self.proc.poll()
        said = self._err.decode("utf-8", "replace").strip()
        ended = "still running" if code is None else f"exited {code}"
        return f"{ended}: {said}" if said else ended

    def _greeting(self, nonce: str, deadline: float) -> None:
        skipped = 0
        while True:
            line = self._line(deadline)
            if line.strip() == json.dumps({"ready": nonce}).encode():
                return
            skipped += len(line)
            if skipped > MAX_GREETING:
                raise Broken(f"printed {skipped} bytes and never said it was ready")

    def _send(self, data: bytes, deadline: float) -> None:
        unsent = memoryview(data)
        while unsent:
            self._wait(self.proc.stdin.fileno(), select.POLLOUT, deadline)
            try:
                unsent = unsent[os.write(self.proc.stdin.fileno(), unsent):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise Broken(self._ended()) from None

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._out:
            self._wait(self.proc.stdout.fileno(), select.POLLIN, deadline)
            chunk = _read(self.proc.stdout.fileno())
            if chunk == b"":
                raise Broken(self._ended())
            self._out += chunk or b""
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        """Until ``fd`` is ready for ``event``; keeps the latest stderr meanwhile."""
        waiting = select.poll()
        waiting.register(fd, event)
        waiting.register(self.proc.stderr.fileno(), select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Broken("no answer in time")
            ready = dict(waiting.poll(left * 1000 + 1))
            if self.proc.stderr.fileno() in ready:
                said = _read(self.proc.stderr.fileno())
                if said == b"":
                    waiting.unregister(self.proc.stderr.fileno())
                self._err = (self._err + (said or b""))[-STDERR_KEPT:]
            if fd in ready:
                return

    def _ended(self) -> str:
        try:
            self.proc.wait(REAP_SECONDS)
            self._err += _read(self.proc.stderr.fileno()) or b""
        except (OSError, subprocess.TimeoutExpired):
            pass
        return self.why()

    @staticmethod
    def _json(line: bytes) -> Any:
        try:
            return json.loads(line.decode("utf-8"))
        except ValueError:
            raise Broken(f"answered {line[:200]!r}") from None


def _read(fd: int) -> bytes | None:
    """What can be read now: b"" at the end, None when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


class HelperPool:
    """The helpers not in use; a new one is started when none waits.

    The most recently used helper is taken first, so after a burst the ones
    no longer needed stay at the bottom; one idle longer than IDLE_SECONDS is
    ended when a helper is given back (each is a python3 process on the
    gateway, and keeps an ssh session open).
    """

    def __init__(self, start: Callable[[float], Helper], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._start = start
        self._clock = clock
        self._idle: list[tuple[Helper, float]] = []    # (helper, given back at), oldest first
        self._lock = threading.Lock()

    def take(self, deadline: float) -> Helper:
        """A waiting helper that is still usable, or a new one."""
        while True:
            with self._lock:
                helper = self._idle.pop()[0] if self._idle else None
            if helper is None:
                return self._start(deadline)
            if helper.usable():
                return helper
            log.debug("gateway helper %s ended while it waited (%s): dropped", helper.proc.pid, helper.why())
            helper.kill()

    def give_back(self, helper: Helper) -> None:
        """``helper`` answered its request and may take the next."""
        now = self._clock()
        with self._lock:
            self._idle.append((helper, now))
            stale = 0
            while stale < len(self._idle) - 1 and now - self._idle[stale][1] > IDLE_SECONDS:
                stale += 1
            ended, self._idle = self._idle[:stale], self._idle[stale:]
        for old, _ in ended:
            log.debug("gateway helper %s idle for over %d s: ended", old.proc.pid, IDLE_SECONDS)
            old.close()

    def waiting(self) -> list[Helper]:
        """The helpers waiting, oldest first."""
        with self._lock:
            return [helper for helper, _ in self._idle]

    def close(self) -> None:
        """End every waiting helper."""
        with self._lock:
            idle, self._idle = self._idle, []
        for helper, _ in idle:
            helper.close()
