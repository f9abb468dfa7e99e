"""Run one step of a request in a helper thread while the request's own thread does another.

A host command spends most of its time waiting (for the program to start,
for the disk). Steps that do not depend on it (another command, writing and
syncing a file) can be done meanwhile. The helper runs in a copy of the
caller's context, so the request's deadline (transport.request_deadline)
and the request's log capture hold there too.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

# Threads are made on demand and kept: two per worker at most (setquota and
# the configuration's write), and [Service] WORKERS is at most 64 (or the CPU
# count). With more, a step may wait for a free helper: slower, never stuck,
# as a helper's step waits for nothing but its command or the disk.
_HELPERS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="alongside")


class _Withdrawable(Generic[T]):
    """The step, unless it was withdrawn before a helper took it up."""

    def __init__(self, step: Callable[[], T]) -> None:
        self.step = step
        self.context = contextvars.copy_context()
        self.lock = threading.Lock()
        self.state = "waiting"

    def __call__(self) -> T | None:
        with self.lock:
            if self.state != "waiting":
                return None
            self.state = "running"
        return self.context.run(self.step)

    def withdraw(self) -> bool:
        """Make sure it never runs; False if a helper has already begun it."""
        with self.lock:
            if self.state == "waiting":
                self.state = "withdrawn"
            return self.state == "withdrawn"


def alongside(step: Callable[[], T]) -> Future:
    """Start ``step`` in a helper thread; ``.result()`` waits for it and raises what it raised.

    Raises (RuntimeError) when no helper can be started; the step then never
    runs. The executor queues a step before it starts a thread for it, so a
    failed start would otherwise leave it to run later, unwatched.
    """
    job = _Withdrawable(step)
    try:
        return _HELPERS.submit(job)
    except BaseException:
        if not job.withdraw():
            # Taken up by a helper that just finished another step: it cannot be waited for.
            raise RuntimeError("a step started although no helper could be started for it") from None
        raise


class Company:
    """How many requests the plugin has in hand at this moment.

    Helpers pay off only while cores would otherwise idle: for a request
    worked alone they take its latency from the sum of its steps to the
    longest one. While another request is worked too, its work fills the
    cores, and every hand-off between threads (the GIL passed on at each
    system call) only costs CPU: measured in a burst of 2,000 adds with two
    workers, 5.3-6.0 ms of the daemon's CPU per account with helpers against
    4.5-5.1 without, and 140-160 adds/s against 159-175.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in = 0

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        """Inside: a request in the plugin's hands (from its judging to its last step)."""
        with self._lock:
            self._in += 1
        try:
            yield
        finally:
            with self._lock:
                self._in -= 1

    def alone(self) -> bool:
        """Whether no other request is in the plugin's hands at this moment."""
        return self._in <= 1
