"""Run one step of a request in a helper thread while the request's own thread does another.

A host command spends most of its time waiting (for the program to start,
for the disk). Steps that do not depend on it (another command, writing and
syncing a file) can be done meanwhile. The helper runs in a copy of the caller's
context, so the request's deadline (transport.request_deadline) holds there
too.
"""
from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

# Threads are made on demand and kept: two per worker at most (setquota and
# the configuration's write), and [Service] WORKERS is at most 64. With more
# workers a step may wait for a free helper: slower, never stuck, as a
# helper's step waits for nothing but its command or the disk.
_HELPERS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="alongside")


def alongside(step: Callable[[], T]) -> Future:
    """Start ``step`` in a helper thread; ``.result()`` waits for it and raises what it raised."""
    return _HELPERS.submit(contextvars.copy_context().run, step)
