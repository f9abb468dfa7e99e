"""One job per entry on a host: a lock file per entry, held for the whole request, and what it last did.

The directory keeps two daemons from taking one request only as far as its
claims hold: in a partition between two mirror-mode providers both claims
win. The host does not depend on that. Every job for an entry (a selfcare
request from claim to outcome, an LDAP-mode hook, a removal) runs under an
exclusive flock on the entry's own file, in a folder that the daemons of the
host share ([Service] ENTRY_LOCK_DIR). The kernel drops the lock when its
process dies, kill -9 included: nothing is ever left locked.

The file also records the last request done under it (the entryCSN of the
version judged, that of its claim, the return value). A job that gets the
lock for a version already done on this host, by the other daemon of a split
pair or by a daemon killed before it could write the outcome, writes that
outcome instead of doing the work again.

A folder or file that cannot be created (read-only, full) does not stop the
work: the job runs without the host lock, and the log says so once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from provisioning.base.files import check_private, open_private
from provisioning.transport.base import Interrupted

log = logging.getLogger(__name__)

T = TypeVar("T")
# How often a job waiting for another process's lock looks again (and for a stop).
POLL = 0.02
# A wait this long is logged (a request of the other daemon may take minutes).
SAY_WAITING_AFTER = 5.0
# What a record may hold at most (it is one short JSON line).
RECORD_MAX = 4096
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CANNOT_CREATE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES)


class Busy(Exception):
    """Another process held the entry's lock for longer than the caller would wait."""


@dataclass(frozen=True)
class Done:
    """A request done on this host: the versions it was for and its return value."""

    judged: str | None          # entryCSN of the version judged (the request as written)
    claim: str | None           # entryCSN of the claim that preceded the work
    verb: str
    code: int
    by: str = ""                # the claim token of the daemon that did it

    def covers(self, csn: str | None) -> bool:
        """Whether the version ``csn`` is this request (as written, or as claimed)."""
        return bool(csn) and csn in (self.judged, self.claim)


class Held:
    """An entry's lock, held by this job: its record of the last request done."""

    def __init__(self, fd: int | None, label: str) -> None:
        self.fd = fd
        self.label = label

    def done(self) -> Done | None:
        """The last request done under this lock (None: none, or the file is not there)."""
        if self.fd is None:
            return None
        try:
            raw = os.pread(self.fd, RECORD_MAX, 0)
            return Done(**json.loads(raw)) if raw.strip() else None
        except (OSError, ValueError, TypeError) as err:
            log.warning("%s: the host's record of the last request done is unreadable (%s); ignored",
                        self.label, err)
            return None

    def record(self, done: Done) -> None:
        """Keep ``done`` as the last request done (not synced: a lost record costs a repeated step)."""
        if self.fd is None:
            return
        data = json.dumps(dataclasses.asdict(done)).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError as err:
            log.warning("%s: cannot record on this host that the request was done: %s", self.label, err.strerror)


class EntryLocks:
    """The folder of the lock files; ``run`` holds an entry's lock around a job.

    Without a folder (``None``), or in a dry run, which changes nothing on
    the host, jobs run without a lock.
    """

    def __init__(self, folder: str | Path | None, *, stopping: threading.Event | None = None,
                 dry_run: bool = False) -> None:
        self.folder = Path(folder or ".")
        self.stopping = stopping or threading.Event()
        self.enabled = folder is not None and not dry_run
        self._said: str | None = None

    def prepare(self) -> None:
        """Create the folder (root's alone) if it is missing. UnsafeFile when others control it."""
        if not self.enabled:
            return
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            if err.errno not in _CANNOT_CREATE:
                raise
            self._cannot("folder", f"cannot create {self.folder}: {err.strerror}")
            return
        check_private(self.folder / "any")       # the folder: root's (or ours), nobody else's to write

    def run(self, key: str, label: str, work: Callable[[Held], T]) -> T:
        """``work`` with the lock of entry ``key`` held (waiting for another process that holds it)."""
        with self.hold(key, label) as held:
            return work(held)

    @contextlib.contextmanager
    def hold(self, key: str, label: str, *, wait: float | None = None) -> Iterator[Held]:
        """The lock of entry ``key`` (``label``: its DN, for the log), held until the block ends.

        Waits while another process of the host holds it; Interrupted when the
        daemon is asked to stop meanwhile (nothing was done yet); Busy when it
        is still held after ``wait`` seconds (None: no limit).
        """
        fd = self._open(key) if self.enabled else None
        try:
            if fd is not None:
                self._lock(fd, label, wait)
            yield Held(fd, label)
        finally:
            if fd is not None:
                os.close(fd)         # releases the flock

    def path(self, key: str) -> Path:
        """The lock file of ``key``: an entryUUID is a safe name; anything else is hashed."""
        name = key.lower() if _UUID.match(key.lower()) else hashlib.sha256(key.encode()).hexdigest()
        return self.folder / name

    def _open(self, key: str) -> int | None:
        try:
            return open_private(self.path(key), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            # A planted link or a foreign file is refused like any state file (UnsafeFile);
            # the job then runs without the host lock rather than through that file.
            self._cannot("open", f"cannot open {self.path(key)}: {err}")
            return None

    def _lock(self, fd: int, label: str, wait: float | None = None) -> None:
        started = time.monotonic()
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if wait is not None and waited >= wait:
                raise Busy(f"{label}: another process of this host has held the entry's lock for {waited:.0f} s")
            if waited >= SAY_WAITING_AFTER and not said:
                said = True
                log.info("%s: another process of this host has worked on this entry for %.0f s; waiting for it",
                         label, waited)
            if self.stopping.wait(POLL):
                raise Interrupted(f"{label}: stopped while waiting for the entry's lock")
        waited = time.monotonic() - started
        if waited > POLL:
            log.debug("%s: waited %.2f s for the entry's lock on this host", label, waited)

    def _cannot(self, kind: str, why: str) -> None:
        """Say once per kind of trouble (until another kind comes) that jobs run without the host lock."""
        if kind == self._said:
            return
        self._said = kind
        log.warning("ENTRY_LOCK_DIR: %s; jobs run without the lock that keeps two daemons of this host off "
                    "one entry at once (the directory's claims still do)", why)
