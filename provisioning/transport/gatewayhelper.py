"""CLISSH's file operations: nofollow helpers kept running on the gateway, one request at a time each.

Starting ``python3`` over ssh for every file operation cost a session and an
interpreter start each (an add made some 25). A helper (nofollow.serve) now
answers one operation after another over one ssh session, and the helpers
not in use wait in a pool: as many as operations ran at the same time, at
most ``cap`` ([Gateway] SESSIONS, below sshd's MaxSessions: a session the
server refuses would make ssh open a connection of its own, which sshd's
MaxStartups may drop); an operation beyond it waits for a helper.

Requests are numbered and each answer names its request. While an operation
runs the helper says every nofollow.HEARTBEAT seconds that it is at work, so
the end of a helper is told apart in seconds from a slow operation:

- ``Broken``: the helper cannot be used any more (it ended, the connection
  dropped, it said nothing for ``silence`` seconds, an answer that is not
  JSON or not to the request asked). Whether the operation took effect is
  unknown. CLISSH takes it for the gateway going away.
- ``GaveUp``: the operation did not end by its deadline while the helper
  was alive. The helper is killed; its session's end makes the helper on
  the gateway stop the operation too (nofollow.serve).

A helper found dead while it waited in the pool is dropped before it is used.
"""
from __future__ import annotations

import json
import logging
import math
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
# A helper that says nothing for this long while it works (no answer, no heartbeat) is taken for dead.
SILENCE = 6.0


class Broken(Exception):
    """The helper can no longer be used; the message says why."""


class GaveUp(Exception):
    """The operation did not end by its deadline (the helper was alive); the message says what waited."""


class Helper:
    """One ``python3 nofollow.py serve`` on the gateway, reached over one local ssh process."""

    def __init__(self, ssh: list[str], remote: list[str], deadline: float, *, silence: float = SILENCE) -> None:
        self.nonce = nonce = secrets.token_hex(8)
        self.silence = silence
        self.loaded: set[str] = set()           # modules sent for Transport.call (see CLISSH.call)
        self.proc = subprocess.Popen([*ssh, shlex.join([*remote, "serve", nonce])], start_new_session=True,
                                     env=GUARD.environment(None), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out, self._err = bytearray(), bytearray()
        self._asked = 0
        self._heard = time.monotonic()
        for fd in (self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.proc.stderr.fileno()):
            os.set_blocking(fd, False)
        try:
            # Starting may take a connection's handshake: bounded by ``deadline``, not by the silence.
            self.silence, silence = math.inf, self.silence
            self._greeting(nonce, deadline)
            self.silence = silence
        except GaveUp as err:
            self.kill()
            raise Broken(f"did not start in time ({err})") from None
        except BaseException:
            self.kill()
            raise

    def ask(self, request: dict, data: bytes, deadline: float) -> dict:
        """Send one request (and its file data) and return the helper's answer to it.

        Broken when the helper fails, GaveUp at ``deadline`` while it still works.
        """
        self._asked += 1
        number = self._asked
        header = json.dumps({**request, "id": number, "size": len(data)}).encode("utf-8") + b"\n"
        self._heard = time.monotonic()
        self._send(header + data, deadline)
        while True:
            answer = self._json(self._line(deadline))
            if not isinstance(answer, dict) or answer.get("id") != number:
                raise Broken(f"answered {answer!r:.200} to request {number}")
            if answer.get("alive") is True:
                continue                        # the heartbeat of a long operation
            if not ("value" in answer or "errno" in answer):
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
        """SIGKILL the local ssh's process group and collect it (by the thread that uses the helper)."""
        self.cut()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        self.proc.wait()

    def cut(self) -> None:
        """SIGKILL the local ssh's process group, nothing else: safe from any thread. The thread
        waiting on the helper then sees its end (Broken) and collects it."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
            self._heard = time.monotonic()

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._out:
            self._wait(self.proc.stdout.fileno(), select.POLLIN, deadline)
            chunk = _read(self.proc.stdout.fileno())
            if chunk == b"":
                raise Broken(self._ended())
            if chunk:
                self._out += chunk
                self._heard = time.monotonic()
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        """Until ``fd`` is ready for ``event``; keeps the latest stderr meanwhile.

        GaveUp at ``deadline``; Broken once nothing went either way for ``silence`` seconds.
        """
        waiting = select.poll()
        waiting.register(fd, event)
        waiting.register(self.proc.stderr.fileno(), select.POLLIN)
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise GaveUp("no answer in time")
            if now - self._heard >= self.silence:
                raise Broken(f"said nothing for {self.silence:g} s")
            left = min(deadline, self._heard + self.silence) - now
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
    """The helpers: those not in use wait here; a new one is started when none waits, up to ``cap``.

    The most recently used helper is taken first, so after a burst the ones
    no longer needed stay at the bottom; one idle longer than IDLE_SECONDS is
    ended when a helper is given back (each is a python3 process on the
    gateway, and keeps an ssh session open). With ``cap`` helpers at work, an
    operation waits for one to be given back.
    """

    def __init__(self, start: Callable[[float], Helper], *, cap: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._start = start
        self.cap = cap
        self._clock = clock
        self._idle: list[tuple[Helper, float]] = []    # (helper, given back at), oldest first
        self._live: set[Helper] = set()                # idle or at work
        self._starting = 0
        self._changed = threading.Condition()

    def take(self, deadline: float) -> Helper:
        """A waiting helper that is still usable, or a new one; GaveUp when none is free by ``deadline``."""
        while True:
            with self._changed:
                helper = self._idle.pop()[0] if self._idle else None
                if helper is None and len(self._live) + self._starting >= self.cap:
                    if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                        raise GaveUp(f"all {self.cap} gateway sessions ([Gateway] SESSIONS) were busy")
                    continue
                if helper is None:
                    self._starting += 1
            if helper is None:
                return self._new(deadline)
            if helper.usable():
                return helper
            log.debug("gateway helper %s ended while it waited (%s): dropped", helper.proc.pid, helper.why())
            self.drop(helper)

    def warm(self, count: int, deadline: float) -> None:
        """Start up to ``count`` helpers in the background, for the operations about to come (after a
        reconnect: as many as were at work). Each start costs an interpreter's start-up on the
        gateway, seconds on a busy one; started side by side, they do not add up for the first
        requests. One that fails is dropped (the operation that needs it starts its own)."""
        for _ in range(count):
            with self._changed:
                if len(self._live) + self._starting >= self.cap:
                    return
                self._starting += 1
            threading.Thread(target=self._warm_one, args=(deadline,), name="gateway-helper-start",
                             daemon=True).start()

    def _warm_one(self, deadline: float) -> None:
        try:
            helper = self._new(deadline)
        except (Broken, OSError) as err:
            log.debug("a gateway helper started ahead failed: %s", err)
            return
        self.give_back(helper)

    def _new(self, deadline: float) -> Helper:
        try:
            helper = self._start(deadline)
        except BaseException:
            with self._changed:
                self._starting -= 1
                self._changed.notify()
            raise
        with self._changed:
            self._starting -= 1
            self._live.add(helper)
        return helper

    def give_back(self, helper: Helper) -> None:
        """``helper`` answered its request and may take the next."""
        now = self._clock()
        with self._changed:
            if helper not in self._live:          # cut meanwhile (see cut_all): not to be used again
                ended = [(helper, now)]
            else:
                self._idle.append((helper, now))
                stale = 0
                while stale < len(self._idle) - 1 and now - self._idle[stale][1] > IDLE_SECONDS:
                    stale += 1
                ended, self._idle = self._idle[:stale], self._idle[stale:]
                self._live.difference_update(old for old, _ in ended)
            self._changed.notify(len(ended) + 1)
        for old, _ in ended:
            log.debug("gateway helper %s idle for over %d s: ended", old.proc.pid, IDLE_SECONDS)
            old.close()

    def drop(self, helper: Helper) -> None:
        """``helper`` is not to be used again: killed and forgotten (by the thread that used it)."""
        helper.kill()
        with self._changed:
            self._live.discard(helper)
            self._changed.notify()

    def cut_all(self) -> int:
        """Kill every helper at once, idle or at work (the connection they share is dead); how many were at work.

        The threads at work on one see it end and drop it; the idle ones are collected here.
        """
        with self._changed:
            idle, self._idle = self._idle, []
            working = self._live - {helper for helper, _ in idle}
            self._live = set()
            self._changed.notify_all()
        for helper in working:
            helper.cut()
        for helper, _ in idle:
            helper.kill()
        return len(working)

    def waiting(self) -> list[Helper]:
        """The helpers waiting, oldest first."""
        with self._changed:
            return [helper for helper, _ in self._idle]

    def close(self) -> None:
        """End every waiting helper."""
        with self._changed:
            idle, self._idle = self._idle, []
            self._live.difference_update(helper for helper, _ in idle)
            self._changed.notify_all()
        for helper, _ in idle:
            helper.close()
