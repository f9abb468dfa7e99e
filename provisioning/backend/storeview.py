"""The store's entries, read only, for a plugin's background work (ServiceContext.known_entries).

A connection of its own, opened read-only on first use: it never writes,
never takes the store's place in the daemon, and sees what the daemon
flushed (within about a second of its work). A store that is missing or
cannot be read yet knows no entry.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from provisioning.backend.store import _known, _uri
from provisioning.base.entry import Entry


class KnownEntries:
    """entryUUID -> the entry as the daemon last saw it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def get(self, uuid: str) -> Entry | None:
        with self._lock:
            db = self._connection()
            if db is None:
                return None
            try:
                rows = db.execute("SELECT uuid, dn, csn, attrs, failed, answered FROM entries WHERE uuid=?",
                                  (uuid,)).fetchall()
            except sqlite3.Error:
                return None
        return _known(rows[0]).entry() if rows else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.exists():
            try:
                self._db = sqlite3.connect(_uri(self.path, "mode=ro"), uri=True, check_same_thread=False)
            except sqlite3.Error:
                return None
        return self._db
