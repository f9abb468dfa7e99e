"""RequestLog: the log lines of one request, for the mail that reports it.

A logging.Handler on the root logger that keeps nothing by default. Inside
``with request_log.capture() as lines:`` every record the current thread
logs is formatted (one line each, as in the log) and appended to ``lines``.
The capture lives in a contextvars.ContextVar: each worker thread has its own
context, so requests worked at the same time in other threads never mix
their lines, and a record logged outside any capture costs one lookup. A
helper thread that runs a step of the request in a copy of its context
(Backup's setquota beside the home) adds to the same lines.

The lines are bounded, because a request may log a lot (a command's output,
a 100 KB directory value): at most ``max_lines`` lines of at most
``max_chars`` characters. When there are more, the first ``head`` lines and
the last ones are kept - the start says what was asked, the end why it
failed - and one line in between says how many were left out.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from contextvars import ContextVar
from typing import Iterator

from provisioning.base.log import STREAM_FORMAT, OneLineFormatter

MAX_LINES = 200
HEAD_LINES = 20
MAX_CHARS = 2000


class Lines(list):
    """The captured lines of one request; ``omitted`` counts the lines left out."""

    def __init__(self, max_lines: int = MAX_LINES, head: int = HEAD_LINES, max_chars: int = MAX_CHARS) -> None:
        super().__init__()
        self.max_lines = max(max_lines, head + 2)
        self.head = head
        self.max_chars = max_chars
        self.omitted = 0
        self._lock = threading.Lock()      # a request's helper threads add to the same lines

    def add(self, line: str) -> None:
        if len(line) > self.max_chars:
            line = f"{line[:self.max_chars]}... ({len(line) - self.max_chars} more characters)"
        with self._lock:
            self._add(line)

    def _add(self, line: str) -> None:
        if len(self) < self.max_lines:
            self.append(line)
            return
        # Full: the line after the head makes room (the first time, the
        # head's last line becomes the marker), the new line goes last.
        if not self.omitted:
            self.omitted = 1
        del self[self.head + 1]
        self.omitted += 1
        self[self.head] = f"[... {self.omitted} line(s) left out ...]"
        self.append(line)


class RequestLog(logging.Handler):
    """Collects the records logged while a request is worked, in the current thread only.

    Install it on the root logger once the log is set up, preferably through
    ``provisioning.base.log.install(request_log, STREAM_FORMAT, flags)`` so that
    it formats as the log does and keeps the same levels (a mail then shows
    exactly the lines the log has). ``provisioning.base.log.setup`` removes every
    root handler: install it again after each call.
    """

    def __init__(self, *, max_lines: int = MAX_LINES, head: int = HEAD_LINES,
                 max_chars: int = MAX_CHARS) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(OneLineFormatter(STREAM_FORMAT))
        self.max_lines = max_lines
        self.head = head
        self.max_chars = max_chars
        self._current: ContextVar[Lines | None] = ContextVar(f"request-log-{id(self)}", default=None)

    @contextlib.contextmanager
    def capture(self) -> Iterator[Lines]:
        """Collect what this thread logs until the block ends (nested: the inner block collects)."""
        lines = Lines(self.max_lines, self.head, self.max_chars)
        token = self._current.set(lines)
        try:
            yield lines
        finally:
            self._current.reset(token)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the lines belong to this request alone (Lines.add locks for its helpers).
        lines = self._current.get()
        if lines is None or not self.filter(record):
            return False
        try:
            lines.add(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted must not end the request
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        self.handle(record)
