"""``audit --repair``: an entry's repairable drift fixed by the plugin, in the daemon's per-entry order.

For each entry with repairable findings, one at a time:

1. its lock on this host is taken (provisioning.engine.entrylock: the lock
   every request of the daemon holds from claim to outcome), so a repair
   never runs beside a request in hand for that entry, and a request that
   comes meanwhile waits for the repair;
2. the entry is read again and audited again, alone: a request the daemon
   finished meanwhile may have fixed it, a request opened meanwhile makes
   it the daemon's, and only what is still found (and still repairable) is
   given to the plugin;
3. the plugin's ``provisioning_repair`` does it with its own steps;
4. the entry is audited once more: what the report shows is the host after.

Orphans and everything else that is not repairable are left as they are:
the repair never deletes or archives (``retire`` does, when asked).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from provisioning.backend.dn import normal_dn
from provisioning.backend.ldap import Directory
from provisioning.base.entry import Entry
from provisioning.base.finding import Expect, Finding
from provisioning.engine import audit
from provisioning.engine.entrylock import Busy, EntryLocks
from provisioning.hooks.service import Service, Unreachable

log = logging.getLogger(__name__)

# Seconds a repair waits for the daemon to finish a request of the same entry.
WAIT = 60.0


@dataclass
class Repaired:
    """What the repair of one entry did, and what is left of its drift."""

    dn: str
    done: list[str] = field(default_factory=list)
    skipped: str = ""                    # why nothing was done
    failed: str = ""                     # why the plugin's repair failed
    left: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Scope:
    """Where the entries are read and how they are judged (as for audit.run)."""

    directory: Directory
    base: str
    filter_template: str
    service: Service
    modus: str


def targets(findings: list[Finding]) -> dict[str, str]:
    """entryUUID -> DN of the entries with repairable findings, in the order of their DNs."""
    found = {f.uuid: f.subject for f in findings if f.repairable and f.uuid}
    return dict(sorted(found.items(), key=lambda item: normal_dn(item[1])))


def repair_entry(scope: Scope, locks: EntryLocks, uuid: str, dn: str, wait: float = WAIT) -> Repaired:
    """Repair one entry's drift under its lock (see the module's docstring)."""
    result = Repaired(dn)
    try:
        with locks.hold(uuid, dn, wait=wait):
            entry, findings = _fresh(scope, uuid, dn, result)
            if entry is None:
                return result
            wanted = [f for f in findings if f.repairable]
            if not wanted:
                result.skipped = "nothing left to repair (the daemon did it meanwhile)"
                return result
            try:
                result.done = scope.service.repair(entry, wanted)
            except Unreachable:
                raise
            except Exception as err:  # noqa: BLE001 - the plugin's failure is this entry's, reported
                log.debug("%s: the repair failed", dn, exc_info=True)
                result.failed = str(err) or type(err).__name__
            _, result.left = _fresh(scope, uuid, dn, Repaired(dn))
    except Busy as err:
        result.skipped = f"{err}: a request of the daemon is in hand; run the repair again later"
    return result


def _fresh(scope: Scope, uuid: str, dn: str, result: Repaired) -> tuple[Entry | None, list[Finding]]:
    """The entry as the directory holds it now and its findings now; (None, ...) with ``skipped`` set when
    it is not to be repaired."""
    entry = scope.directory.read(dn)
    if entry is None or entry.uuid != uuid:
        result.skipped = "the entry is gone or another one took its DN since the audit"
        return None, []
    why = scope.service.not_ours(entry)
    if why is not None:
        result.skipped = f"no longer this host's: {why}"
        return None, []
    if audit.expectation(entry, scope.modus) is not Expect.PRESENT:
        result.skipped = "a request of this entry is open: the daemon's to do"
        return None, []
    report = audit.run(scope.directory, scope.base, scope.filter_template, scope.service, scope.modus, only=dn)
    return entry, [f for f in report.findings if f.uuid == uuid and not f.orphan]
