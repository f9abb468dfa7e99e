"""The daemon's local store: its position in the change stream and what it has seen.

One SQLite file (WAL) next to COOKIE_FILE ([Database] STORE_FILE) holds

- the sync cookie the daemon acknowledged last (COOKIE_FILE carries a copy,
  as in the original daemon, for operators and for tools that read it);
- every entry of the subtree the daemon has seen, by entryUUID: its DN,
  entryCSN and attributes, so that a deletion the server names only by
  entryUUID is acted on with the last known entry, and an entry that comes
  again after a restart is known as "seen before, unchanged" or "changed";
  in LDAP mode also which hook failed on it, to retry it;
- writes the directory did not take yet (an outcome, a refusal), written as
  soon as it takes writes again;
- what it mirrors (SERVICE_SUBTREE, SEARCH_FILTER, the directory's
  identity: see provisioning.engine.mirror), so that removals are judged only
  against the subtree, filter and directory its entries came from; the
  records of an earlier mirror are kept as ``retired`` when a fresh one starts;
- removals the deletion brake holds for an operator (provisioning.engine.brake), and
  the operator's decisions on them (``approvals``, written by
  ``provisioning-daemon deletions``, the only table another process writes);
- how often, and when last, another daemon's claim made through another
  provider was seen (``rivals``, for ``status``: an HA pair split across
  the providers);
- full refreshes and entries an operator asked to be judged again
  (``resyncs``, written by ``provisioning-daemon resync``, like approvals).

Changes wait in memory (the overlay) until ``flush()`` writes them in one
transaction. The daemon flushes after every handled entry and every cookie it
acknowledges, so the store never lags behind work that was done and the
cookie never runs ahead of it: a crash can only lose a change that was not
flushed, and the server delivers that one again. When the folder is full or
read-only, ``flush()`` keeps the overlay and tries again at the next flush
(cookie.Position says so, once): the daemon goes on with its position in
memory, and the position on disk never passes work that is not done. So it
does when the folder is full or read-only at start: ``open()`` then reads the
file as it is, writing nothing next to it (see _open_read_only).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioning.backend.dn import normal_dn
from provisioning.base.entry import Entry
from provisioning.base.files import UnsafeFile, check_private

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (uuid TEXT PRIMARY KEY, dn TEXT NOT NULL, csn TEXT,
                                    attrs TEXT NOT NULL, failed TEXT, answered TEXT);
CREATE TABLE IF NOT EXISTS pending (dn TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (uuid TEXT PRIMARY KEY, dn TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (uuid TEXT PRIMARY KEY, decision TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS retired (uuid TEXT NOT NULL, dn TEXT NOT NULL, attrs TEXT NOT NULL,
                                    mirror TEXT, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resyncs (what TEXT PRIMARY KEY, at REAL NOT NULL);
"""
# What ``resyncs`` holds for a full refresh (its other rows are DNs).
EVERYTHING = "*"
# Decisions an operator writes into ``approvals`` (provisioning-daemon deletions).
APPROVE, KEEP = "approve", "keep"
_FORGOTTEN = None   # overlay value of an entry removed from the store


class StoreError(Exception):
    """The store file cannot be used (not a store, damaged, unsafe)."""


@dataclass(frozen=True)
class Known:
    """What the store knows of one entry."""

    uuid: str
    dn: str
    csn: str | None
    values: dict[str, list[str]]
    failed: str | None = None     # LDAP mode: the verb whose hook failed on this version
    # Selfcare: the last request this daemon worked and the outcome it wrote
    # (judged and claim entryCSN, claim token, the changes). If a provider
    # dies before replicating the outcome, the request shows up again at
    # one of those CSNs: the outcome is written again, the work not redone.
    answered: dict | None = None

    def entry(self) -> Entry:
        return Entry.from_values(self.dn, self.values, self.uuid)


@dataclass(frozen=True)
class Held:
    """A removal the deletion brake holds until an operator decides (see provisioning.engine.brake)."""

    uuid: str
    dn: str
    since: float


@dataclass
class PendingWrite:
    """A modification the directory did not take yet; written when it does."""

    dn: str
    changes: dict[str, list[str] | None]
    expect: str
    what: str                               # for the log: "the outcome of add", ...
    add: dict[str, list[str]] = field(default_factory=dict)
    uuid: str | None = None
    done: str = ""                          # what to log once it is written ("add done in ...")
    failed: bool = False                    # the outcome reports a failure (logged as an error)
    since: float = field(default_factory=time.time)


class Store:
    """STORE_FILE, with the changes not yet flushed kept in memory."""

    def __init__(self, path: str | Path, *, dry_run: bool = False) -> None:
        self.path = Path(path)
        self.dry_run = dry_run
        self._db: sqlite3.Connection | None = None
        self._entries: dict[str, Known | None] = {}
        self._pending: dict[str, PendingWrite | None] = {}
        self._cookie: str | None = None
        self._own: list[str] | None = None
        self._held: dict[str, Held | None] = {}
        self._decided: set[str] = set()            # approvals acted on, removed at the next flush
        self._resynced: dict[str, float] = {}      # resyncs acted on (what -> asked at), removed at the next flush
        self._mirror: dict | None = None
        self._gateway: dict | None = None          # the gateway's state for status (see note_gateway)
        self._rivals: dict | None = None           # another daemon's claims through another provider, for status
        # A fresh mirror was started (start_mirror): what the file holds of the
        # old one no longer counts, and is moved aside at the next flush.
        self._fresh = False
        self._data_version: int | None = None
        self.error: str | None = None              # why the file cannot be written now, if it cannot

    # ------------------------------------------------------------- life cycle

    def open(self) -> None:
        """Open (or create) the file. StoreError if it is not a usable store.

        A folder that is read-only or full is not an error here: the store is
        then read as it is on disk (see _open_read_only), ``error`` says why
        it cannot be written, and what changes lives in memory until a flush
        can write it.
        """
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                check_private(f"{self.path}{suffix}")
            except UnsafeFile as err:
                raise StoreError(str(err)) from err
        if self.dry_run:
            self._db = self._read_only_or_refuse()
            return
        try:
            self._db = self._open_read_write()
        except sqlite3.OperationalError as err:
            self.error = f"cannot open {self.path} for writing: {err}"
            self._db = self._read_only_or_refuse()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: not a usable store ({err}); move it away and the "
                             f"daemon rebuilds it from the directory") from err

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open_read_write(self) -> sqlite3.Connection:
        try:
            # Created by us, for root alone: it holds every entry of the subtree.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            pass
        except OSError as err:
            raise sqlite3.OperationalError(f"cannot create {self.path}: {err.strerror}") from err
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed (it is in the
            # OS's cache); a power loss may undo the last ones, together with
            # the cookie that covers them, so the two never disagree.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._check_version(db)
            # Written at every open, even when it is there: SQLite opens a file
            # of a read-only folder without a word, and the schema needs no
            # write when the tables exist. This write shows whether the file
            # takes writes now (read-only, or full), before the daemon relies on it.
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _read_only_or_refuse(self) -> sqlite3.Connection | None:
        try:
            return self._open_read_only()
        except (sqlite3.DatabaseError, OSError) as err:
            raise StoreError(f"{self.path}: cannot be read ({err})") from err

    def _open_read_only(self) -> sqlite3.Connection | None:
        """The store as it is on disk, read without writing next to it; None for a new store.

        Reading a WAL database the usual way writes its -shm file, which a
        full or read-only folder refuses. Without a write-ahead log (or an
        empty one) the file is whole and is read as immutable: nothing is
        written. With one, a dry-run (a daemon may be writing the store)
        reads through the log as usual; the daemon itself, which holds the
        lock (nobody writes the store), reads a private copy of file and log,
        so the log's newest transactions are not lost (immutable alone would
        ignore them).
        """
        if not _has_data(self.path):
            return None         # created, but nothing written into it yet (a full folder at the first start)
        if not _has_data(f"{self.path}-wal"):
            return self._readable(_connect(_uri(self.path, "mode=ro&immutable=1")))
        if self.dry_run:
            try:
                return self._readable(_connect(_uri(self.path, "mode=ro")))
            except sqlite3.OperationalError as err:
                log.debug("%s cannot be read through its -wal (%s): reading a copy", self.path, err)
        return self._readable(self._private_copy())

    def _private_copy(self) -> sqlite3.Connection:
        """The store and its -wal copied to a private temporary folder, the log folded in, opened immutable.

        The copy is removed at once: the connection keeps the file open, and
        nothing is left behind, even if the daemon is killed.
        """
        folder = tempfile.mkdtemp(prefix="provisioning-store-")
        try:
            copy = os.path.join(folder, "store.sqlite")
            shutil.copyfile(self.path, copy)
            shutil.copyfile(f"{self.path}-wal", f"{copy}-wal")
            db = _connect(copy)
            try:
                mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]   # folds the log into the copy
            finally:
                db.close()
            if mode != "delete":
                raise sqlite3.OperationalError(f"the copy's write-ahead log could not be folded in ({mode})")
            return _connect(_uri(copy, "mode=ro&immutable=1"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _readable(self, db: sqlite3.Connection) -> sqlite3.Connection | None:
        """``db`` if it is a store of this version; None if it has no tables yet (a new store)."""
        try:
            if db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 0:
                db.close()
                return None
            # Not _check_version: a missing version is written at the next open for writing.
            row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is not None and row[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"store version {row[0]}, this daemon knows {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _check_version(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is not None and row[0] != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"store version {row[0]}, this daemon knows {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ reads

    @property
    def cookie(self) -> str | None:
        """The cookie acknowledged last (None when the store has none)."""
        if self._cookie is not None or self._fresh:
            return self._cookie
        return self._meta("cookie")

    @property
    def mirror(self) -> dict | None:
        """What the store mirrors (provisioning.engine.mirror.Mirror as a dict); None for a store that never said."""
        if self._mirror is not None:
            return dict(self._mirror)
        value = self._meta("mirror")
        return json.loads(value) if value else None

    @property
    def adopts(self) -> bool:
        """Whether a cookie found in COOKIE_FILE alone may count as handled (see cookie.Position.start).

        Not after a fresh mirror, until its first cookie: the file then holds
        the old mirror's position, which says nothing about the new one.
        """
        if self._fresh:
            return False
        return self._cookie is not None or self._meta("adopt") != "no"

    @property
    def own_writes(self) -> list[str]:
        """The entryCSNs of the newest writes of the daemon, one per server id (see keep_own_writes)."""
        if self._own is not None:
            return list(self._own)
        value = None if self._fresh else self._meta("own_writes")
        return json.loads(value) if value else []

    def keep_own_writes(self, csns: list[str]) -> None:
        """Keep these (written with the next flush): a restart after a failover compares them too."""
        self._own = list(csns)

    def lookup(self, uuid: str | None) -> Known | None:
        if not uuid:
            return None
        if uuid in self._entries or self._fresh:
            return self._entries.get(uuid)
        rows = self._query("SELECT uuid, dn, csn, attrs, failed, answered FROM entries WHERE uuid=?", (uuid,))
        return _known(rows[0]) if rows else None

    def uuids(self) -> set[str]:
        """Every entryUUID the store knows."""
        known = set() if self._fresh else {row[0] for row in self._query("SELECT uuid FROM entries")}
        for uuid, value in self._entries.items():
            if value is _FORGOTTEN:
                known.discard(uuid)
            else:
                known.add(uuid)
        return known

    def failed(self) -> list[Known]:
        """Entries whose LDAP-mode hook failed, to be tried again."""
        rows = [] if self._fresh else \
            self._query("SELECT uuid, dn, csn, attrs, failed, answered FROM entries WHERE failed IS NOT NULL")
        found = {row[0]: _known(row) for row in rows}
        for uuid, value in self._entries.items():
            if value is None or value.failed is None:
                found.pop(uuid, None)
            else:
                found[uuid] = value
        return list(found.values())

    def pending(self) -> list[PendingWrite]:
        """Writes the directory did not take yet, oldest first."""
        found = {row[0]: _pending(row[1]) for row in self._query("SELECT dn, body FROM pending")}
        for dn, value in self._pending.items():
            if value is None:
                found.pop(dn, None)
            else:
                found[dn] = value
        return sorted(found.values(), key=lambda w: w.since)

    def count(self) -> int:
        return len(self.uuids())

    def known(self) -> list[Known]:
        """Every entry the store knows (one pass over the file: for rare, whole-store questions)."""
        rows = [] if self._fresh else self._query("SELECT uuid, dn, csn, attrs, failed, answered FROM entries")
        found = {row[0]: _known(row) for row in rows}
        for uuid, value in self._entries.items():
            if value is _FORGOTTEN:
                found.pop(uuid, None)
            else:
                found[uuid] = value
        return list(found.values())

    def held(self) -> list[Held]:
        """The removals the deletion brake holds, oldest first."""
        rows = [] if self._fresh else self._query("SELECT uuid, dn, since FROM held", table=True)
        found = {row[0]: Held(*row) for row in rows}
        for uuid, value in self._held.items():
            if value is None:
                found.pop(uuid, None)
            else:
                found[uuid] = value
        return sorted(found.values(), key=lambda h: (h.since, h.dn))

    def decisions(self) -> dict[str, str]:
        """An operator's decisions on held removals not acted on yet: entryUUID -> APPROVE or KEEP."""
        if self._fresh:
            return {}
        rows = self._query("SELECT uuid, decision FROM approvals", table=True)
        return {uuid: decision for uuid, decision in rows if uuid not in self._decided}

    def resyncs(self) -> dict[str, float]:
        """What an operator asked to be judged again (provisioning-daemon resync): EVERYTHING or DNs -> when."""
        rows = self._query("SELECT what, at FROM resyncs", table=True)
        return {what: at for what, at in rows if self._resynced.get(what, -1.0) < at}

    def resynced(self, what: str, at: float) -> None:
        """The resync of ``what`` asked at ``at`` is done (a later request for it stays)."""
        self._resynced[what] = max(at, self._resynced.get(what, at))

    def by_dn(self, dn: str) -> Known | None:
        """The entry the store knows under ``dn`` (a pass over the store: for rare questions)."""
        wanted = normal_dn(dn)
        return next((known for known in self.known() if normal_dn(known.dn) == wanted), None)

    def changed_elsewhere(self) -> bool:
        """Whether another process committed to the file since the last call (cheap: a counter SQLite keeps)."""
        if self._db is None:
            return False
        try:
            # fetchall: a statement left unfinished would hold a read transaction open.
            version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
        except sqlite3.Error:
            return False
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    def _meta(self, key: str) -> str | None:
        row = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return row[0][0] if row else None

    def _query(self, sql: str, args: tuple = (), *, table: bool = False) -> list[tuple]:
        """Rows of ``sql``; with ``table``, none when its table is missing (a store of an earlier
        version opened read-only, where CREATE TABLE could not run)."""
        if self._db is None:
            return []
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as err:
            if table and "no such table" in str(err):
                return []
            raise

    # ----------------------------------------------------------------- writes

    def set_cookie(self, cookie: str) -> None:
        self._cookie = cookie

    def remember(self, entry: Entry, *, failed: str | None = None, answered: dict | None = None) -> None:
        """Record ``entry`` as the daemon has now handled it."""
        if not entry.uuid:
            return
        self._entries[entry.uuid] = Known(entry.uuid, entry.dn, entry.csn, entry.as_values(), failed, answered)

    def forget(self, uuid: str) -> None:
        self._entries[uuid] = _FORGOTTEN
        self.release(uuid)

    def hold(self, held: Held) -> None:
        """Keep this removal for an operator (the entry stays known)."""
        self._held[held.uuid] = held

    def release(self, uuid: str) -> None:
        """The removal is no longer held (done, kept by decision, or the entry is back)."""
        self._held[uuid] = None
        self._decided.add(uuid)

    def start_mirror(self, mirror: dict) -> None:
        """Start a fresh mirror: from now on the store knows no entry, no cookie, no held removal.

        What the file holds of the earlier mirror is moved to ``retired`` at
        the next flush (the data of those accounts is left on the host: no
        removal is judged against a subtree, filter or directory the
        entries did not come from). Pending writes are kept: each asserts
        what it expects of its entry.
        """
        self._fresh = True
        self._mirror = dict(mirror)
        self._entries.clear()
        self._held.clear()
        self._decided.clear()
        self._cookie = None
        self._own = None

    def note_gateway(self, record: dict) -> None:
        """Keep what the daemon knows of its gateway (written with the next flush) for ``status``:
        {"where", "up", "since", "answered", "why", "written"}, times as Unix seconds."""
        self._gateway = dict(record)

    @property
    def gateway(self) -> dict | None:
        """The gateway's state as the daemon last wrote it (None: no gateway, or never written)."""
        if self._gateway is not None:
            return dict(self._gateway)
        value = self._meta("gateway")
        return json.loads(value) if value else None

    def note_rival(self, text: str, at: float) -> None:
        """Another daemon claimed a request through another provider than ours (``status`` shows it)."""
        seen = self.rivals() or {"count": 0, "first": at}
        self._rivals = {**seen, "count": seen["count"] + 1, "last": at, "text": text}

    def rivals(self) -> dict | None:
        """How often, first and last when (epoch seconds), and the last such claim; None if never."""
        if self._rivals is not None:
            return dict(self._rivals)
        value = self._meta("rivals")
        return json.loads(value) if value else None

    def set_mirror(self, mirror: dict) -> None:
        """Record what the store mirrors (a first start, or a store of an earlier version)."""
        self._mirror = dict(mirror)

    def add_pending(self, write: PendingWrite) -> None:
        self._pending[write.dn] = write

    def drop_pending(self, dn: str) -> None:
        self._pending[dn] = None

    @property
    def dirty(self) -> bool:
        return bool(self._entries or self._pending or self._cookie is not None or self._own is not None
                    or self._held or self._decided or self._resynced or self._mirror is not None or self._fresh
                    or self._gateway is not None or self._rivals is not None)

    def flush(self) -> bool:
        """Write what waits in memory in one transaction; False if it could not be written.

        While the file cannot be written (``error``), every flush tries again,
        with or without changes waiting: True then means the file takes writes again.
        """
        if self.dry_run or not (self.dirty or self.error):
            return True
        try:
            if self._db is None or self.error is not None:
                self._reopen()
            self._commit()
        except sqlite3.Error as err:
            self.error = f"cannot write {self.path}: {err}"
            return False
        self.error = None
        return True

    def _reopen(self) -> None:
        """Open the file for writing; the connection in use is kept for reads until that works."""
        db = self._open_read_write()
        if self._db is not None:
            self._db.close()
        self._db = db

    def _commit(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._fresh:
                self._retire(db)
            for uuid, known in self._entries.items():
                if known is _FORGOTTEN:
                    db.execute("DELETE FROM entries WHERE uuid=?", (uuid,))
                else:
                    db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                               (uuid, known.dn, known.csn, json.dumps(known.values), known.failed,
                                json.dumps(known.answered) if known.answered else None))
            for dn, write in self._pending.items():
                if write is None:
                    db.execute("DELETE FROM pending WHERE dn=?", (dn,))
                else:
                    db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?)", (dn, json.dumps(asdict(write))))
            if self._cookie is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('cookie', ?)", (self._cookie,))
            if self._own is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('own_writes', ?)", (json.dumps(self._own),))
            self._commit_brake(db)
            if self._mirror is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('mirror', ?)", (json.dumps(self._mirror),))
            if self._cookie is not None:
                db.execute("DELETE FROM meta WHERE key='adopt'")
            if self._gateway is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('gateway', ?)", (json.dumps(self._gateway),))
            if self._rivals is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('rivals', ?)", (json.dumps(self._rivals),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:        # SQLite rolls back by itself when a COMMIT fails (full disk)
                db.execute("ROLLBACK")
            raise
        self._entries.clear()
        self._pending.clear()
        self._cookie = None
        self._own = None
        self._held.clear()
        self._decided.clear()
        self._resynced.clear()
        self._mirror = None
        self._gateway = None
        self._rivals = None
        self._fresh = False

    def _retire(self, db: sqlite3.Connection) -> None:
        """Move the earlier mirror's records aside (see start_mirror)."""
        old = db.execute("SELECT value FROM meta WHERE key='mirror'").fetchone()
        db.execute("INSERT INTO retired SELECT uuid, dn, attrs, ?, ? FROM entries",
                   (old[0] if old else None, time.time()))
        for table in ("entries", "held", "approvals"):
            db.execute(f"DELETE FROM {table}")       # noqa: S608 - a fixed name, not data
        db.execute("DELETE FROM meta WHERE key IN ('cookie', 'own_writes')")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('adopt', 'no')")

    def _commit_brake(self, db: sqlite3.Connection) -> None:
        for uuid, held in self._held.items():
            if held is None:
                db.execute("DELETE FROM held WHERE uuid=?", (uuid,))
            else:
                db.execute("INSERT OR REPLACE INTO held VALUES (?, ?, ?)", (held.uuid, held.dn, held.since))
        for uuid in self._decided:
            db.execute("DELETE FROM approvals WHERE uuid=?", (uuid,))
        for what, at in self._resynced.items():
            db.execute("DELETE FROM resyncs WHERE what=? AND at<=?", (what, at))


def _connect(target: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(target, uri=str(target).startswith("file:"), isolation_level=None,
                           check_same_thread=False)


def _uri(path: str | Path, query: str) -> str:
    """A file: URI for SQLite (a ``?`` or ``#`` in the path is escaped, not taken as the query)."""
    return f"{Path(path).absolute().as_uri()}?{query}"


def _has_data(path: str | Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _known(row: tuple) -> Known:
    uuid, dn, csn, attrs, failed, answered = row
    return Known(uuid, dn, csn, json.loads(attrs), failed, json.loads(answered) if answered else None)


def _pending(body: str) -> PendingWrite:
    return PendingWrite(**json.loads(body))

