"""provisioning-daemon: command line, start-up checks, exit codes.

Options keep the original daemon's short letters so existing init scripts
work: -c config, -g global config, -r dry-run, -d debug, -t check, -h help.
Exit codes are listed in provisioning.codes.ExitCode and in the README.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import pluggy

from provisioning import __version__, plugins
from provisioning.backend.cookie import CookieError, CookieFile, Position
from provisioning.backend.ldap import (
    BindRefused, Directory, DirectoryError, DirectoryUnavailable, LdapSettings, SubtreeMissing, SyncStream,
)
from provisioning.backend.store import Store, StoreError
from provisioning.claims import Owners
from provisioning.clock import Clock
from provisioning.codes import ExitCode
from provisioning.config import (
    Config, ConfigError, find_global_config, global_config_candidates, load, read_service_identity,
    unknown_keys,
)
from provisioning.daemon import Daemon, Retry, with_retries
from provisioning.files import UnsafeFile
from provisioning.lock import AlreadyLocked, PidLock
from provisioning.ldapmode import LdapMode
from provisioning.log import STREAM_FORMAT, LevelFlags
from provisioning.log import install as install_handler
from provisioning.log import setup as setup_logging
from provisioning.mail import Alerts, RequestLog, alerts_from_config, describe_settings, mail_problems
from provisioning.protocol import Selfcare
from provisioning.removals import Removals
from provisioning.router import Router
from provisioning.service import Service, ServiceContext
from provisioning.transport import build as build_transport
from provisioning.workers import executor

log = logging.getLogger("provisioning")

# Seconds the mail alerts get at shutdown to send what waits.
ALERTS_CLOSE_TIMEOUT = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="provisioning-daemon",
        description="Keep this host in line with the provisioning requests in an OpenLDAP directory.",
        epilog="Exit codes: " + ", ".join(f"{c.value} {c.name.lower().replace('_', ' ')}" for c in ExitCode))
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="service configuration, e.g. etc/Provisioning/Backup/Rsnapshot.conf")
    parser.add_argument("-g", "--global-config", metavar="FILE",
                        help="Global.conf (default: the first of %s)"
                        % ", ".join(str(p) for p in global_config_candidates()))
    parser.add_argument("-r", "--dry-run", action="store_true",
                        help="show every command, file write and LDAP write instead of doing it")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="log debug messages and echo everything to stdout")
    parser.add_argument("-t", "--check", action="store_true",
                        help="check configuration, plugin and LDAP connection, then exit")
    parser.add_argument("--daemon", action="store_true",
                        help="detach from the terminal (not needed under systemd)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, manager = load_configuration(Path(args.config), args.global_config)
    except ConfigError as err:
        for problem in err.problems:
            print(f"provisioning-daemon: {problem}", file=sys.stderr)
        print(f"provisioning-daemon: {len(err.problems)} configuration problem(s); nothing started",
              file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    configure_logging(config, args)
    try:
        return _run(config, manager, args)
    except Exception:  # noqa: BLE001 - the last line of defence: say what happened
        log.exception("unexpected error; stopping")
        return ExitCode.INTERNAL_ERROR


def configure_logging(config: Config, args: argparse.Namespace) -> None:
    setup_logging(config.syslog_ident, _flags(config, args.debug), to_stdout=args.debug)


def _run(config: Config, manager: pluggy.PluginManager, args: argparse.Namespace) -> int:
    log.debug("configuration %s, Global.conf %s", config.path, config.global_path or "(none found: built-in defaults)")
    for warning in unknown_keys(config):
        log.warning("%s", warning)
    if config.path.stat().st_mode & 0o004:
        log.warning("%s can be read by every user of this host and holds ADMIN_PASSWORD: chmod o-r it",
                    config.path)
    # Set when a stop is asked for: a command that ends because of it is not
    # the request's failure (the request is resumed at the next start).
    stop_event = threading.Event()
    transport = build_transport(config.service["Service"]["TRANSPORTAPI"],
                                timeout=config.service["Service"]["COMMAND_TIMEOUT"],
                                gateway=config.section("Gateway"), dry_run=args.dry_run,
                                stopping=stop_event)
    service = Service(manager, ServiceContext(config, transport, dry_run=args.dry_run))
    problems = service.start()
    if problems:
        for problem in problems:
            log.error("%s", problem)
            print(f"provisioning-daemon: {problem}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        if args.check:
            return check(config)
        if args.daemon:
            _detach(config, args)
        try:
            with PidLock(config.lock_file):
                return serve(config, service, dry_run=args.dry_run, stop_event=stop_event, debug=args.debug)
        except AlreadyLocked as err:
            log.error("%s/%s daemon already running: %s", config.service_name, config.type_name, err)
            return ExitCode.ALREADY_RUNNING
        except UnsafeFile as err:   # the lock or the cookie: a link, another user's, writable by others
            log.error("%s", err)
            return ExitCode.CONFIG_ERROR
    finally:
        service.stop()


def load_configuration(path: Path, global_arg: str | None) -> tuple[Config, pluggy.PluginManager]:
    """Validate both files with the plugin's spec; every problem in one ConfigError."""
    problems: list[str] = []
    manager = None
    spec = ""
    service, type_ = read_service_identity(path)
    if service and type_:
        try:
            manager = plugins.load(service, type_)
            spec = "\n".join(s for s in manager.hook.provisioning_config_spec() if s)
        except plugins.PluginError as err:
            problems.append(f"{path}: [Service] SERVICE/TYPE: {err}")
    try:
        config = load(path, find_global_config(global_arg), spec)
    except ConfigError as err:
        raise ConfigError(err.problems + problems) from None
    problems += _core_checks(config)
    if problems:
        raise ConfigError(problems)
    return config, manager


def _core_checks(config: Config) -> list[str]:
    """What the specs cannot say: values that depend on each other or on the host."""
    problems = []
    where = config.path
    service = config.service["Service"]
    if service["CLAIM_LEASE"] <= service["COMMAND_TIMEOUT"]:
        problems.append(f"{where}: [Service] CLAIM_LEASE: {service['CLAIM_LEASE']:g} s must be longer than "
                        f"COMMAND_TIMEOUT ({service['COMMAND_TIMEOUT']:g} s): another daemon would take over "
                        f"a request while its command may still run")
    if config.service["Service"]["TRANSPORTAPI"] == "CLISSH" and not config.service["Gateway"]["USER"]:
        problems.append(f"{where}: [Gateway] USER: missing (required with TRANSPORTAPI = CLISSH)")
    for key, path in (("[Database] COOKIE_FILE", Path(config.service["Database"]["COOKIE_FILE"])),
                      ("[Database] STORE_FILE", config.store_file),
                      ("[Service] LOCK_FILE", config.lock_file)):
        if not path.parent.is_dir():
            problems.append(f"{where}: {key}: folder {path.parent} does not exist")
    problems += mail_problems(config)
    ca_file = config.service["Database"]["CA_FILE"]
    if ca_file and not os.path.isfile(ca_file):
        problems.append(f"{where}: [Database] CA_FILE: {ca_file} does not exist")
    return problems


def _retries(config: Config) -> tuple[Retry, Retry]:
    g = config.global_
    return (Retry(g["Global"]["ATTEMPTS"], g["Global"]["SLEEP"]),
            Retry(g["Operation Mode"]["ATTEMPTS"], g["Operation Mode"]["SLEEP"]))


def check(config: Config) -> int:
    """--check / -t: reach LDAP, bind, find SERVICE_SUBTREE; say what was found."""
    settings = LdapSettings.from_config(config)
    directory = Directory(settings)
    base = config.service["Database"]["SERVICE_SUBTREE"]
    startup, _ = _retries(config)
    try:
        with_retries(directory.open, startup)
        if directory.read(base, ["1.1"]) is None:
            raise SubtreeMissing(f"SERVICE_SUBTREE {base} does not exist")
    except (BindRefused, SubtreeMissing) as err:
        log.error("check failed: %s", err)
        return ExitCode.CONFIG_ERROR
    except (DirectoryUnavailable, DirectoryError) as err:
        log.error("check failed: %s", err)
        return ExitCode.LDAP_UNREACHABLE
    finally:
        directory.close()
    message = (f"check passed: {config.path} is valid, plugin {config.service_name}/{config.type_name} "
               f"is ready, {directory.uri} accepts {settings.bind_dn}, {base} exists")
    log.info("%s", message)
    print(message)
    return ExitCode.OK


def build_daemon(config: Config, service: Service, *, dry_run: bool = False,
                 clock: Clock | None = None, stop_event: threading.Event | None = None,
                 alerts: Alerts | None = None, request_log: RequestLog | None = None) -> Daemon:
    """The daemon the configuration describes, around an already started service.

    Raises StoreError or CookieError when the state files cannot be used.
    """
    settings = LdapSettings.from_config(config)
    db, svc = config.service["Database"], config.service["Service"]
    directory = Directory(settings, dry_run=dry_run)
    store = Store(config.store_file, dry_run=dry_run)
    store.open()
    owners = Owners(svc["CLAIM_LEASE"], clock)
    router = Router(modus=svc["MODUS"], base=db["SERVICE_SUBTREE"], store=store, service=service,
                    owners=owners, selfcare=Selfcare(directory, service, owners, clock),
                    ldap_mode=LdapMode(service), removals=Removals(service), clock=clock,
                    alerts=alerts, request_log=request_log)
    startup, operation = _retries(config)
    return Daemon(directory=directory,
                  stream=SyncStream(settings, db["SERVICE_SUBTREE"], db["SEARCH_FILTER"]),
                  position=Position(store, CookieFile(db["COOKIE_FILE"], dry_run=dry_run), db["DEFAULT_COOKIE"]),
                  store=store, router=router, executor=executor(svc["WORKERS"]),
                  startup=startup, operation=operation, base=db["SERVICE_SUBTREE"], clock=clock,
                  stop_event=stop_event)


def serve(config: Config, service: Service, *, dry_run: bool,
          stop_event: threading.Event | None = None, debug: bool = False) -> int:
    """Run the daemon until a signal stops it or LDAP stays out of reach."""
    alerts, request_log = _alerts(config, dry_run, debug)
    try:
        daemon = build_daemon(config, service, dry_run=dry_run, stop_event=stop_event,
                              alerts=alerts, request_log=request_log)
    except (StoreError, CookieError) as err:
        log.error("%s", err)
        print(f"provisioning-daemon: {err}", file=sys.stderr)
        _close_alerts(alerts)
        return ExitCode.CONFIG_ERROR
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: daemon.request_stop())
    log.info("starting %s/%s provisioning daemon %s (pid %d, MODUS %s)%s", config.service_name,
             config.type_name, __version__, os.getpid(), config.service["Service"]["MODUS"],
             " in dry-run mode" if dry_run else "")
    try:
        daemon.start()
        daemon.run()
    except (BindRefused, SubtreeMissing, CookieError) as err:
        log.error("%s; stopping", err)
        return ExitCode.CONFIG_ERROR
    except DirectoryUnavailable as err:
        log.error("giving up: %s", err)
        if alerts is not None:
            alerts.warning("the daemon gave up: LDAP out of reach", f"giving up: {err}")
        return ExitCode.LDAP_UNREACHABLE
    finally:
        daemon.shutdown()
        _close_alerts(alerts)
    log.info("stopped %s/%s provisioning daemon", config.service_name, config.type_name)
    return ExitCode.OK


def _alerts(config: Config, dry_run: bool, debug: bool) -> tuple[Alerts | None, RequestLog | None]:
    """[Mail] alerts and the capture of each request's log lines for them (none in dry-run)."""
    if dry_run:
        return None, None
    alerts = alerts_from_config(config, host=socket.gethostname())
    if alerts is None:
        return None, None
    log.info("%s", describe_settings(alerts.settings))
    request_log = RequestLog()
    install_handler(request_log, STREAM_FORMAT, _flags(config, debug))
    return alerts, request_log


def _flags(config: Config, debug: bool = False) -> LevelFlags:
    """Which levels are logged: the LOG_* flags (service file over Global.conf), -d adds debug."""
    return LevelFlags(debug=config.log_flag("LOG_DEBUG") or debug, info=config.log_flag("LOG_INFO"),
                      warning=config.log_flag("LOG_WARNING"), error=config.log_flag("LOG_ERR"))


def _close_alerts(alerts: Alerts | None) -> None:
    """Send what waits (within a few seconds: systemd's stop timeout is near), say what is lost."""
    if alerts is not None:
        alerts.close(ALERTS_CLOSE_TIMEOUT)


def _detach(config: Config, args: argparse.Namespace) -> None:
    """Become a daemon (python-daemon), then set logging up again in the child."""
    import daemon as python_daemon  # only needed here

    # detach_process is left to python-daemon: it does not fork under systemd
    # or inetd, where detaching would hide the process from its supervisor.
    context = python_daemon.DaemonContext(working_directory="/", umask=0o022)
    context.open()
    configure_logging(config, args)


if __name__ == "__main__":
    sys.exit(main())
