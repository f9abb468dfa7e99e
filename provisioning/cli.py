"""provisioning-daemon: command line, start-up, exit codes, sub-commands.

Options keep the original daemon's short letters so existing init scripts
work: -c config, -g global config, -r dry-run, -d debug, -t check, -h help.
Exit codes are listed in provisioning.base.codes.ExitCode and in docs/operations.md.

The sub-commands live in modules of their own: ``status``
(provisioning.operator.status), ``retry`` (provisioning.operator.retry), ``deletions``
(provisioning.operator.deletions), ``files``
(provisioning.operator.shipped), ``new-plugin`` (provisioning.operator.scaffold); ``--check`` is
provisioning.operator.checks, ``--daemon`` provisioning.runtime.detach and ``--list-plugins``
provisioning.hooks.loading.listing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from provisioning import __version__
from provisioning.runtime import detach
from provisioning.runtime import factory, startup
from provisioning.backend.cookie import CookieError, CookieFile, Position
from provisioning.backend.ldap import (
    BindRefused, Directory, DirectoryUnavailable, LdapSettings, SubtreeMissing, SyncStream,
)
from provisioning.backend.peers import Peers
from provisioning.backend.store import Store, StoreError
from provisioning.engine.brake import Brake, BrakeSettings
from provisioning.engine.claims import Owners
from provisioning.base.clock import Clock
from provisioning.base.codes import ExitCode
from provisioning.transport.commandguard import GUARD
from provisioning.config.loader import Config, global_config_candidates, unknown_keys
from provisioning.engine.daemon import Daemon, HostUnreachable, Retry, gateway, with_retries
from provisioning.engine.confirm import Confirmer
from provisioning.engine.entrylock import EntryLocks
from provisioning.engine.failback import Failback
from provisioning.base.files import UnsafeFile
from provisioning.engine.ldapmode import LdapMode
from provisioning.runtime.lock import AlreadyLocked, PidLock
from provisioning.base.log import STREAM_FORMAT
from provisioning.base.log import install as install_handler
from provisioning.alerts.mail import Alerts, RequestLog, alerts_from_config, describe_settings
from provisioning.engine.mirror import Mirror
from provisioning.observe.monitor import Monitor, monitor_from_config
from provisioning.engine.protocol import Selfcare
from provisioning.runtime.auditjob import AuditJob
from provisioning.runtime.reload import Reloader
from provisioning.engine.removals import Removals
from provisioning.engine.router import Router
from provisioning.hooks.service import Service
from provisioning.runtime.startup import load_configuration  # noqa: F401 - kept for callers of the old place
from provisioning.base.stdout import quiet_broken_pipe
from provisioning.transport import Unreachable
from provisioning.engine.workers import executor

log = logging.getLogger("provisioning")

SUBCOMMANDS = {"status": "provisioning.operator.status", "retry": "provisioning.operator.retry",
               "files": "provisioning.operator.shipped", "new-plugin": "provisioning.operator.scaffold",
               "deletions": "provisioning.operator.deletions", "audit": "provisioning.operator.audit",
               "explain": "provisioning.operator.explain", "resync": "provisioning.operator.resync",
               "retire": "provisioning.operator.retire"}
# Seconds the mail alerts get at shutdown to send what waits.
ALERTS_CLOSE_TIMEOUT = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="provisioning-daemon",
        description="Keep this host in line with the provisioning requests in an OpenLDAP directory. "
                    "Sub-commands: 'provisioning-daemon status -c FILE' (for people and monitoring), "
                    "'provisioning-daemon retry -c FILE DN...|--failed' (write failed requests anew), "
                    "'provisioning-daemon deletions -c FILE [--approve|--keep DN...|--all]' (removals the "
                    "deletion brake holds), "
                    "'provisioning-daemon files [--print NAME | --copy NAME TARGET]' (the shipped example "
                    "configuration, template, schema and unit) and "
                    "'provisioning-daemon new-plugin SERVICE/TYPE DIR' (a ready plugin project to start from); "
                    "each has its own --help.",
        epilog="Exit codes: " + ", ".join(f"{c.value} {c.name.lower().replace('_', ' ')}" for c in ExitCode))
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="service configuration, e.g. etc/Provisioning/Backup/Rsnapshot.conf")
    parser.add_argument("-g", "--global-config", metavar="FILE",
                        help="Global.conf (default: the first of %s)"
                        % ", ".join(str(p) for p in global_config_candidates()))
    parser.add_argument("-r", "--dry-run", action="store_true",
                        help="show every command, file write and LDAP write instead of doing it; takes no "
                             "lock and writes no cookie, so it can run next to the daemon")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="log debug messages and echo everything to stdout")
    parser.add_argument("-t", "--check", action="store_true",
                        help="check configuration, plugin, LDAP and state folders, one line each, then exit "
                             "(0 when nothing fails: usable as ExecStartPre)")
    parser.add_argument("--once", action="store_true",
                        help="exit after the first refresh (the requests open now), instead of waiting for "
                             "changes")
    parser.add_argument("--daemon", action="store_true",
                        help="detach from the terminal once connected (not needed under systemd); exits "
                             "with the daemon's start-up result")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--list-plugins", action=_ListPlugins,
                        help="list the plugins this installation finds, where each comes from, then exit")
    return parser.parse_args(argv)


class _ListPlugins(argparse.Action):
    """Like --version: answers and exits while parsing, so it needs no -c."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from provisioning.hooks.loading import listing
        print("\n".join(listing()))
        parser.exit(0)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()          # here, not at exit, where a closed pipe could no longer be answered
    except BrokenPipeError:
        quiet_broken_pipe()
        return ExitCode.OUTPUT_CLOSED
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parse_args(argv)
    if args.check:
        from provisioning.operator import checks  # only for -t: it costs every start otherwise
        return checks.main(args)
    loaded = startup.load(Path(args.config), args.global_config)
    # Unknown keys stop a start as they fail --check: a misspelt key would take its default.
    unknown = unknown_keys(loaded.config) if loaded.manager is not None \
        and "*" not in loaded.config.invalid_sections else []
    if not loaded.valid or unknown:
        return _refuse(loaded.problems + _host_problems(loaded.config) + unknown, logged=False,
                       note="; the plugin's own checks run once these are fixed" if loaded.manager else "")
    startup.configure_logging(loaded.config, debug=args.debug)
    try:
        return _run(loaded, args)
    except Exception:  # noqa: BLE001 - the last line of defence: say what happened
        log.exception("unexpected error; stopping")
        return ExitCode.INTERNAL_ERROR


def _host_problems(config: Config) -> list[str]:
    return startup.core_checks(config) if "*" not in config.invalid_sections else []


def _refuse(problems: list[str], *, logged: bool = True, note: str = "") -> int:
    """Every problem, then the count: one run says everything (logged too once logging is set up)."""
    for problem in problems:
        if logged:
            log.error("%s", problem)
        print(f"provisioning-daemon: {problem}", file=sys.stderr)
    print(f"provisioning-daemon: {len(problems)} configuration problem(s); nothing started{note}",
          file=sys.stderr)
    return ExitCode.CONFIG_ERROR


def _run(loaded: startup.Loaded, args: argparse.Namespace) -> int:
    config = loaded.config
    log.debug("configuration %s, Global.conf %s", config.path, config.global_path or "(none found: built-in defaults)")
    if config.path.stat().st_mode & 0o004:
        log.warning("%s can be read by every user of this host and holds ADMIN_PASSWORD: chmod o-r it",
                    config.path)
    # Set when a stop is asked for: a command that ends because of it is not
    # the request's failure (the request is resumed at the next start).
    args.stop_event = threading.Event()
    try:
        service = factory.service(loaded.manager, config, dry_run=args.dry_run, stopping=args.stop_event)
    except ValueError as err:
        return _refuse([f"{config.path}: {err}"])
    try:
        problems = _host_problems(config) + _start_service(service, config.startup_retry, args.stop_event)
    except HostUnreachable as err:
        log.error("giving up: %s", err)
        service.stop()
        return ExitCode.GATEWAY_UNREACHABLE
    if problems:
        service.stop()
        return _refuse(problems)
    readiness = detach.Readiness()
    if args.daemon:
        # What the checks started (CLISSH's gateway helpers and shared connection, the
        # command guard) holds descriptors that detaching closes; the daemon then opens its
        # lock and store under the same numbers, which those objects would close later.
        service.ctx.transport.close()
        GUARD.close()
        started, readiness = _detach(config, args)
        if readiness is None:
            # The starting command: the daemon's own start-up result. While
            # the daemon runs, what the plugin set up is the daemon's: not
            # stopped here.
            if started != ExitCode.OK:
                service.stop()
            return started
    code = ExitCode.INTERNAL_ERROR
    try:
        code = _serve_locked(config, service, args, readiness)
    finally:
        readiness.report(code)
        service.stop()
    return code


def _serve_locked(config: Config, service: Service, args: argparse.Namespace,
                  readiness: detach.Readiness) -> int:
    # A dry-run changes nothing, so it takes no lock: it can show what the
    # daemon would do while the daemon runs.
    lock = contextlib.nullcontext() if args.dry_run else PidLock(config.lock_file)
    try:
        with lock:
            return serve(config, service, dry_run=args.dry_run, once=args.once, readiness=readiness,
                         stop_event=args.stop_event, debug=args.debug)
    except AlreadyLocked as err:
        log.error("%s/%s daemon already running: %s", config.service_name, config.type_name, err)
        return ExitCode.ALREADY_RUNNING
    except UnsafeFile as err:   # the lock or the cookie: a link, another user's, writable by others
        log.error("%s", err)
        return ExitCode.CONFIG_ERROR


def _start_service(service: Service, retry: Retry, stop: threading.Event) -> list[str]:
    """The plugin's start-up checks; while the gateway does not answer, tried again with [Global] SLEEP
    and ATTEMPTS, as LDAP at start. HostUnreachable when it never answered."""
    transport = service.ctx.transport
    while True:
        try:
            return service.start()
        except Unreachable as err:
            log.warning("the plugin's start-up checks cannot run: %s", err)
        with_retries(transport.reconnect, retry, lambda seconds: not stop.wait(seconds),
                     gateway(transport.reach()))
        if stop.is_set():
            raise HostUnreachable("stopped while waiting for the gateway")


def _detach(config: Config, args: argparse.Namespace) -> tuple[int | None, detach.Readiness | None]:
    """Detach; in the daemon, set logging up again (to LOG_FILE when there is no syslog)."""
    log_fd = None
    if detach.needs_log_file():
        source = "the default, COOKIE_FILE.log; set [Service] LOG_FILE to change it" \
            if config.log_file == Path(f"{config.database.cookie_file}.log") else "[Service] LOG_FILE"
        try:
            log_fd = detach.open_log_file(config.log_file)
        except OSError as err:
            print(f"provisioning-daemon: {detach.SYSLOG_SOCKET} is missing and the log file "
                  f"{config.log_file} ({source}) cannot be opened: {err}", file=sys.stderr)
            return ExitCode.CONFIG_ERROR, None
        print(f"provisioning-daemon: {detach.SYSLOG_SOCKET} is missing: the daemon logs to {config.log_file} "
              f"({source})", flush=True)
    started, readiness = detach.detach(keep=[] if log_fd is None else [log_fd])
    if readiness is None:
        return started, None
    if log_fd is None:
        startup.configure_logging(config, debug=args.debug)
    else:
        detach.log_to_file(log_fd, config.log_file, startup.level_flags(config, debug=args.debug))
    return None, readiness


def build_daemon(config: Config, service: Service, *, dry_run: bool = False, once: bool = False,
                 clock: Clock | None = None, stop_event: threading.Event | None = None,
                 alerts: Alerts | None = None, request_log: RequestLog | None = None,
                 monitor: Monitor | None = None) -> Daemon:
    """The daemon the configuration describes, around an already started service.

    Raises StoreError or CookieError when the state files cannot be used.
    """
    settings = LdapSettings.from_config(config)
    wanted = service.attributes()
    if wanted is not None:
        # The one place the allow-list applies: what is not read is neither
        # passed to a hook nor kept in the store.
        settings = dataclasses.replace(settings, attributes=tuple(wanted))
        log.debug("reading these attributes of each entry: %s", ", ".join(wanted))
    db, svc = config.database, config.daemon
    directory = Directory(settings, dry_run=dry_run)
    store = Store(config.store_file, dry_run=dry_run)
    store.open()
    owners = Owners(svc.claim_lease, clock, host=svc.node_name or None)
    stop_event = stop_event or threading.Event()
    locks = EntryLocks(svc.entry_lock_dir, stopping=stop_event, dry_run=dry_run)
    locks.prepare()
    confirmer = Confirmer(Peers(settings), svc.claim_confirm_wait, db.subtree)
    router = Router(modus=svc.modus, base=db.subtree, store=store, service=service,
                    owners=owners, selfcare=Selfcare(directory, service, owners, clock, confirmer, locks),
                    ldap_mode=LdapMode(service), removals=Removals(service), clock=clock,
                    alerts=alerts, request_log=request_log, locks=locks)
    monitor = monitor or Monitor(base=db.subtree)
    brake = Brake(BrakeSettings.from_config(config))
    position = Position(store, CookieFile(db.cookie_file, dry_run=dry_run), db.default_cookie)
    return Daemon(directory=directory,
                  stream=SyncStream(settings, db.subtree, db.search_filter),
                  position=position,
                  store=store, router=router,
                  executor=monitor.executor(executor(svc.workers or os.cpu_count() or 1)),
                  startup=config.startup_retry, operation=config.operation_retry, base=db.subtree, clock=clock,
                  stop_event=stop_event, once=once, monitor=monitor, poll_interval=monitor.poll_interval(0.5),
                  mirror=Mirror.of(db.subtree, db.search_filter), brake=brake,
                  transport=service.ctx.transport,
                  failback=Failback(settings, db.subtree, db.failback_interval, lambda: position.current))


def serve(config: Config, service: Service, *, dry_run: bool, once: bool = False,
          stop_event: threading.Event | None = None, readiness: detach.Readiness | None = None,
          debug: bool = False) -> int:
    """Run the daemon until a signal stops it, LDAP or the gateway stays out of reach, or (``once``) the
    refresh ends."""
    readiness = readiness or detach.Readiness()
    alerts, request_log = _alerts(config, dry_run, debug)
    monitor = monitor_from_config(config, dry_run=dry_run, version=__version__)
    try:
        daemon = build_daemon(config, service, dry_run=dry_run, once=once, stop_event=stop_event,
                              alerts=alerts, request_log=request_log, monitor=monitor)
    except (StoreError, CookieError, UnsafeFile) as err:
        log.error("%s", err)
        print(f"provisioning-daemon: {err}", file=sys.stderr)
        monitor.close()
        _close_alerts(alerts)
        return ExitCode.CONFIG_ERROR
    daemon.on_reload = Reloader(config, debug=debug, alerts=alerts, dry_run=dry_run)
    # The handlers only set flags; the main loop stops, or reloads (SIGHUP).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: daemon.request_stop(signal.Signals(number).name))
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    monitor.start()
    audits = _audits(config, alerts, monitor, dry_run)
    # Now, not at the first command: the guard's Python start-up (about 0.1 s)
    # would otherwise be added to the first request's time.
    GUARD.start()
    # Here, not in provisioning_start: --check runs that too, and --daemon has detached by now.
    service.serving()
    log.info("starting %s/%s provisioning daemon %s (pid %d, MODUS %s)%s%s", config.service_name,
             config.type_name, __version__, os.getpid(), config.daemon.modus,
             " in dry-run mode: no lock, no cookie, nothing changes" if dry_run else "",
             "; stopping after the first refresh (--once)" if once else "")
    try:
        daemon.start()
        readiness.report(ExitCode.OK)
        daemon.run()
    except (BindRefused, SubtreeMissing, CookieError) as err:
        log.error("%s; stopping", err)
        return ExitCode.CONFIG_ERROR
    except DirectoryUnavailable as err:
        log.error("giving up: %s", err)
        if alerts is not None:
            alerts.warning("the daemon gave up: LDAP out of reach", f"giving up: {err}")
        return ExitCode.LDAP_UNREACHABLE
    except HostUnreachable as err:
        log.error("giving up: %s; the requests in hand stay claimed without an outcome (or open) and are "
                  "resumed at the next start", err)
        if alerts is not None:
            alerts.warning("the daemon gave up: the gateway out of reach", f"giving up: {err}")
        return ExitCode.GATEWAY_UNREACHABLE
    finally:
        if audits is not None:
            audits.stop()
        daemon.shutdown()
        monitor.close()
        _close_alerts(alerts)
    log.info("stopped %s/%s provisioning daemon", config.service_name, config.type_name)
    return ExitCode.OK


def _audits(config: Config, alerts: Alerts | None, monitor: Monitor, dry_run: bool) -> AuditJob | None:
    """The daemon's own audit every [Service] AUDIT_INTERVAL seconds (none in a dry-run, or at 0)."""
    if dry_run or not config.daemon.audit_interval:
        return None
    job = AuditJob(config, config.daemon.audit_interval, alerts=alerts)
    monitor.metrics.audit(lambda: job.figures)
    job.start()
    return job


def _alerts(config: Config, dry_run: bool, debug: bool) -> tuple[Alerts | None, RequestLog | None]:
    """[Mail] alerts and the capture of each request's log lines for them (none in dry-run)."""
    if dry_run:
        return None, None
    alerts = alerts_from_config(config, host=socket.gethostname())
    if alerts is None:
        return None, None
    log.info("%s", describe_settings(alerts.settings))
    request_log = RequestLog()
    install_handler(request_log, STREAM_FORMAT, startup.level_flags(config, debug=debug))
    return alerts, request_log


def _close_alerts(alerts: Alerts | None) -> None:
    """Send what waits (within a few seconds: systemd's stop timeout is near), say what is lost."""
    if alerts is not None:
        alerts.close(ALERTS_CLOSE_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
