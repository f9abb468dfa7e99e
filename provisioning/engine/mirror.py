"""What the store mirrors: the subtree, the filter and the directory its entries came from.

The store judges removals: an entry it knows that a full refresh neither
sends nor names present has left the directory, and in MODUS LDAP that calls
the delete hook. That judgement holds only against the very search the
store's entries came from. Pointed at another SERVICE_SUBTREE, another
SEARCH_FILTER or another directory (a rebuilt one whose entries got new
entryUUIDs, a server list that names a stranger), every entry the store
knows would look removed, and every account would be deleted.

So the store records what it mirrors, and the daemon compares at every start
(subtree, filter) and every connect (the directory). When they differ the
daemon says what changed and starts a fresh mirror: the store's records are
set aside, no delete hook runs for any of them, and their data stays on the
host (``provisioning-daemon deletions --list`` does not list them: nothing
was asked for; an audit finds them). The new subtree's entries are then new
to the daemon: in MODUS LDAP their add hook runs, as for a first start.
"""
from __future__ import annotations

from dataclasses import dataclass

from provisioning.backend.dn import normal_dn
from provisioning.backend.ldap import Identity


@dataclass(frozen=True)
class Mirror:
    """The search the store's entries come from."""

    subtree: str
    filter: str

    @classmethod
    def of(cls, subtree: str, filterstr: str) -> "Mirror":
        return cls(normal_dn(subtree), " ".join(filterstr.split()))

    def as_dict(self, identity: Identity | None = None) -> dict:
        found = {"subtree": self.subtree, "filter": self.filter}
        if identity is not None:
            found["suffix_uuid"], found["base_uuid"] = identity.suffix, identity.base
        return found

    def differences(self, recorded: dict) -> list[str]:
        """What differs between the configuration and what the store recorded (SERVICE_SUBTREE, SEARCH_FILTER)."""
        found = []
        if recorded.get("subtree") != self.subtree:
            found.append(f"SERVICE_SUBTREE was {recorded.get('subtree')}, is {self.subtree}")
        if recorded.get("filter") != self.filter:
            found.append(f"SEARCH_FILTER was {recorded.get('filter')}, is {self.filter}")
        return found


def identity_differences(recorded: dict, now: Identity) -> list[str]:
    """What differs in the directory's identity; nothing where either side could not be read."""
    found = []
    for key, what, value in (("suffix_uuid", "the directory (its suffix's entryUUID)", now.suffix),
                             ("base_uuid", "SERVICE_SUBTREE's entry (its entryUUID)", now.base)):
        before = recorded.get(key)
        if before and value and before.lower() != value.lower():
            found.append(f"{what} was {before}, is {value}")
    return found
