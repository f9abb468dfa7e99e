"""Backup/Rsnapshot: the hook implementations.

add and modify bring an account to the same end state (home, quota,
rsnapshot configuration) from wherever it is, so either can run again after
a crash at any point; delete archives the data, removes the configuration
and lifts the quota. Each returns a code from codes.Code.

Every request first reads and judges (parse, layout, confine, survey,
ownership) and only then changes anything: a refused request has run no
command that changes the host, written no file and made no quota call.
"""
from __future__ import annotations

import importlib.resources
import logging
import sys
import threading
import weakref
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator

from provisioning.api import Clock, Entry, Request, ServiceContext, hookimpl, utc_stamp

from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot import builder as builders
from provisioning_backup_rsnapshot import home, ownership
from provisioning_backup_rsnapshot.alongside import Company, alongside
from provisioning_backup_rsnapshot.audithooks import AuditHooks
from provisioning_backup_rsnapshot.archive import archive_target, dispose
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.jailjob import JailJob
from provisioning_backup_rsnapshot.operations import OperatorHooks
from provisioning_backup_rsnapshot.quota import set_quota
from provisioning_backup_rsnapshot.survey import survey
from provisioning_backup_rsnapshot.rsnapshot import RsnapshotConfigs, Staged, Template
from provisioning_backup_rsnapshot.settings import Settings, problems

log = logging.getLogger(__name__)

# The [Backup] configspec, shipped in this package.
SPEC = importlib.resources.files(__package__).joinpath("backup.spec")
MIN_PYTHON = (3, 11)


class BackupRsnapshot(OperatorHooks, AuditHooks):
    """One instance per daemon; keeps the settings and the proven rsnapshot shapes."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.settings: Settings | None = None
        self._runtime_checked = False
        self._locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self.configs: RsnapshotConfigs | None = None
        self.builder: builders.Builder | None = None
        self.jails: JailJob | None = None
        self._entries = None
        self.company = Company()

    @hookimpl
    def provisioning_config_spec(self) -> str:
        """The [Backup] section: see backup.spec."""
        return SPEC.read_text(encoding="utf-8")

    @hookimpl
    def provisioning_start(self, ctx: ServiceContext) -> list[str]:
        """Check [Backup] and load the rsnapshot template."""
        self.settings = Settings.of(ctx)
        found = problems(self.settings, ctx)
        if not found:
            try:
                template = Template.load(self.settings.template)
            except (OSError, ValueError) as err:
                return [f"{ctx.config_path}: [Backup] RSNAPSHOT_TEMPLATE: {err}"]
            self.configs = RsnapshotConfigs(template, self.settings.config_file, self.settings.rsnapshot_cmd,
                                            ctx.transport, always_test=self.settings.configtest == "always")
            self.builder = builders.choose(self.settings, ctx.transport)
            log.info("%s", self.builder.describe())
        if not ctx.environment:
            log.warning("[Global] ENVIRONMENT is not set: accounts of every host are served here")
        return found

    @hookimpl
    def provisioning_serving(self, ctx: ServiceContext) -> None:
        """Start the jail job (jailjob.py): jails follow the host's programs. Not in a dry run."""
        if ctx.dry_run:
            log.info("dry run: the jail job does not run (it would move jails to a new image)")
            return
        self._entries = ctx.known_entries()
        self.jails = JailJob(self.settings, ctx.transport, self._entries.get)
        self.jails.start()

    @hookimpl
    def provisioning_stop(self, ctx: ServiceContext) -> None:
        """End the jail job."""
        if self.jails is not None:
            self.jails.stop()
            self.jails = None
        if self._entries is not None:
            self._entries.close()
            self._entries = None

    @hookimpl
    def provisioning_metrics(self, ctx: ServiceContext) -> dict[str, tuple[float, str]]:
        """The jail job's figures: jails current, stale (and for how long), left alone."""
        return self.jails.gauges() if self.jails is not None else {}

    @hookimpl
    def provisioning_owns(self, entry: Entry, ctx: ServiceContext) -> bool:
        """An account whose ``host`` names another ENVIRONMENT is left to that host."""
        host = entry.get("host")
        if host and ctx.environment and host.strip().lower() != ctx.environment.strip().lower():
            log.debug("%s: host %s is not this ENVIRONMENT (%s)", entry.dn, host, ctx.environment)
            return False
        return True

    @hookimpl
    def provisioning_attributes(self, ctx: ServiceContext) -> list[str]:
        """The attributes an account is made of (account.ATTRIBUTES), with those the core reads."""
        return list(accounts.ATTRIBUTES)

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
        """Archive (or keep/remove) the data, remove the configuration, lift the quota."""
        return self._guarded(request, ctx, self._remove)

    # ---------------------------------------------------------------- steps

    def _guarded(self, request: Request, ctx: ServiceContext,
                 steps: Callable[[Request, ServiceContext], None]) -> int:
        try:
            self._check_runtime(ctx)
            # One account at a time: two entries naming the same uid (an
            # impostor) run in different lanes of the core, maybe at once.
            with self.company.joined(), self._account_lock(request.entry.get("uid") or request.dn):
                steps(request, ctx)
        except StepError as err:
            # A command that went missing shows as a failed step: look again
            # before the next request (RUNTIME_NOT_SATISFIED names it then).
            self._runtime_checked = False
            log.error("%s: %s: %s (return value %d, %s)", request.dn, request.verb, err.message,
                      err.code, err.code.name)
            return err.code
        return Code.SUCCESS

    @contextmanager
    def _account_lock(self, uid: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.get(uid)
            if lock is None:
                lock = self._locks[uid] = threading.Lock()
        with lock:
            yield

    def _check_runtime(self, ctx: ServiceContext) -> None:
        """The programs are there (checked once, and again after any failed request)."""
        if self._runtime_checked:
            return
        self._find_programs(ctx)
        self._runtime_checked = True

    def _find_programs(self, ctx: ServiceContext) -> None:
        s = self.settings
        if sys.version_info < MIN_PYTHON:
            raise StepError(Code.RUNTIME_NOT_SATISFIED,
                            f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed")
        programs = [("SET_QUOTA_CMD", s.set_quota_cmd), ("RSNAPSHOT_CMD", s.rsnapshot_cmd)]
        if s.create_chroot_cmd:             # empty: the shipped builder, nothing to find
            programs.insert(1, ("CREATE_CHROOT_CMD", s.create_chroot_cmd))
        for key, program in programs:
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

    def _judge(self, request: Request, account: accounts.Account, place: accounts.Layout,
               ctx: ServiceContext) -> tuple[ownership.Verdict, dict]:
        """Look at the account's folders and decide whether this entry may touch them."""
        nodes = survey(home.paths(place, self.settings.backup_root), ctx.transport)
        home.check_paths(place, self.settings.backup_root, nodes)
        return ownership.judge(account, request.entry.uuid, place, nodes, ctx.transport), nodes

    def _converge(self, request: Request, ctx: ServiceContext) -> None:
        s = self.settings
        account = accounts.parse(request.entry, s.min_id)
        try:
            place = self._place(account, ctx)
            verdict, nodes = self._judge(request, account, place, ctx)
            def build(waiting: Callable[[], None] | None = None) -> None:
                home.build(account, place, request.entry.uuid, verdict, nodes, self.builder,
                           s.backup_root, ctx.transport, built=lambda: self._built(place, request.entry.uuid),
                           waiting=waiting)
            written = self._apply(request, build, account, place, ctx)
        except StepError:
            # A failed request leaves no candidate, nor one an earlier attempt left behind while
            # the gateway was away (a request that succeeds writes it again and puts it in place).
            if not ctx.dry_run:
                self.configs.discard_candidate(account.uid)
            raise
        log.info("%s: %s: home %s, quota %d bytes, %s %s", request.dn, request.verb,
                 place.home_path, account.quota_bytes, written, "would be written" if ctx.dry_run else "written")

    def _built(self, place: accounts.Layout, uuid: str) -> None:
        """A jail was made: by the shipped builder, on the current image (counted); by an operator's
        CREATE_CHROOT_CMD, perhaps with copies (the jail job moves it)."""
        if self.jails is None:
            return
        if self.builder.kind == "chroot":
            self.jails.built(place.directory)
        elif self.builder.kind is None:
            self.jails.notice(place.directory, place.jail, uuid)

    def _apply(self, request: Request, build: Callable[..., None], account: accounts.Account,
               place: accounts.Layout, ctx: ServiceContext) -> str:
        """Home, quota and rsnapshot.conf; the configuration's path.

        Once the request is judged the account's, the steps need nothing of
        each other until the configuration is checked against the folders,
        and each mostly waits (for a command, for the disk). A request worked
        alone runs setquota and the writing and syncing of the configuration
        beside CREATE_CHROOT_CMD (_apply_beside); while other requests are
        worked too, and in a dry run, the three run one after the other, in
        that order (alongside.Company says why). Either way the configuration
        is put in place only when all three succeeded, and the failure
        reported is the one the order home, quota, configuration gives.
        """
        s = self.settings
        def quota() -> None:
            set_quota(s.set_quota_cmd, account.uid_number, account.quota_bytes, s.mountpoint, ctx.transport)
        def in_turn() -> str:
            # After the home, in the order whose first failure is the one reported.
            quota()
            return self.configs.install(account, place)
        if ctx.dry_run or not self.company.alone():
            build()
            return in_turn()
        return self._apply_beside(request, build, quota, in_turn, account, place)

    def _apply_beside(self, request: Request, build: Callable[..., None], quota: Callable[[], None],
                      in_turn: Callable[[], str], account: accounts.Account, place: accounts.Layout) -> str:
        """_apply with setquota and the configuration's write in helper threads, beside CREATE_CHROOT_CMD.

        The helpers start when the request's own thread is about to wait for
        the home's command, not before: until then that thread's steps (folders,
        owner marker) are Python as much as theirs, and the GIL let only one of
        them run (sequential adds, alternating: p50 0.87-0.93 of the latency
        with the helpers started first). A home that is there already needs no
        command: then nothing waits, and the steps run one after the other.

        A failed home reports 5 even if the quota failed too (the others are
        logged as warnings), once all three have ended. The difference to
        running them one after the other: when the home fails, the quota the
        entry asks for may already be set (its retry sets it again).
        """
        beside: list[Future] = []
        def start() -> None:
            beside.append(alongside(quota))
            beside.append(alongside(lambda: self.configs.write(account, place)))
        try:
            build(start)
        except BaseException:
            self._abandon(request, beside)      # never left running; the earlier step's failure is raised
            raise
        if not beside:
            return in_turn()
        setting, writing = beside
        try:
            setting.result()
        except BaseException:
            self._abandon(request, [writing])
            raise
        staged = writing.result()               # a failed write removed its file itself
        self.configs.prove(staged, place)
        return self.configs.commit(staged)

    def _abandon(self, request: Request, steps: list[Future]) -> None:
        """Wait for the steps beside a failed one; a configuration written meanwhile is removed."""
        for step in steps:
            try:
                done = step.result()
            except StepError as err:
                log.warning("%s: %s: %s as well (%s)", request.dn, request.verb, err.message, err.code.name)
                continue
            except Exception:  # noqa: BLE001 - the failure first in order is the one raised
                log.exception("%s: %s: unexpected error in a step beside the failed one", request.dn, request.verb)
                continue
            except BaseException:   # Interrupted (the stop) or the deadline: the raised failure says enough
                continue
            if isinstance(done, Staged):
                self.configs.discard(done)

    def _remove(self, request: Request, ctx: ServiceContext) -> None:
        """Delete, in the order that leaves a consistent account whichever step fails.

        1. Judge and choose a free archive name: refusals change nothing.
        2. Archive the data. If that fails, nothing has changed yet: the
           account still works, with its snapshots and its limit (9).
        3. Remove the configuration. If that fails, the data is already
           gone; the configuration names a snapshot_root that no longer
           exists, and rsnapshot (no_create_root) refuses to run it (8).
        4. Lift the quota, last: a limit is never lifted while the data is
           still in the jail, where the customer could fill the disk (6).
           With DELETE_DATA = keep the data stays there, so the limit stays.
        A retry after any failure redoes the remaining steps; a step that is
        already done ("already gone") is not an error.
        """
        s = self.settings
        account = accounts.parse(request.entry, s.min_id, need_service_data=False)
        place = self._place(account, ctx)
        verdict, _ = self._judge(request, account, place, ctx)
        present = verdict is not ownership.Verdict.NEW
        target = (archive_target(s.archive_dir, account.uid, utc_stamp(self.clock.utcnow()), ctx.transport)
                  if present and s.delete_data == "archive" else None)
        done = dispose(place.directory, present, s.delete_data, target, s.archive_dir, ctx.transport)
        removed = self.configs.remove(account.uid)
        if s.delete_data == "keep" and present:
            quota = "quota kept (the data stays in the jail)"
        elif ctx.dry_run:
            set_quota(s.set_quota_cmd, account.uid_number, 0, s.mountpoint, ctx.transport)
            quota = "quota would be lifted"
        else:
            set_quota(s.set_quota_cmd, account.uid_number, 0, s.mountpoint, ctx.transport)
            quota = "quota lifted"
        log.info("%s: delete: %s, %s %s, %s", request.dn, done, removed,
                 "would be removed" if ctx.dry_run else "removed", quota)
