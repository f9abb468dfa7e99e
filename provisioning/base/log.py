"""Logging set-up: syslog under the service's ident, stdout with --debug; one record, one line.

Which levels are written is decided by the LOG_DEBUG, LOG_INFO, LOG_WARNING
and LOG_ERR flags of the configuration, as in the original daemon.

Every handler the daemon installs formats through OneLineFormatter, so no call
site can forget it: whatever a record carries (a DN, an attribute value, a
command's stderr, a traceback), it is written as exactly one line. Control
characters become visible escapes (``\\n``, ``\\x1b``, ``\\u2028``) and a
backslash is doubled, so the text stays unambiguous: nothing from the
directory or from a command can start a line that looks like a record of its
own, or reach a terminal or syslog as an escape sequence.

Secrets are not handled here: configuration passwords are
provisioning.base.secret.Secret values and show as ``********`` wherever they go,
so there is nothing to search for and replace.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import unicodedata
from dataclasses import dataclass
from typing import Callable

SYSLOG_SOCKET = "/dev/log"
STREAM_FORMAT = "%(asctime)s %(levelname)s %(message)s"
SYSLOG_FORMAT = "%(levelname)s %(message)s"

# Characters that are escaped: control characters (C0, DEL, C1: category Cc),
# line and paragraph separators (Zl, Zp: some viewers break lines there),
# invisible format characters such as bidi overrides (Cf: they can make a line
# read differently from what it holds) and lone surrogates (Cs: they cannot be
# encoded for syslog at all).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Everything but printable ASCII other than the backslash is looked at; the
# rest (nearly every log line) passes the regular expression untouched.
_CANDIDATE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")


def escape(text: str) -> str:
    """``text`` on one line, with control and invisible characters as escapes.

    ``\\`` ``\\n`` ``\\r`` ``\\t`` and ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN`` as in a
    Python string literal; printable non-ASCII text (``Zürich``) stays as it is.
    """
    return _CANDIDATE.sub(_escaped, text)


_PRINTING = threading.Lock()


def print_line(text: str) -> None:
    """``text``, escaped, as one line on stdout (what --dry-run shows whatever the log levels).

    One write under a lock: print() writes the text and the newline apart, and
    two threads printing at once made "AB\\n\\n" (two lines on one, then an empty one).
    """
    with _PRINTING:
        sys.stdout.write(escape(text) + "\n")
        sys.stdout.flush()


def _escaped(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    if char > "\x7f" and unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class OneLineFormatter(logging.Formatter):
    """Formats a record as usual, then escapes it into one line.

    The whole formatted text is escaped, not only the message: the values of
    a record can reach the exception text and the stack too.

    Tracebacks are escaped into the same line (their line breaks show as
    ``\\n``) rather than kept on continuation lines: syslog and every log
    file are read line by line, by people and by tools (grep, fail2ban, a
    SIEM), and a receiver that writes a record's raw newlines turns each
    continuation line into a line without header that any of them may take
    for a record of its own. One rule with no exception, "one record, one
    line", is what makes a forged line impossible; the traceback stays
    complete, frames and all, on that one line. Tracebacks are rare here:
    they are only logged for bugs.
    """

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


@dataclass(frozen=True)
class LevelFlags:
    """Which levels pass: the LOG_* flags of the configuration."""

    debug: bool = False
    info: bool = True
    warning: bool = True
    error: bool = True

    def allows(self, levelno: int) -> bool:
        if levelno >= logging.ERROR:
            return self.error
        if levelno >= logging.WARNING:
            return self.warning
        if levelno >= logging.INFO:
            return self.info
        return self.debug


class _LevelGate(logging.Filter):
    def __init__(self, flags: LevelFlags) -> None:
        super().__init__()
        self.flags = flags

    def filter(self, record: logging.LogRecord) -> bool:
        return self.flags.allows(record.levelno)


def lowest_level(flags: LevelFlags) -> int:
    for level, allowed in ((logging.DEBUG, flags.debug), (logging.INFO, flags.info),
                           (logging.WARNING, flags.warning)):
        if allowed:
            return level
    return logging.ERROR


def setup(ident: str, flags: LevelFlags, *, to_stdout: bool,
          syslog_socket: str = SYSLOG_SOCKET) -> None:
    """Route every logger's records to syslog (and stdout) through the gate, one line each."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    # Records of a level no handler takes are not even built (log.debug is
    # then one comparison): the root level is the lowest level let through.
    root.setLevel(lowest_level(flags))
    syslog = _syslog_handler(ident, syslog_socket)
    if syslog is not None:
        install(syslog, SYSLOG_FORMAT, flags)
    stream = sys.stdout if to_stdout else sys.stderr
    if to_stdout or syslog is None:
        install(logging.StreamHandler(stream), STREAM_FORMAT, flags)
    if syslog is None:
        _no_syslog(syslog_socket, "stdout" if to_stdout else "stderr", stream)


_said_no_syslog = False


def _no_syslog(socket_path: str, where: str, stream) -> None:
    """Say once per process that records go to ``where``: at debug on a terminal, where the person
    reading sees them come anyway; as a warning elsewhere (a file a service's output goes to)."""
    global _said_no_syslog
    if _said_no_syslog:
        return
    _said_no_syslog = True
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    logging.getLogger(__name__).log(logging.DEBUG if terminal else logging.WARNING,
                                    "syslog socket %s is not available: logging to %s instead", socket_path, where)


def install(handler: logging.Handler, fmt: str, flags: LevelFlags) -> logging.Handler:
    """Attach ``handler`` to the root logger with the one-line formatter and the level gate.

    Every handler goes through here (a file handler added later too): that is
    what makes "one record, one line" hold for all of them.
    """
    handler.setFormatter(OneLineFormatter(fmt))
    handler.addFilter(_LevelGate(flags))
    logging.getLogger().addHandler(handler)
    return handler


def set_levels(flags: LevelFlags) -> None:
    """Let the LOG_* ``flags`` decide on every installed handler (SIGHUP)."""
    logging.getLogger().setLevel(lowest_level(flags))
    for handler in logging.getLogger().handlers:
        for gate in handler.filters:
            if isinstance(gate, _LevelGate):
                gate.flags = flags


def reopen() -> None:
    """Reopen what can be reopened (SIGHUP): syslog connects again, a log file is opened
    again by its name (after logrotate moved it). stdout and stderr stay as they are."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LogFileHandler):
            handler.reopen()
        elif isinstance(handler, logging.handlers.SysLogHandler) and isinstance(handler.address, str):
            fresh = _syslog_handler("", handler.address)
            if fresh is None:
                continue            # /dev/log is gone for now: the old handler reconnects when it can
            fresh.ident = handler.ident
            fresh.setFormatter(handler.formatter)
            for gate in handler.filters:
                fresh.addFilter(gate)
            root.addHandler(fresh)
            root.removeHandler(handler)
            handler.close()


class LogFileHandler(logging.StreamHandler):
    """A log file that ``reopen()`` opens again by its name; ``opener`` returns a descriptor
    for appending (provisioning.runtime.detach opens it without following links)."""

    def __init__(self, fd: int, path: str, opener: Callable[[], int]) -> None:
        super().__init__(_text(fd))
        self.path = path
        self.opener = opener

    def reopen(self) -> None:
        """Open the file again; when it cannot be, keep writing where it wrote (and say why)."""
        try:
            stream = _text(self.opener())
        except OSError as err:
            logging.getLogger(__name__).error("cannot reopen the log file %s: %s; still writing to the "
                                              "file opened before", self.path, err)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        old.close()

    def close(self) -> None:
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
        super().close()


def _text(fd: int):
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")


def _syslog_handler(ident: str, socket_path: str) -> logging.Handler | None:
    if not os.path.exists(socket_path):
        return None
    try:
        # local0, as the original daemon: existing rsyslog rules route on it.
        handler = logging.handlers.SysLogHandler(
            address=socket_path, facility=logging.handlers.SysLogHandler.LOG_LOCAL0)
    except OSError:
        return None
    # The ident is configuration ([Service] SYSLOG), escaped all the same.
    handler.ident = f"{escape(ident)}[{os.getpid()}]: "
    return handler
