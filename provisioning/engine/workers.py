"""Where jobs run: inline in the main loop (WORKERS = 1) or in a bounded pool of threads.

A job is the work for one entry: the protocol's writes and the plugin's
hook. It never raises: whatever happens becomes its Result, so one entry's
trouble is that entry's, never the daemon's. The main loop keeps the order
of jobs per entry and moves the cookie; the executors only run what they are
given and hand back (job, result) pairs in the order they finish.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

from provisioning.backend.ldap import DirectoryUnavailable, WriteRefused
from provisioning.base.entry import Entry
from provisioning.engine.results import Result
from provisioning.transport.base import Interrupted, Unreachable

log = logging.getLogger(__name__)


@dataclass
class Job:
    """The work for one entry; ``seq`` is the position of what caused it in the stream."""

    key: str
    dn: str
    work: Callable[[], Result]
    entry: Entry | None = None      # the version judged, remembered when the job ends
    seq: int = 0
    capture: Callable[[], ContextManager[list[str]]] | None = None   # collects the job's log lines

    def execute(self) -> Result:
        started = time.monotonic()
        if self.capture is None:
            result = self._execute()
        else:
            with self.capture() as lines:
                result = self._execute()
            result.lines = list(lines)
        result.took = time.monotonic() - started
        return result

    def _execute(self) -> Result:
        try:
            return self.work()
        except Interrupted:
            log.warning("%s: interrupted by the stop; taken up again at the next start", self.dn)
            return Result(interrupted=True)
        except Unreachable as err:
            log.warning("%s: stopped, %s; worked again once the gateway answers", self.dn, err)
            return Result(away=str(err))
        except (DirectoryUnavailable, WriteRefused) as err:
            return Result(retry=str(err))
        except Exception:  # noqa: BLE001 - a bug costs this entry, not the daemon
            log.exception("%s: unexpected error while handling the entry", self.dn)
            return Result()


class Inline:
    """Runs each job at once, in the caller's thread (WORKERS = 1)."""

    size = 1
    wake_fd = None          # nothing ends behind the caller's back

    def __init__(self) -> None:
        self._done: list[tuple[Job, Result]] = []

    @property
    def busy(self) -> int:
        return 0

    def submit(self, job: Job) -> None:
        self._done.append((job, job.execute()))

    def completed(self, timeout: float = 0) -> list[tuple[Job, Result]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


class Threads:
    """A fixed pool of worker threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._todo: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Job, Result]] = queue.SimpleQueue()
        self._running = 0
        # A byte per ended job: the main loop waits on it and on the LDAP
        # socket at once, so neither a result nor an event waits for the other.
        self.wake_fd, self._wake_write = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._threads = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
                         for n in range(size)]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> int:
        """Jobs submitted and not yet handed back."""
        return self._running

    def submit(self, job: Job) -> None:
        self._running += 1
        self._todo.put(job)

    def completed(self, timeout: float = 0) -> list[tuple[Job, Result]]:
        """Jobs that ended; waits up to ``timeout`` for the first one if none has."""
        done = []
        try:
            if timeout > 0 and self._running:
                done.append(self._done.get(timeout=timeout))
            while True:
                done.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self._running -= len(done)
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass
        return done

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join(5)
        os.close(self.wake_fd)
        os.close(self._wake_write)

    def _work(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            self._done.put((job, job.execute()))
            try:
                os.write(self._wake_write, b".")
            except BlockingIOError:
                pass            # the pipe is full of wake-ups already


def executor(size: int) -> Inline | Threads:
    return Inline() if size <= 1 else Threads(size)
