"""The other providers of SERVER, read one entry at a time within a deadline.

For the confirmation of a claim (provisioning.engine.confirm): what each provider
other than the one the daemon writes to shows of an entry now. A provider
that does not answer in time is left out for PEER_RETRY seconds, so that a
frozen one costs one request its wait, not every request. Each thread (each
worker) has its own connection to each provider, bound once, as
backend.ldap.Directory does for the main connection.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import NoReturn, Sequence

import ldap
import ldap.dn
from ldap.ldapobject import SimpleLDAPObject

from provisioning.backend.ldap import (
    BindRefused, DirectoryUnavailable, LdapSettings, connect, describe, unbind_quietly,
)
from provisioning.base.entry import Entry

log = logging.getLogger(__name__)

# Seconds a provider that did not answer in time is not asked again.
PEER_RETRY = 2.0
# The shortest time given to a connect or a read: less makes libldap give up at once.
MIN_WAIT = 0.05


class Peers:
    """Read-only connections to the providers of SERVER, per thread."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._conns: dict[tuple[int, str], SimpleLDAPObject] = {}
        self._away_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._suffix: str | None = None             # where contextCSN was found

    def others(self, current: str | None) -> list[str]:
        """The providers other than ``current`` that are not known to be away, in SERVER order."""
        now = time.monotonic()
        return [uri for uri in self.settings.uris
                if uri != current and self._away_until.get(uri, 0.0) <= now]

    def read(self, uri: str, dn: str, attrs: Sequence[str], deadline: float) -> Entry | None:
        """``dn`` as provider ``uri`` shows it now (None: it has no such entry).

        Raises DirectoryUnavailable when the provider does not answer by
        ``deadline`` (a time.monotonic() value); it is then left out for a while.
        """
        cached = (threading.get_ident(), uri) in self._conns
        try:
            return self._search(uri, dn, attrs, deadline)
        except ldap.SERVER_DOWN as err:
            if not cached:
                return self._unanswered(uri, err)
            # The connection of an earlier read, to a provider restarted since: once more, anew.
            self._drop(uri)
        try:
            return self._search(uri, dn, attrs, deadline)
        except ldap.SERVER_DOWN as err:
            return self._unanswered(uri, err)

    def _search(self, uri: str, dn: str, attrs: Sequence[str], deadline: float) -> Entry | None:
        try:
            conn = self._conn(uri, deadline)
            wait = max(MIN_WAIT, deadline - time.monotonic())
            found = conn.search_ext_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs), timeout=wait)
        except ldap.NO_SUCH_OBJECT:
            return None
        except ldap.SERVER_DOWN:
            raise
        except (ldap.LDAPError, DirectoryUnavailable, BindRefused) as err:
            self._unanswered(uri, err)
        return Entry.from_ldap(found[0][0], found[0][1]) if found else None

    def _unanswered(self, uri: str, err: Exception) -> NoReturn:
        """Whatever it is (gone, frozen, a refusal), this provider cannot say now: left out for a while."""
        why = describe(err) if isinstance(err, ldap.LDAPError) else str(err)
        self._drop(uri)
        self._away_until[uri] = time.monotonic() + PEER_RETRY
        log.debug("provider %s did not answer (%s); not asked for %g s", uri, why, PEER_RETRY)
        raise DirectoryUnavailable(f"{uri}: {why}") from err

    def context(self, uri: str, base: str, deadline: float) -> list[str]:
        """Provider ``uri``'s contextCSN values for the database holding ``base`` ([]: not readable).

        Found on the suffix entry, walking up from ``base`` the first time
        (as Directory.context_csns does); DirectoryUnavailable as ``read``.
        """
        places = [self._suffix] if self._suffix else _upwards(base)
        for dn in places:
            found = self.read(uri, dn, ["contextCSN"], deadline)
            if found is not None and found.values("contextCSN"):
                self._suffix = dn
                return found.values("contextCSN")
        return []

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, {}
        for conn in conns.values():
            unbind_quietly(conn)

    def _conn(self, uri: str, deadline: float) -> SimpleLDAPObject:
        key = (threading.get_ident(), uri)
        conn = self._conns.get(key)
        if conn is not None:
            return conn
        wait = max(MIN_WAIT, min(self.settings.timeout, deadline - time.monotonic()))
        conn, _ = connect(replace(self.settings, uris=[uri], timeout=wait))
        with self._lock:
            self._conns[key] = conn
        return conn

    def _drop(self, uri: str) -> None:
        """Forget this thread's connection to ``uri`` (its state after an error or a timeout is unknown)."""
        with self._lock:
            conn = self._conns.pop((threading.get_ident(), uri), None)
        unbind_quietly(conn)


def _upwards(base: str) -> list[str]:
    """``base`` and each entry above it, nearest first."""
    parts = ldap.dn.str2dn(base)
    return [ldap.dn.dn2str(parts[start:]) for start in range(len(parts))]
