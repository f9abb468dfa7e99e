"""Backup/Rsnapshot's hooks for the audit: the comparison (auditor.py) and the repair.

A mixin of the plugin class, like operations.py: the repair uses the very
steps of the add and modify hooks (BackupRsnapshot._converge, the
configuration's install, set_quota) and the jail job's relink, so a repaired
account is what a request would have made of it.
"""
from __future__ import annotations

import logging
from typing import Iterable

from provisioning.api import Audit, Entry, Expected, Finding, Request, ServiceContext, hookimpl

from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot import ownership
from provisioning_backup_rsnapshot.auditor import CONVERGE, Auditor
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.builder import MODULES
from provisioning_backup_rsnapshot.quota import blocks, set_quota

log = logging.getLogger(__name__)

CONFIG_KINDS = {"config-missing", "config-differs"}


class RepairFailed(Exception):
    """A repair step failed (its message says which and why)."""


class AuditHooks:
    """provisioning_audit and provisioning_repair (the plugin class holds settings, configs, builder)."""

    @hookimpl
    def provisioning_audit(self, entries: Iterable[Expected], only: str | None, ctx: ServiceContext) -> Audit:
        """Read the host once (folders, configurations, quotas, jails) and compare every entry with it."""
        known = ctx.known_entries()
        try:
            return Auditor(self.settings, self.configs.template, ctx.transport, known.get,
                           ctx.command_timeout).run(entries, only)
        finally:
            known.close()

    @hookimpl
    def provisioning_repair(self, entry: Entry, findings: list[Finding], ctx: ServiceContext) -> list[str]:
        """Home, layout, marker: as modify does (all three steps); else only the configuration, the quota,
        the jail that differ."""
        kinds = {finding.kind for finding in findings if finding.repairable}
        done: list[str] = []
        request = Request("modify", entry, entry)
        try:
            self._check_runtime(ctx)
            with self._account_lock(entry.get("uid") or entry.dn):
                self._repair(request, kinds, ctx, done)
        except StepError as err:
            raise RepairFailed(f"{err.message} (return value {int(err.code)}, {err.code.name})") from err
        return done

    def _repair(self, request: Request, kinds: set[str], ctx: ServiceContext, done: list[str]) -> None:
        s = self.settings
        account = accounts.parse(request.entry, s.min_id)
        if kinds & CONVERGE:
            self._converge(request, ctx)
            done.append("home, quota and rsnapshot configuration brought in line, as a modify request does")
        elif kinds & (CONFIG_KINDS | {"quota-differs"}):
            place = self._place(account, ctx)
            verdict, _ = self._judge(request, account, place, ctx)
            if verdict is not ownership.Verdict.OURS:
                raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT, f"{place.directory} is not this entry's "
                                f"({verdict.value}): looked at again, it is not what the audit saw")
            if kinds & CONFIG_KINDS:
                done.append(f"{self.configs.install(account, place)} written anew from the template")
            if "quota-differs" in kinds:
                set_quota(s.set_quota_cmd, account.uid_number, account.quota_bytes, s.mountpoint, ctx.transport)
                done.append(f"quota of uidNumber {account.uid_number} set to {blocks(account.quota_bytes)} KiB")
        if "jail-stale" in kinds:
            done.append(self._relink(request.entry, account, ctx))

    def _relink(self, entry: Entry, account: accounts.Account, ctx: ServiceContext) -> str:
        """Move the jail to the current image, as the jail job does (only if its marker is still this entry's)."""
        s = self.settings
        place = accounts.layout(account, s.backup_root)
        try:
            answer = ctx.transport.call(MODULES, "relink", s.backup_root, place.directory, place.jail,
                                        s.jail_link_limit, entry.uuid, shown=f"repair: relink {place.jail}")
        except OSError as err:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot move the jail {place.jail}: {err}") from err
        if "refused" in answer:
            raise StepError(Code.UNSAFE_ACCOUNT_PATH, f"the jail {place.jail}: {answer['refused']}")
        if answer.get("state") == "nostore":
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"no jail image yet for {place.jail}: the daemon's jail "
                            f"job makes one")
        return f"the jail {place.jail} moved to the current jail image ({answer.get('moved', 0)} files)"
