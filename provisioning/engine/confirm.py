"""Whether a claim holds across the providers, checked before any work starts.

An LDAP assertion is atomic on one provider only: two daemons that claim one
request through two mirror-mode providers both succeed. What replication
does next was measured here (OpenLDAP 2.5): a provider always takes an
incoming change newer than its entry, but in the persist phase it takes an
older one too. Two claims made at once therefore often end crossed - each
provider shows the other daemon's claim, for good - and a daemon that looked
only at the other provider would see its own claim there and work on.

The rule that does hold: the claim with the later entryCSN wins, and the
provider the earlier claim was made through ends up showing the later one.
So after its claim a daemon waits until

1. every other provider of SERVER that answers has received the claim (its
   contextCSN for our provider's server id has reached the claim's CSN; a
   rival claim made there later fails its assertion), and
2. its own provider has received everything those providers had at that
   moment (its contextCSN covers theirs): any rival claim made anywhere
   before ours has arrived at our provider by then,

and then reads the entry on its own provider:

- our claim: it holds;
- a version newer than our claim (another daemon's claim, or its outcome, or
  the portal's next write): it is lost, and the daemon backs off without
  touching the host;
- an older version (another daemon's earlier claim that came in after ours):
  it holds, and the outcome may replace that version (``replaced``).

A provider that does not answer cannot hand out a rival claim that we could
learn of: it is not waited for (the partition caveat: docs/how-it-works.md, "An HA pair").
The wait is bounded ([Service] CLAIM_CONFIRM_WAIT); past it - replication
slow, the providers cut off from each other, contextCSN unreadable - the work
starts all the same: the entry's lock on the host and its record of requests
done (provisioning.engine.entrylock) keep the host safe.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from provisioning.backend.cookie import by_sid, csn_sid
from provisioning.backend.ldap import DirectoryUnavailable
from provisioning.backend.peers import Peers
from provisioning.engine.claims import ATTRIBUTE, Claim, parse
from provisioning.base.entry import Entry

log = logging.getLogger(__name__)

# What is read of the entry on our provider.
ATTRS = ["entryCSN", ATTRIBUTE]
# Waits between looks: 1 ms, doubling up to 50 ms (replication here takes 1-10 ms).
FIRST_DELAY = 0.001
MAX_DELAY = 0.05


class Standing(enum.Enum):
    HOLDS = "holds"        # no provider that answers knows of a newer claim
    LOST = "lost"          # our provider shows a newer version than our claim
    UNSURE = "unsure"      # the wait ran out before the providers could tell


@dataclass
class Confirmation:
    standing: Standing
    took: float = 0.0
    away: list[str] = field(default_factory=list)      # providers that did not answer
    behind: list[str] = field(default_factory=list)    # UNSURE: what was still waited for
    winner: Entry | None = None                        # LOST: the version that won
    replaced: str | None = None                        # HOLDS: entryCSN of an older rival's version on our provider
    rival: tuple[Claim, str] | None = None             # another daemon's claim seen: the claim, its entryCSN
    unreadable: bool = False                           # UNSURE because a contextCSN cannot be read (ACL)


class Confirmer:
    """Decides where a fresh claim stands, from what the providers show (see the module docstring)."""

    def __init__(self, peers: Peers | None, wait: float, base: str = "") -> None:
        self.peers = peers
        self.wait = wait
        self.base = base

    @property
    def enabled(self) -> bool:
        return self.peers is not None and self.wait > 0

    def confirm(self, dn: str, token: str, csn: str, current: str) -> Confirmation:
        """Where claim ``token``, written with entryCSN ``csn`` through provider ``current``, stands."""
        started = time.monotonic()
        found = Confirmation(Standing.HOLDS)
        others = self.peers.others(current) if self.enabled else []
        if others:
            self._decide(dn, token, csn, current, others, started + self.wait, found)
        found.took = time.monotonic() - started
        return found

    def _decide(self, dn: str, token: str, csn: str, current: str, others: list[str], deadline: float,
                found: Confirmation) -> None:
        need = self._received(others, csn, deadline, found)
        if need is None or not self._caught_up(current, need, deadline, found):
            found.standing = Standing.UNSURE
            return
        try:
            copy = self.peers.read(current, dn, ATTRS, deadline)
        except DirectoryUnavailable as err:
            found.standing, found.behind = Standing.UNSURE, [f"{current} ({err})"]
            return
        self._judge(copy, token, csn, found)

    def _received(self, others: list[str], csn: str, deadline: float, found: Confirmation) -> dict[str, str] | None:
        """Step 1: wait until each other provider has our claim; what they had then, per server id
        (None: the wait ran out)."""
        need: dict[str, str] = {}
        pending, delay = list(others), FIRST_DELAY
        while True:
            for uri in list(pending):
                context = self._context(uri, deadline, found)
                if context is None or by_sid(context).get(csn_sid(csn), "") >= csn:
                    pending.remove(uri)
                    for sid, value in by_sid(context or []).items():
                        need[sid] = max(need.get(sid, ""), value)
                elif not context:
                    found.behind, found.unreadable = [f"{uri} (its contextCSN cannot be read)"], True
                    return None
            if not pending:
                return need
            if not _pause(delay, deadline):
                found.behind = [f"{uri} (has not received the claim)" for uri in pending]
                return None
            delay = min(2 * delay, MAX_DELAY)

    def _caught_up(self, current: str, need: dict[str, str], deadline: float, found: Confirmation) -> bool:
        """Step 2: wait until our provider has every change the others had when they got our claim."""
        delay = FIRST_DELAY
        while True:
            context = self._context(current, deadline, found)
            if context is None:
                found.behind = [f"{current} (does not answer)"]
                return False
            have = by_sid(context)
            if all(have.get(sid, "") >= value for sid, value in need.items()):
                return True
            if not _pause(delay, deadline):
                found.behind = [f"{current} (has not received the other providers' changes)"]
                return False
            delay = min(2 * delay, MAX_DELAY)

    def _judge(self, copy: Entry | None, token: str, csn: str, found: Confirmation) -> None:
        """Step 3: what our provider shows now decides."""
        if copy is None:
            found.standing, found.behind = Standing.UNSURE, ["the entry (gone from our provider)"]
            return
        rival = parse(copy.values(ATTRIBUTE))
        if rival is not None and rival.token != token:
            found.rival = (rival, copy.csn or "")
        if token in copy.values(ATTRIBUTE):
            return
        if copy.csn and copy.csn > csn:
            found.standing, found.winner = Standing.LOST, copy
        else:
            found.replaced = copy.csn            # an older claim came in after ours: ours is the newer

    def _context(self, uri: str, deadline: float, found: Confirmation) -> list[str] | None:
        """``uri``'s contextCSN values ([] when it cannot be read); None when it does not answer."""
        try:
            return self.peers.context(uri, self.base, deadline)
        except DirectoryUnavailable as err:
            log.debug("claim not checked on %s: %s", uri, err)
            if uri not in found.away:
                found.away.append(uri)
            return None


def _pause(delay: float, deadline: float) -> bool:
    """Sleep ``delay`` unless that passes ``deadline``; False when there is no time left."""
    if time.monotonic() + delay >= deadline:
        return False
    time.sleep(delay)
    return True
