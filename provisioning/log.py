"""Logging set-up: syslog under the service's ident, stdout with --debug.

Which levels are written is decided by the LOG_DEBUG, LOG_INFO, LOG_WARNING
and LOG_ERR flags of the configuration, as in the original daemon. Secrets
(the LDAP and mail passwords) are replaced by ``********`` in every record,
whoever wrote it.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass
from typing import Iterable

SYSLOG_SOCKET = "/dev/log"
REDACTED = "********"


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


class RedactingFormatter(logging.Formatter):
    """A formatter that blanks out secrets after formatting (tracebacks too)."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        # Longest first, so a secret that contains another is blanked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def setup(ident: str, flags: LevelFlags, *, to_stdout: bool,
          secrets: Iterable[str] = (), syslog_socket: str = SYSLOG_SOCKET) -> None:
    """Route every logger's records to syslog (and stdout) through the gate."""
    secrets = list(secrets)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    handlers: list[logging.Handler] = []
    syslog = _syslog_handler(ident, secrets, syslog_socket)
    if syslog is not None:
        handlers.append(syslog)
    if to_stdout or syslog is None:
        stream = logging.StreamHandler(sys.stdout if to_stdout else sys.stderr)
        stream.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s", secrets))
        handlers.append(stream)
    for handler in handlers:
        handler.addFilter(_LevelGate(flags))
        root.addHandler(handler)
    if syslog is None:
        logging.getLogger(__name__).warning(
            "syslog socket %s is not available: logging to %s instead",
            syslog_socket, "stdout" if to_stdout else "stderr")


def _syslog_handler(ident: str, secrets: list[str], socket_path: str) -> logging.Handler | None:
    if not os.path.exists(socket_path):
        return None
    try:
        # local0, as the original daemon: existing rsyslog rules route on it.
        handler = logging.handlers.SysLogHandler(
            address=socket_path, facility=logging.handlers.SysLogHandler.LOG_LOCAL0)
    except OSError:
        return None
    handler.ident = f"{ident}[{os.getpid()}]: "
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s", secrets))
    return handler
