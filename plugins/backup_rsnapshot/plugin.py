"""Backup/Rsnapshot: the hook implementations.

add and modify bring an account to the same end state (home, quota,
rsnapshot configuration) from wherever it is, so either can run again after
a crash at any point; delete removes the configuration, lifts the quota and
archives the data. Each returns a code from codes.Code.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from provisioning.clock import Clock, utc_stamp
from provisioning.entry import Entry
from provisioning.hookspecs import hookimpl
from provisioning.service import Request, ServiceContext

from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot.archive import dispose
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.home import ensure_home
from provisioning_backup_rsnapshot.operations import OperatorHooks
from provisioning_backup_rsnapshot.quota import set_quota
from provisioning_backup_rsnapshot.rsnapshot import RsnapshotConfigs, Template
from provisioning_backup_rsnapshot.settings import Settings, problems

log = logging.getLogger(__name__)

SPEC = Path(__file__).with_name("backup.spec")
MIN_PYTHON = (3, 11)


class BackupRsnapshot(OperatorHooks):
    """One instance per daemon; keeps the settings and the proven rsnapshot shapes."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.settings: Settings | None = None
        self.configs: RsnapshotConfigs | None = None

    @hookimpl
    def provisioning_config_spec(self) -> str:
        """The [Backup] section: see backup.spec."""
        return SPEC.read_text(encoding="utf-8")

    @hookimpl
    def provisioning_start(self, ctx: ServiceContext) -> list[str]:
        """Check [Backup] and load the rsnapshot template."""
        self.settings = Settings.from_config(ctx.config)
        found = problems(self.settings, ctx.config, ctx.transport)
        if not found:
            try:
                template = Template.load(self.settings.template)
            except (OSError, ValueError) as err:
                return [f"{ctx.config.path}: [Backup] RSNAPSHOT_TEMPLATE: {err}"]
            self.configs = RsnapshotConfigs(template, self.settings.config_file, self.settings.rsnapshot_cmd,
                                            ctx.transport, always_test=self.settings.configtest == "always")
        if not ctx.environment:
            log.warning("[Global] ENVIRONMENT is not set: accounts of every host are served here")
        return found

    @hookimpl
    def provisioning_owns(self, entry: Entry, ctx: ServiceContext) -> bool:
        """An account whose ``host`` names another ENVIRONMENT is left to that host."""
        host = entry.get("host")
        if host and ctx.environment and host.strip().lower() != ctx.environment.strip().lower():
            log.debug("%s: host %s is not this ENVIRONMENT (%s)", entry.dn, host, ctx.environment)
            return False
        return True

    @hookimpl
    def provisioning_add(self, request: Request, ctx: ServiceContext) -> int:
        """Create home, quota and rsnapshot configuration of a new account."""
        return self._guarded(request, ctx, self._converge)

    @hookimpl
    def provisioning_modify(self, request: Request, ctx: ServiceContext) -> int:
        """Re-apply quota and configuration from the entry as it is now (and the home if lost)."""
        return self._guarded(request, ctx, self._converge)

    @hookimpl
    def provisioning_delete(self, request: Request, ctx: ServiceContext) -> int:
        """Remove the configuration, lift the quota, archive (or keep/remove) the data."""
        return self._guarded(request, ctx, self._remove)

    # ---------------------------------------------------------------- steps

    def _guarded(self, request: Request, ctx: ServiceContext,
                 steps: Callable[[Request, ServiceContext], None]) -> int:
        try:
            self._check_runtime(ctx)
            steps(request, ctx)
        except StepError as err:
            log.error("%s: %s: %s (return value %d, %s)", request.dn, request.verb, err.message,
                      err.code, err.code.name)
            return err.code
        return Code.SUCCESS

    def _check_runtime(self, ctx: ServiceContext) -> None:
        s = self.settings
        if sys.version_info < MIN_PYTHON:
            raise StepError(Code.RUNTIME_NOT_SATISFIED,
                            f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed")
        for key, program in (("SET_QUOTA_CMD", s.set_quota_cmd), ("CREATE_CHROOT_CMD", s.create_chroot_cmd),
                             ("RSNAPSHOT_CMD", s.rsnapshot_cmd)):
            try:
                present = ctx.transport.exists(program)
            except OSError as err:
                present, program = False, f"{program} ({err})"
            if not present:
                raise StepError(Code.RUNTIME_NOT_SATISFIED, f"{key} {program} is not installed")

    def _place(self, account: accounts.Account, ctx: ServiceContext) -> accounts.Layout:
        place = accounts.layout(account, self.settings.backup_root)
        accounts.confine(place, self.settings.backup_root, self.settings.archive_dir, ctx.transport)
        return place

    def _converge(self, request: Request, ctx: ServiceContext) -> None:
        s = self.settings
        account = accounts.parse(request.entry, s.min_id)
        place = self._place(account, ctx)
        ensure_home(account, place, s.create_chroot_cmd, ctx.transport)
        set_quota(s.set_quota_cmd, account.uid_number, account.quota_bytes, s.mountpoint, ctx.transport)
        written = self.configs.install(account, place)
        log.info("%s: %s: home %s, quota %d bytes, %s %s", request.dn, request.verb,
                 place.home_path, account.quota_bytes, written, "would be written" if ctx.dry_run else "written")

    def _remove(self, request: Request, ctx: ServiceContext) -> None:
        s = self.settings
        account = accounts.parse(request.entry, s.min_id, need_service_data=False)
        place = self._place(account, ctx)
        removed = self.configs.remove(account.uid)
        set_quota(s.set_quota_cmd, account.uid_number, 0, s.mountpoint, ctx.transport)
        done = dispose(place.directory, account.uid, s.delete_data, s.archive_dir,
                       utc_stamp(self.clock.utcnow()), ctx.transport)
        log.info("%s: delete: %s %s, %s", request.dn, removed,
                 "would be removed, quota would be lifted" if ctx.dry_run else "removed, quota lifted", done)
