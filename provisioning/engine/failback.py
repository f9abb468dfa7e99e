"""Back to the first provider of SERVER as soon as it answers again (fail-back).

A daemon reconnects to the first URI of SERVER that answers. Once on a later
one (the first was away), it would stay there for as long as that one
answers; the other daemon of an HA pair, restarted meanwhile, is on the first.
Their claims then meet on no provider, and an LDAP assertion is atomic on
one provider only (provisioning.engine.confirm). So while the daemon is on a later
URI, a thread of its own looks every FAILBACK_INTERVAL seconds whether an
earlier one answers, and has caught up with the position the daemon has
acknowledged (its contextCSN, as the reconnect checks it: else the move
would cost a full refresh). The main loop asks ``due()`` each round and
moves back, the way it reconnects after trouble.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Callable

from provisioning.backend.cookie import ahead_of
from provisioning.backend.ldap import BindRefused, Directory, DirectoryError, DirectoryUnavailable, LdapSettings

log = logging.getLogger(__name__)

# Seconds a look at one provider may take (connect, bind, one read).
PROBE_TIMEOUT = 5.0


class Failback:
    """Watches the providers before the current one; ``due()`` names one to move back to."""

    def __init__(self, settings: LdapSettings, base: str, interval: float,
                 cookie: Callable[[], str | None]) -> None:
        self.settings = settings
        self.base = base
        self.interval = interval
        self.cookie = cookie                    # the acknowledged position (read from this thread)
        self._current: str | None = None
        self._due: str | None = None
        self._behind_said: str | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(self, current: str | None) -> None:
        """The daemon is connected to ``current`` now (None: to none)."""
        self._current, self._due = current, None
        if self._earlier(current) and self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="failback", daemon=True)
            self._thread.start()

    def due(self) -> str | None:
        """An earlier provider that answers and has caught up, once; None otherwise."""
        due, self._due = self._due, None
        return due if due is not None and self._earlier(self._current) else None

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _earlier(self, current: str | None) -> list[str]:
        uris = self.settings.uris
        return uris[:uris.index(current)] if current in uris else []

    def _run(self) -> None:
        while not self._wake.wait(self.interval) and not self._closed:
            current = self._current
            for uri in self._earlier(current):
                if self._due is None and self._answers(uri) and current == self._current:
                    self._due = uri
                    break

    def _answers(self, uri: str) -> bool:
        """Whether ``uri`` answers and has every change the acknowledged position covers."""
        directory = Directory(replace(self.settings, uris=[uri], timeout=min(self.settings.timeout, PROBE_TIMEOUT)))
        try:
            directory.open()
            context = directory.context_csns(self.base)
        except (DirectoryUnavailable, DirectoryError, BindRefused) as err:
            log.debug("fail-back: %s does not answer yet (%s)", uri, err)
            return False
        finally:
            directory.close()
        behind = ahead_of(self.cookie(), context)
        if behind:
            if self._behind_said != uri:
                self._behind_said = uri
                log.info("%s answers again, but %s: moving back to it once it has caught up", uri, behind)
            return False
        self._behind_said = None
        return True
