"""sd_notify: tell systemd how the daemon is doing (Type=notify), without any dependency.

The protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` fields in one
datagram to the unix socket named by $NOTIFY_SOCKET - a path, or an abstract
socket written with a leading ``@``. ``READY=1`` ends the start, ``STATUS=``
is what ``systemctl status`` shows, ``WATCHDOG=1`` feeds the watchdog,
``STOPPING=1`` starts the stop.

Without $NOTIFY_SOCKET (not started by systemd, or Type= other than notify)
every call does nothing. Sending never raises and never blocks: a datagram
socket that cannot take a message drops it (logged once), provisioning goes
on.

The variables are taken out of the environment once read, so that the
commands the daemon runs (rsnapshot, setquota, ...) do not inherit them and
cannot speak for the service.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import MutableMapping

from provisioning.base.log import escape

log = logging.getLogger(__name__)

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# STATUS= is one line for people; a longer text is cut (the log has it whole).
STATUS_MAX = 300


class Notifier:
    """Sends sd_notify messages to one socket; a no-op without an address."""

    def __init__(self, address: str | None) -> None:
        self.address = _address(address) if address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()       # the watchdog thread sends too
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, *,
                         unset: bool = True) -> "Notifier":
        """The notifier $NOTIFY_SOCKET names; with ``unset`` the variable leaves the environment."""
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or None
        if unset:
            environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram with ``fields`` (``KEY=VALUE`` each); False when it was not sent."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.setblocking(False)
                self._sock.sendto(data, self.address)
            except OSError as err:
                if not self._failed:
                    self._failed = True
                    log.warning("cannot tell systemd through NOTIFY_SOCKET %s: %s", escape(str(self.address)), err)
                return False
        if self._failed:
            self._failed = False
            log.info("NOTIFY_SOCKET takes messages again")
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_field(status))

    def status(self, status: str) -> bool:
        return self.send(status_field(status))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", status_field(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def status_field(text: str) -> str:
    """``STATUS=text`` on one line (values from the directory are escaped as in the log)."""
    text = escape(text)
    if len(text) > STATUS_MAX:
        text = text[:STATUS_MAX - 3] + "..."
    return f"STATUS={text}"


def watchdog_seconds(environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> float | None:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC), when it is meant for this process.

    None when there is no watchdog, or WATCHDOG_PID names another process
    (the variable was inherited). With ``unset`` both variables leave the
    environment.
    """
    environ = os.environ if environ is None else environ
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if unset:
        environ.pop("WATCHDOG_USEC", None)
        environ.pop("WATCHDOG_PID", None)
    try:
        seconds = int(usec) / 1e6 if usec else 0.0
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        log.warning("WATCHDOG_USEC %r or WATCHDOG_PID %r is not a number: no watchdog", usec, pid)
        return None
    return seconds if seconds > 0 else None


def _address(text: str) -> str:
    """A socket address for sendto(): ``@name`` is the abstract socket ``\\0name``."""
    if text.startswith("@"):
        return "\0" + text[1:]
    return text
