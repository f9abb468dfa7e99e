"""MODUS = LDAP, and the entries of MODUS = combined that are not selfcare requests.

As in the original core: an entry appearing in SERVICE_SUBTREE calls the add
hook, a change calls modify, a removal calls delete (provisioning.engine.removals),
and the daemon writes nothing back.

Better than the original: whether an entry is new or changed is decided from
the local store - what this daemon saw and handled before - not from the sync
stream, so a restart does not call add again for every entry, and the refresh
after a restart calls hooks only for what changed since the cookie.

A hook that fails is logged with the DN and its return value, and the store
marks the entry. It is tried again on the next change of the entry (as add
again when add failed: the service was never created) and at the next start
of the daemon. Not in a loop: a failure comes from the host (a command
missing, a full disk), which an operator fixes and then restarts the daemon,
or from the entry, which someone then changes - both are covered.
"""
from __future__ import annotations

import logging
import time

from provisioning.backend.cookie import covered
from provisioning.backend.store import Known
from provisioning.base.codes import ReturnValue
from provisioning.base.entry import Entry
from provisioning.engine.results import Result
from provisioning.hooks.service import Request, Service

log = logging.getLogger(__name__)


def ldap_verb(entry: Entry, known: Known | None, adopt: str | None = None) -> str | None:
    """The hook a seen entry calls for: add, modify, or None when nothing changed.

    ``adopt`` is a cookie from before the store knew the subtree (an upgrade,
    a lost store): an unknown entry that cookie covers was handled then.
    """
    if known is None:
        if adopt and covered(entry.csn, adopt):
            return None
        return "add"
    if entry.csn and known.csn == entry.csn:
        return None
    return "add" if known.failed == "add" else "modify"


class LdapMode:
    """Runs a hook for a changed entry and reports what the store must remember."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def run(self, entry: Entry, verb: str) -> Result:
        log.info("%s: %s (MODUS LDAP: the entry %s)", entry.dn, verb,
                 "appeared" if verb == "add" else "changed")
        started = time.monotonic()
        code = self.service.run(Request(verb, entry))
        took = time.monotonic() - started
        if code == ReturnValue.SUCCESS:
            log.info("%s: %s %s in %.3f s (nothing is written back in LDAP mode)", entry.dn, verb,
                     "would be done" if self.service.ctx.dry_run else "done", took)
            return Result(remember=entry, verb=verb, code=code, durable=True)
        log.error("%s: %s failed with return value %d after %.3f s; tried again on the next change of "
                  "the entry or at the next start", entry.dn, verb, code, took)
        return Result(remember=entry, failed=verb, verb=verb, code=code, durable=True)
