"""Waiting for something observable, with a deadline: tests never sleep and hope."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

# Seconds a test waits for anything (a log line, an entry's mode) before it fails.
DEADLINE = 20.0
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` after ``timeout`` s.

    :return: the first true value ``predicate`` returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
