"""The sync cookie: where the daemon is in the directory's change stream.

The cookie moves forward only when every entry it covers was handled and its
outcome written back (the daemon acknowledges it then). It is written to
COOKIE_FILE atomically: a temporary file, fsync, rename, fsync of the folder,
so a crash leaves either the old or the new cookie, never a torn one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from provisioning.files import open_private, write_atomically

log = logging.getLogger(__name__)

# The CSN the original daemon used when the cookie names none.
DEFAULT_CSN = "20000101000000.000000Z#000000#000#000000"


class CookieStore:
    """COOKIE_FILE with the acknowledged cookie kept in memory between flushes."""

    def __init__(self, path: str | Path, default: str, *, dry_run: bool = False) -> None:
        self.path = Path(path)
        self.default = default
        self.dry_run = dry_run
        self.current = self._read()
        self._saved = self.current

    def _read(self) -> str:
        try:
            with open(open_private(self.path, os.O_RDONLY), encoding="utf-8") as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            log.debug("cookie file %s does not exist: starting from %s", self.path, self.default)
            return self.default
        if not text:
            log.debug("cookie file %s is empty: starting from %s", self.path, self.default)
            return self.default
        return text

    def acknowledge(self, cookie: str) -> None:
        """Everything up to ``cookie`` is handled; it is flushed with the next flush()."""
        self.current = cookie

    def reset(self) -> None:
        """Forget the position (the server asked for a full refresh)."""
        self.current = self.default

    def flush(self) -> None:
        """Write the acknowledged cookie if it changed since the last write."""
        if self.current == self._saved:
            return
        if self.dry_run:
            log.debug("dry-run: cookie %s not written", self.current)
        else:
            write_atomically(self.path, (self.current + "\n").encode(), mode=0o600)
            log.debug("cookie %s written to %s", self.current, self.path)
        self._saved = self.current


def cookie_csn(cookie: str | None) -> str:
    """The CSN that SEARCH_FILTER's %entryCSN% stands for, given a cookie.

    A multi-provider cookie carries several CSNs (``csn=A;B``); the oldest
    keeps every entry any provider changed since. ``delcsn=`` is not a change
    CSN and is ignored. Without a CSN: the original's default, 1 January 2000.
    """
    csns: list[str] = []
    for part in (cookie or "").split(","):
        key, _, value = part.partition("=")
        if key.strip() == "csn" and value:
            csns.extend(v for v in value.split(";") if v)
    return min(csns) if csns else DEFAULT_CSN
