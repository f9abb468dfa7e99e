"""The sync cookie: where the daemon is in the directory's change stream.

The cookie moves forward only past entries that were handled and whose outcome
was written. It lives in the local store (together with what the daemon saw,
in one transaction) and, as in the original daemon, in COOKIE_FILE. At start
the two are compared: when they agree the daemon resumes from the cookie;
when one is missing or they differ (a first start, an upgrade from the
original, a store or cookie file an operator removed, a crash between the two
writes) the daemon refreshes in full and takes every entry the cookie covered
as already handled (see ``Position``).

CSNs look like ``20261127120000.123456Z#000000#001#000000``: time, count,
server id (sid), modifier count. They compare as strings within one sid.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from provisioning.backend.store import Store
from provisioning.base.files import UnsafeFile, open_private, write_atomically

log = logging.getLogger(__name__)

# The CSN the original daemon used when the cookie names none.
DEFAULT_CSN = "20000101000000.000000Z#000000#000#000000"
CSN = re.compile(r"^\d{14}(\.\d{6})?Z#[0-9a-fA-F]{6}#[0-9a-fA-F]{3}#[0-9a-fA-F]{6}$")
_COOKIE_KEYS = {"rid", "sid", "csn", "delcsn"}


class CookieError(Exception):
    """COOKIE_FILE cannot be read or is not a cookie: a configuration error."""


def parse_cookie(text: str) -> dict[str, str]:
    """``rid=001,sid=002,csn=A;B`` as a dict; ValueError when it is not a cookie."""
    fields: dict[str, str] = {}
    for part in text.strip().split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _COOKIE_KEYS:
            raise ValueError(f"{part!r} is not one of {', '.join(sorted(_COOKIE_KEYS))}=...")
        fields[key] = value.strip()
    if "rid" not in fields:
        raise ValueError("no rid=")
    for csn in cookie_csns(text):
        if not CSN.match(csn):
            raise ValueError(f"{csn!r} is not a CSN")
    return fields


def cookie_csns(cookie: str | None) -> list[str]:
    """The change CSNs of a cookie (one per provider in a multi-provider cookie)."""
    csns: list[str] = []
    for part in (cookie or "").split(","):
        key, _, value = part.partition("=")
        if key.strip() == "csn" and value:
            csns.extend(v for v in value.split(";") if v)
    return csns


def cookie_csn(cookie: str | None) -> str:
    """The CSN that SEARCH_FILTER's %entryCSN% stands for, given a cookie.

    A multi-provider cookie carries several CSNs (``csn=A;B``); the oldest
    keeps every entry any provider changed since. ``delcsn=`` is not a change
    CSN and is ignored. Without a CSN: the original's default, 1 January 2000.
    """
    csns = cookie_csns(cookie)
    return min(csns) if csns else DEFAULT_CSN


def csn_sid(csn: str) -> str:
    parts = csn.split("#")
    return parts[2].lower() if len(parts) == 4 else ""


def by_sid(csns: list[str]) -> dict[str, str]:
    """The newest CSN of each server id."""
    newest: dict[str, str] = {}
    for csn in csns:
        sid = csn_sid(csn)
        if csn > newest.get(sid, ""):
            newest[sid] = csn
    return newest


def covered(csn: str | None, cookie: str | None) -> bool:
    """Whether a change with ``csn`` lies at or before ``cookie`` (same server id)."""
    if not csn:
        return False
    mark = by_sid(cookie_csns(cookie)).get(csn_sid(csn))
    return mark is not None and csn <= mark


def merge_cookies(older: str | None, newer: str) -> str:
    """The position after ``newer``: per server id the newest CSN of both, as ``rid=R,csn=A;B``.

    A provider in a multi-provider setup sends, with each change, a cookie
    naming only that change's CSN (one server id). Keeping only the latest
    cookie would forget the other servers' positions: the next session (on
    this provider or the other) would then resume from that one CSN and never
    send again an entry another server changed a moment earlier (seen: 17
    requests of a burst left unclaimed after a failover). So the position
    keeps every server id's newest CSN, as syncrepl consumers do.

    ``sid=`` is left out: in a cookie a consumer sends it names the
    consumer's own server id, and the provider then withholds the changes
    that server made (we are no server; sending back the provider's id
    would hide the changes it relays from its peer).
    """
    # Not parse_cookie: this runs for every event, and a server's cookie is not checked like a file.
    rid = next((part.strip()[4:] for part in newer.split(",") if part.strip().startswith("rid=")), "") or "001"
    csns = by_sid(cookie_csns(older) + cookie_csns(newer))
    listed = ";".join(csns[sid] for sid in sorted(csns))
    return f"rid={rid},csn={listed}" if listed else f"rid={rid}"


def ahead_of(cookie: str | None, context_csns: list[str]) -> str | None:
    """Why the provider cannot continue from ``cookie``, or None when it can.

    - A cookie CSN newer than every CSN the provider has (a cookie from
      another directory, a provider clock that ran ahead and was set back)
      would make a SEARCH_FILTER with %entryCSN% match nothing: the daemon
      would be deaf.
    - A provider that has less of some server's changes than the cookie
      covers (the provider we read from died before replicating its last
      changes to this one) would never send those entries again: requests
      and outcomes there would be left as they are.
    Either way the daemon refreshes in full, judging every entry afresh.
    """
    mine = cookie_csns(cookie)
    if not mine or not context_csns:
        return None
    theirs = by_sid(context_csns)
    for sid, csn in sorted(by_sid(mine).items()):
        if sid in theirs and csn > theirs[sid]:
            return (f"the provider has server {sid}'s changes up to {theirs[sid]} only, the cookie covers "
                    f"them up to {csn} (not replicated to it, or the provider lost them)")
    newest = max(context_csns)
    if max(mine) > newest:
        return f"the cookie's CSN {max(mine)} is newer than anything the provider has ({newest})"
    return None


def missing_writes(own_csns: list[str], context_csns: list[str]) -> list[str]:
    """Those of this daemon's own writes (their entryCSNs) that the provider does not have.

    The cookie moves only past handled events: after a claim and an outcome
    whose echoes had not come back yet, it still stands before them. A
    provider we failed over to, which never got those writes from the one
    they went to, then looks level with the cookie; only the writes' own
    entryCSNs show that it is behind (one server's changes replicate in
    order).
    """
    if not context_csns:
        return []
    theirs = by_sid(context_csns)
    return [csn for csn in own_csns if csn > theirs.get(csn_sid(csn), "")]


class CookieFile:
    """COOKIE_FILE: a copy of the position in the original daemon's format."""

    def __init__(self, path: str | Path, *, dry_run: bool = False) -> None:
        self.path = Path(path)
        self.dry_run = dry_run
        self.error: str | None = None      # why the file cannot be written now, if it cannot

    def read(self) -> str | None:
        """The cookie in the file; None when it is missing or empty. CookieError otherwise."""
        try:
            fd = open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except UnsafeFile as err:
            raise CookieError(f"COOKIE_FILE {err}") from err
        except OSError as err:
            raise CookieError(f"COOKIE_FILE {self.path}: cannot read it: {err.strerror}") from err
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(64 * 1024)
        try:
            text = raw.decode("ascii").strip()
            if text:
                parse_cookie(text)
        except (UnicodeDecodeError, ValueError) as err:
            raise CookieError(f"COOKIE_FILE {self.path}: not a sync cookie ({err}); remove the file "
                              f"and the daemon refreshes in full") from err
        return text or None

    def write(self, cookie: str) -> bool:
        """Replace the file (temp file, rename); False (and ``error``) when it cannot be written."""
        if self.dry_run:
            return True
        try:
            # Not durable: the store holds the position durably; this copy
            # only has to be whole, which the rename guarantees.
            write_atomically(self.path, (cookie + "\n").encode(), mode=0o600, durable=False)
        except OSError as err:
            self.error = f"cannot write COOKIE_FILE {self.path}: {err.strerror or err}"
            return False
        self.error = None
        return True


# Seconds between two writes of COOKIE_FILE (the store has the position durably).
MIRROR_INTERVAL = 1.0


def _behind(older: str, newer: str | None) -> bool:
    """Whether ``older`` is an earlier position than ``newer`` in the same stream (per server id)."""
    mine, theirs = by_sid(cookie_csns(older)), by_sid(cookie_csns(newer))
    return bool(mine) and all(sid in theirs and csn <= theirs[sid] for sid, csn in mine.items())


@dataclass
class Start:
    """Where a session starts: the cookie to send, and what a full refresh may take as done."""

    cookie: str | None          # None: a full refresh
    adopt: str | None = None    # entries whose CSN this cookie covers were handled before


class Position:
    """The acknowledged cookie, kept in the store and mirrored to COOKIE_FILE."""

    def __init__(self, store: Store, cookie_file: CookieFile, default: str) -> None:
        self.store = store
        self.file = cookie_file
        self.default = default
        self.current: str | None = None
        self._written: str | None = None
        self._failing_since: float | None = None
        self._mirror_due = 0.0

    def start(self) -> Start:
        """Decide how the first session starts (see the module docstring)."""
        if self.store.error:
            self._failing(self.store.error)
        in_file, in_store = self.file.read(), self.store.cookie
        self._written = in_file
        if in_file and (in_file == in_store or _behind(in_file, in_store)):
            # The copy in COOKIE_FILE is written at most once a second: after
            # a crash it may lag behind the store, which is then right.
            self.current = in_store
            return Start(in_store)
        known = in_file or in_store
        if in_file and not in_store and not self.store.adopts:
            log.warning("COOKIE_FILE %s holds the position of the store's earlier mirror: ignored, the "
                        "subtree is read from scratch", self.file.path)
            known = None
        elif in_file or in_store:
            log.warning("COOKIE_FILE %s (%s) and the store %s (%s) disagree: a full refresh; entries "
                        "the cookie %s covers count as handled before", self.file.path, in_file or "missing",
                        self.store.path, in_store or "no cookie", known)
        self.current = None
        return Start(None, adopt=known if cookie_csns(known) else None)

    @property
    def cookie(self) -> str:
        """What to send to the server: the acknowledged cookie, or DEFAULT_COOKIE.

        Written out anew, so a cookie stored by an earlier version (with the
        provider's ``sid=``) is sent without it too.
        """
        return merge_cookies(None, self.current) if self.current else self.default

    @property
    def full(self) -> bool:
        """Whether a session from here is a full refresh (the cookie names no CSN)."""
        return not cookie_csns(self.current)

    def acknowledge(self, cookie: str) -> None:
        """Move past ``cookie`` (merged with what came before, see merge_cookies)."""
        self.current = merge_cookies(self.current, cookie)
        self.store.set_cookie(self.current)

    def reset(self) -> None:
        """Forget the position: the next session is a full refresh."""
        self.current = None

    def forget(self) -> None:
        """Forget the position for good (a fresh mirror): COOKIE_FILE is emptied now, the store's
        cookie goes at its next flush (see Store.start_mirror)."""
        self.current = None
        if self.file.write(""):
            self._written = None

    def flush(self, *, mirror: bool = False) -> bool:
        """Write the store, then the copy in COOKIE_FILE; False while either cannot be written.

        The copy is written at most every MIRROR_INTERVAL seconds, or now with
        ``mirror``. Trouble is logged once when it starts and once when it is
        over (a nearly full folder may let one write through and not the
        next: the episode lasts until both are written).
        """
        if not self.store.flush():
            return self._failing(self.store.error)
        due = mirror or self._failing_since is not None or time.monotonic() >= self._mirror_due
        if self.current and self.current != self._written and due:
            if not self.file.write(self.current):
                return self._failing(self.file.error)
            self._written = self.current
            self._mirror_due = time.monotonic() + MIRROR_INTERVAL
        if self._failing_since is not None and not self.store.dirty and self.current in (None, self._written):
            log.warning("the state in %s is written again (it could not be for %.0f s); nothing was lost",
                        self.store.path.parent, time.monotonic() - self._failing_since)
            self._failing_since = None
        return True

    def _failing(self, why: str | None) -> bool:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("%s; the daemon goes on with its position in memory and tries again", why)
        return False
