"""Entries that left the subtree, known to the daemon only by their entryUUID.

The server reports a removal (or an entry that left the search's scope) by
entryUUID alone; the local store gives the last known entry.

- LDAP mode (and non-selfcare entries in combined mode): the delete hook runs
  once, with the last known entry.
- Selfcare: deleting data is never guessed.
  * the entry's delete request was done (``deleted``): nothing to do;
  * its delete request was still open (delete, or deleting without outcome,
    or a delete that failed) and passes the checks of a request
    (sstIsActive FALSE, date due): the delete hook runs with the last known
    entry - the wiki's steps 3 and 4 loaded back to back while the daemon was
    down must not leave home, configuration and quota behind;
  * anything else: a warning with the DN; the data is kept.

A delete hook that fails keeps the entry in the store, marked; it is tried
again at the next start.
"""
from __future__ import annotations

import datetime as dt
import logging

from provisioning.backend.store import Known
from provisioning.base.codes import ReturnValue
from provisioning.engine.protocol import MODE, STATE, Verdict, check_request
from provisioning.engine.results import Result
from provisioning.hooks.service import Request, Service

log = logging.getLogger(__name__)


def selfcare_removal(known: Known, today: dt.date) -> tuple[bool, str]:
    """(run the delete hook?, why) for a removed selfcare entry."""
    entry = known.entry()
    mode = (entry.get(MODE) or "").strip().lower()
    state = (entry.get(STATE) or "").strip()
    if state != "0":
        if mode == "deleted":
            return False, "removed after its delete request was done; nothing to do"
        return False, (f"removed from the directory without a delete request (last {MODE}: {mode}, "
                       f"{STATE}: {state}); its data is kept")
    if mode not in ("delete", "deleting"):
        return False, (f"removed from the directory while {MODE} was {mode} (no delete request); "
                       f"its data is kept")
    checked = check_request(entry, "delete", today)
    if checked.verdict is not Verdict.WORK:
        return False, f"removed with a delete request that cannot be done ({checked.reason}); its data is kept"
    return True, "removed from the directory while its delete request was open"


class Removals:
    """Acts on one removal with the last known entry."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def run(self, known: Known, *, selfcare: bool, today: dt.date) -> Result:
        if selfcare:
            delete, why = selfcare_removal(known, today)
            if not delete:
                if "nothing to do" in why:
                    log.info("%s: %s", known.dn, why)
                    return Result(forget=known.uuid)
                log.warning("%s: %s", known.dn, why)
                return Result(forget=known.uuid, warning=("an entry left the directory, its data is kept", why))
            log.warning("%s: %s: deleting it with the last known entry", known.dn, why)
        else:
            log.info("%s: delete (MODUS LDAP: the entry left the directory)", known.dn)
        code = self.service.run(Request("delete", known.entry()))
        if code == ReturnValue.SUCCESS:
            log.info("%s: delete %s for the removed entry", known.dn,
                     "would be done" if self.service.ctx.dry_run else "done")
            return Result(forget=known.uuid, verb="delete", code=code, durable=True)
        log.error("%s: delete of the removed entry failed with return value %d; tried again at the "
                  "next start", known.dn, code)
        return Result(remember=known.entry(), failed="delete", verb="delete", code=code, durable=True)
