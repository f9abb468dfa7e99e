"""provisioning-daemon --check (-t): one line per check, and an exit code for ExecStartPre.

Every check runs in one go, so one run shows every problem: the
configuration (both files, unknown keys and sections), the plugin (loaded,
its start-up checks, its own ``provisioning_check`` lines), each LDAP server
(reachable, TLS verified, bind accepted, sync control offered), the
SERVICE_SUBTREE, and the daemon's state folders. A check that needs what an
earlier one found broken is left out and says so.

Each line is ``OK``, ``WARN`` (cannot be decided here, or works but unwise)
or ``FAIL``; the exit code is 0 when nothing FAILs.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator

import ldap
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncRequestControl
from ldapurl import LDAPUrl

from provisioning.config.settings import Gateway
from provisioning.runtime import factory, startup
from provisioning.backend.cookie import CookieError, CookieFile
from provisioning.backend.ldap import LdapSettings, _configure, _tls_hint, describe
from provisioning.backend.store import Store, StoreError
from provisioning.base.checkline import CheckLine, Status, normalise
from provisioning.base.codes import ExitCode
from provisioning.config.loader import Config, unknown_keys
from provisioning.base.files import UnsafeFile, check_private
from provisioning.base.log import STREAM_FORMAT, SYSLOG_SOCKET
from provisioning.base.log import install as install_handler
from provisioning.base.log import setup as setup_logging
from provisioning.hooks.service import Service
from provisioning.transport import Transport, Unreachable

SYNC_CONTROL = "1.3.6.1.4.1.4203.1.9.1.1"
# What the gateway's sshd is asked for its MaxSessions (-T: the effective settings; needs root there).
SSHD = "/usr/sbin/sshd"
# Free space a state folder needs at least (the store grows with the subtree).
MIN_FREE_BYTES = 1024 * 1024
DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}
DEFAULT_LDAPI = "/var/run/slapd/ldapi"
# What a gateway line says of a gateway that does not answer (exit code 7 when only those fail).
AWAY = "out of reach"


class Report:
    """Prints each line as it comes (checks can be slow) and keeps the tally."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.lines: list[CheckLine] = []
        self.unreachable = False        # every LDAP server out of reach: exit 4, as the daemon would

    def add(self, *lines: CheckLine) -> None:
        for line in lines:
            self.lines.append(line)
            self.out(str(line))

    def count(self, status: Status) -> int:
        return sum(1 for line in self.lines if line.status is status)

    def exit_code(self) -> int:
        failed = [line for line in self.lines if line.status is Status.FAIL]
        if not failed:
            return ExitCode.OK
        if self.unreachable and all(line.name.startswith("LDAP") for line in failed):
            return ExitCode.LDAP_UNREACHABLE
        if all(line.name == "gateway" and f": {AWAY}: " in line.detail for line in failed):
            return ExitCode.GATEWAY_UNREACHABLE      # as the daemon would, once its attempts are spent
        return ExitCode.CONFIG_ERROR

    def summary(self) -> str:
        fails, warns, oks = self.count(Status.FAIL), self.count(Status.WARN), self.count(Status.OK)
        config = sum(1 for line in self.lines if line.status is Status.FAIL and line.name == "configuration")
        detail = f" ({config} configuration problem(s))" if config else ""
        verdict = "check failed" if fails else "check passed"
        return f"{verdict}: {fails} FAIL{detail}, {warns} WARN, {oks} OK"


def main(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run every check for the configuration ``args`` names; the exit code."""
    report = Report(out)
    loaded = startup.load(Path(args.config), args.global_config)
    config = loaded.config
    report.add(*configuration_lines(loaded))
    if loaded.valid:
        _log_beside_the_lines(config, debug=args.debug)
    report.add(*plugin_lines(loaded))
    if _usable(config, "Database"):
        report.add(*ldap_lines(config, report))
    else:
        report.add(CheckLine.warn("LDAP", "not checked: [Database] has problems (above)"))
    if _usable(config, "Database", "Service"):
        report.add(*state_lines(config))
    out(report.summary())
    return report.exit_code()


def _log_beside_the_lines(config: Config, *, debug: bool) -> None:
    """The check lines are -t's output (stdout): log records land between them only when they are
    problems, and never on stdout. The plugin's INFO lines and LOG_DEBUG wait for -d (on stderr)."""
    flags = startup.level_flags(config, debug=debug)
    if not debug:
        flags = dataclasses.replace(flags, debug=False, info=False)
    setup_logging(config.syslog_ident, flags, to_stdout=False)
    if debug and not any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
                         for h in logging.getLogger().handlers):
        install_handler(logging.StreamHandler(sys.stderr), STREAM_FORMAT, flags)


def _usable(config: Config, *sections: str) -> bool:
    return not ({"*", *sections} & config.invalid_sections)


# --------------------------------------------------------------- configuration

def configuration_lines(loaded: startup.Loaded) -> list[CheckLine]:
    config = loaded.config
    problems = [p for p in loaded.problems if "[Service] SERVICE/TYPE:" not in p]
    if "*" not in config.invalid_sections:
        problems += unknown_keys(config) if loaded.manager is not None else []
        problems += startup.core_checks(config, folders=False)
    lines = [CheckLine.fail("configuration", problem) for problem in problems]
    if not lines:
        where = (f"Global.conf {config.global_path}" if config.global_path
                 else "no Global.conf found (built-in defaults)")
        lines.append(CheckLine.ok("configuration", f"{config.path} is valid; {where}"))
    readable = _world_readable(config.path)
    if readable:
        lines.append(CheckLine.warn("configuration", readable))
    return lines


def _world_readable(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if mode & stat.S_IROTH:
        return f"{path} can be read by every user of this host and holds ADMIN_PASSWORD: chmod o-r it"
    return ""


# --------------------------------------------------------------------- plugin

def plugin_lines(loaded: startup.Loaded) -> list[CheckLine]:
    if loaded.manager is None:
        errors = [p.split("SERVICE/TYPE: ", 1)[-1] for p in loaded.problems if "[Service] SERVICE/TYPE:" in p]
        if errors:
            return [CheckLine.fail("plugin", errors[0])]
        return [CheckLine.warn("plugin", "not loaded: [Service] SERVICE and TYPE (above) are needed to choose it")]
    lines = [CheckLine.ok("plugin", f"{loaded.plugin} loaded from {loaded.origin or 'its entry point'}")]
    if not loaded.valid:
        return lines + [CheckLine.warn(f"{loaded.plugin} checks", "not run until the configuration is valid")]
    config = loaded.config
    try:
        transport = factory.transport(config)
    except Exception as err:  # noqa: BLE001 - any failure here is what the operator must see
        return lines + [CheckLine.fail(f"{loaded.plugin} transport", str(err))]
    if transport.where is not None:
        gateway = gateway_lines(config.gateway, transport)
        lines += gateway
        if any(line.status is Status.FAIL for line in gateway):
            transport.close()
            return lines + [CheckLine.warn(f"{loaded.plugin} checks", "not run: the gateway (above) does not "
                                                                      "answer")]
    service = factory.service(loaded.manager, config, transport_=transport)
    try:
        lines += _plugin_start(loaded.plugin, service)
        lines += _plugin_checks(loaded.plugin, service)
    except Unreachable as err:                 # it went away meanwhile
        lines.append(CheckLine.fail("gateway", f"during the plugin's checks: {AWAY}: {err}"))
    service.stop()
    return lines


def gateway_lines(gateway: Gateway, transport: Transport) -> list[CheckLine]:
    """Whether the CLISSH gateway lets us in and its python3 helper answers (one file operation, timed),
    and whether [Gateway] SESSIONS stays below its sshd's MaxSessions."""
    where = f"{gateway.user + '@' if gateway.user else ''}{gateway.host} port {gateway.port}"
    started = time.monotonic()
    try:
        transport.exists("/")
    except Unreachable as err:
        reason = str(err).split(" is out of reach: ", 1)[-1]
        return [CheckLine.fail("gateway", f"{where}: {AWAY}: {reason}")]
    except OSError as err:
        return [CheckLine.fail("gateway", f"{where}: {err}")]
    took = (time.monotonic() - started) * 1000
    return [CheckLine.ok("gateway", f"{where}: ssh lets us in and the python3 helper answers ({took:.0f} ms "
                                    "with the connection's start)"),
            sessions_line(gateway.sessions, transport)]


def sessions_line(sessions: int, transport: Transport) -> CheckLine:
    """[Gateway] SESSIONS against the MaxSessions its sshd reports (``sshd -T``, which needs root there)."""
    name = "gateway SESSIONS"
    try:
        result = transport.run([SSHD, "-T"])
    except Unreachable as err:
        return CheckLine.warn(name, f"cannot ask the gateway's sshd: {err}")
    found = re.search(r"^maxsessions (\d+)$", result.stdout, re.MULTILINE) if result.ok else None
    if found is None:
        return CheckLine.warn(name, f"cannot read the gateway's MaxSessions ({result.describe()}); keep "
                                    f"SESSIONS ({sessions}) below it (Debian's default: 10)")
    most = int(found.group(1))
    if sessions < most:
        return CheckLine.ok(name, f"{sessions} helpers at most, below the gateway sshd's MaxSessions {most}")
    return CheckLine.fail(name, f"{sessions} helpers at most, but the gateway's sshd allows {most} sessions "
                                f"(MaxSessions): it would refuse the others; set SESSIONS below {most}")


def _plugin_start(name: str, service: Service) -> list[CheckLine]:
    try:
        problems = service.start()
    except Exception as err:  # noqa: BLE001 - a plugin bug is a failed check, not a traceback
        return [CheckLine.fail(f"{name} start", f"the plugin raised {type(err).__name__}: {err}")]
    if not problems:
        return [CheckLine.ok(f"{name} start", "the plugin's start-up checks pass")]
    return [CheckLine.fail(f"{name} start", problem) for problem in problems]


def _plugin_checks(name: str, service: Service) -> list[CheckLine]:
    try:
        answers = service.manager.hook.provisioning_check(ctx=service.ctx)
    except Exception as err:  # noqa: BLE001 - as above
        return [CheckLine.fail(f"{name} check", f"the plugin raised {type(err).__name__}: {err}")]
    return [line for answer in answers for line in normalise(answer or [], f"{name} check")]


# ----------------------------------------------------------------------- LDAP

def ldap_lines(config: Config, report: Report) -> list[CheckLine]:
    """Each server in SERVER, then SERVICE_SUBTREE on the first that passed everything.

    A server that fails while another passes is a WARN: the daemon fails over.
    """
    settings = LdapSettings.from_config(config)
    base = config.database.subtree
    per_server: list[tuple[list[CheckLine], SimpleLDAPObject | None]] = []
    for uri in settings.uris:
        per_server.append(_server(uri, settings, base))
    good = [conn for lines, conn in per_server if conn is not None]
    lines: list[CheckLine] = []
    for server_lines, conn in per_server:
        if good and conn is None:
            server_lines = [CheckLine.warn(l.name, f"{l.detail} (another server in SERVER answers)")
                            if l.status is Status.FAIL else l for l in server_lines]
        lines += server_lines
    report.unreachable = not any(l.name == "LDAP reachable" and l.status is Status.OK for l in lines)
    if good:
        lines.append(_subtree(good[0], base))
    for _, conn in per_server:
        if conn is not None:
            conn.unbind_s()
    return lines


def _server(uri: str, settings: LdapSettings, base: str) -> tuple[list[CheckLine], SimpleLDAPObject | None]:
    """The lines of one server, and its bound connection when every one of them passed."""
    reach = _reachable(uri, settings.timeout)
    if reach.status is Status.FAIL:
        return [reach], None
    conn = SimpleLDAPObject(uri)
    lines = [reach]
    try:
        _configure(conn, settings, uri)
        lines.append(_tls(conn, uri, settings))
        if lines[-1].status is not Status.FAIL:
            lines.append(_bind(conn, uri, settings))
        if lines[-1].status is not Status.FAIL:
            lines.append(_sync_control(conn, uri, base))
    except ldap.LDAPError as err:
        lines.append(CheckLine.fail("LDAP", f"{uri}: {describe(err)}"))
    if any(line.status is Status.FAIL for line in lines):
        try:
            conn.unbind_s()
        except ldap.LDAPError:
            pass
        return lines, None
    return lines, conn


def _reachable(uri: str, timeout: float) -> CheckLine:
    """A plain connection to the server's port (or socket): before TLS and bind."""
    name = "LDAP reachable"
    try:
        url = LDAPUrl(uri)
        if url.urlscheme == "ldapi":
            path = urllib.parse.unquote(url.hostport or "") or DEFAULT_LDAPI
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(path)
        else:
            host, port = _host_port(url)
            socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, ValueError) as err:
        return CheckLine.fail(name, f"{uri}: {err}")
    return CheckLine.ok(name, f"{uri} accepts connections")


def _host_port(url: LDAPUrl) -> tuple[str, int]:
    hostport = url.hostport or "localhost"
    default = DEFAULT_PORTS[url.urlscheme]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    host, _, port = hostport.partition(":")
    return host, int(port) if port else default


def _tls(conn: SimpleLDAPObject, uri: str, settings: LdapSettings) -> CheckLine:
    """Whether the TLS handshake with certificate verification succeeds (or why TLS is not used)."""
    name = "LDAP TLS"
    scheme = uri.split(":", 1)[0].lower()
    trusted = f"CA_FILE {settings.ca_file}" if settings.ca_file else "the system's CAs"
    if scheme == "ldapi":
        return CheckLine.ok(name, f"{uri}: not needed (local socket)")
    if scheme == "ldap" and not settings.start_tls:
        host = _host_port(LDAPUrl(uri))[0]
        if _loopback(host):
            return CheckLine.ok(name, f"{uri}: not used (loopback address)")
        return CheckLine.warn(name, f"{uri}: not used: the bind password crosses the network in clear; "
                                    f"use ldaps:// or START_TLS = 1")
    try:
        if scheme == "ldap":
            conn.start_tls_s()
        else:   # ldaps: the handshake happens on the first operation
            conn.search_ext_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
    except (ldap.CONNECT_ERROR, ldap.SERVER_DOWN, ldap.PROTOCOL_ERROR) as err:
        return CheckLine.fail(name, f"{uri}: handshake failed: {describe(err)}{_tls_hint(err, settings, uri)}")
    except ldap.LDAPError:
        pass    # the handshake is done; the server only refused the anonymous read
    return CheckLine.ok(name, f"{uri}: certificate verified against {trusted}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(conn: SimpleLDAPObject, uri: str, settings: LdapSettings) -> CheckLine:
    name = "LDAP bind"
    try:
        conn.simple_bind_s(settings.bind_dn, settings.password.reveal())
    except ldap.INVALID_CREDENTIALS as err:
        return CheckLine.fail(name, f"{uri} refused {settings.bind_dn}: {describe(err)} (ADMIN_USER, "
                                    f"ADMIN_PASSWORD)")
    except ldap.LDAPError as err:
        return CheckLine.fail(name, f"{uri}: bind as {settings.bind_dn} failed: {describe(err)}")
    return CheckLine.ok(name, f"{uri} accepts {settings.bind_dn}")


def _sync_control(conn: SimpleLDAPObject, uri: str, base: str) -> CheckLine:
    """The root DSE names the sync control, and a sync search on SERVICE_SUBTREE is accepted."""
    name = "LDAP sync control"
    try:
        found = conn.search_ext_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["supportedControl"])
    except ldap.LDAPError as err:
        return CheckLine.warn(name, f"{uri}: cannot read the root DSE: {describe(err)}")
    controls = {v.decode() for _, attrs in found for v in attrs.get("supportedControl", [])}
    if SYNC_CONTROL not in controls:
        return CheckLine.fail(name, f"{uri} does not offer the sync control {SYNC_CONTROL} (RFC 4533): "
                                    f"load the syncprov overlay on the database of SERVICE_SUBTREE")
    try:
        # A refreshOnly sync search that matches nothing: refused when the
        # database holding the subtree has no syncprov overlay.
        conn.search_ext_s(base, ldap.SCOPE_BASE, "(!(objectClass=*))", ["1.1"],
                          serverctrls=[SyncRequestControl(mode="refreshOnly")])
    except ldap.UNAVAILABLE_CRITICAL_EXTENSION as err:
        return CheckLine.fail(name, f"{uri} offers the sync control but not for {base}: {describe(err)}; "
                                    f"add the syncprov overlay to that database")
    except ldap.NO_SUCH_OBJECT:
        pass    # reported by the SERVICE_SUBTREE line
    except ldap.LDAPError as err:
        return CheckLine.warn(name, f"{uri} offers {SYNC_CONTROL}; a sync search on {base} said: "
                                    f"{describe(err)}")
    return CheckLine.ok(name, f"{uri} offers {SYNC_CONTROL} (syncprov) for {base}")


def _subtree(conn: SimpleLDAPObject, base: str) -> CheckLine:
    name = "SERVICE_SUBTREE"
    try:
        conn.search_ext_s(base, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
    except ldap.NO_SUCH_OBJECT:
        return CheckLine.fail(name, f"{base} does not exist (or the bind DN may not read it)")
    except ldap.LDAPError as err:
        return CheckLine.fail(name, f"cannot read {base}: {describe(err)}")
    return CheckLine.ok(name, f"{base} exists")


# --------------------------------------------------------------- state files

def state_lines(config: Config) -> Iterator[CheckLine]:
    """The cookie, store and lock: a safe folder that takes files, and usable files if present."""
    files = startup.state_files(config)
    # A read-only folder that holds state files went read-only under the daemon (a WARN, see _state_file).
    written = {path.parent for _, path in files if path.exists()}
    for key, path in files:
        yield _state_file(key, path, written=path.parent in written)
    explicit = config.log_file != Path(f"{config.database.cookie_file}.log")
    if not os.path.exists(SYSLOG_SOCKET) and (explicit or config.log_file.parent.is_dir()):
        yield _log_file(config.log_file)


def _state_file(key: str, path: Path, *, written: bool) -> CheckLine:
    name = key.split("] ", 1)[-1]
    if not path.parent.is_dir():
        return CheckLine.fail(name, f"folder {path.parent} does not exist")
    try:
        check_private(path)
        if key.endswith("COOKIE_FILE"):
            CookieFile(path).read()
        elif key.endswith("STORE_FILE") and path.exists():
            store = Store(path, dry_run=True)
            store.open()
            store.close()
    except (UnsafeFile, CookieError, StoreError) as err:
        return CheckLine.fail(name, str(err))
    problem = _writable_folder(path)
    if problem and (written or not _read_only(path.parent)):
        # A folder that filled up or went read-only under the daemon's state:
        # the daemon copes (docs/how-it-works.md), so this must not stop a start under ExecStartPre.
        return CheckLine.warn(name, f"{problem}; the daemon starts all the same, keeps its position in "
                                    f"memory and writes it once the folder takes it (log and mail say so)")
    if problem:
        # Read-only and never written: more likely a mistake (systemd's ReadWritePaths) than a fault.
        return CheckLine.fail(name, problem)
    state = "exists and is usable" if path.exists() else "will be created"
    return CheckLine.ok(name, f"{path} {state}; folder {path.parent} is writable")


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def _log_file(path: Path) -> CheckLine:
    problem = _writable_folder(path)
    if problem:
        return CheckLine.warn("LOG_FILE", f"{SYSLOG_SOCKET} is missing, so --daemon would log to {path}, "
                                          f"but: {problem}")
    return CheckLine.ok("LOG_FILE", f"{SYSLOG_SOCKET} is missing: --daemon logs to {path}")


def _writable_folder(path: Path) -> str:
    """Why files cannot be made next to ``path``; "" when they can. Leaves nothing behind."""
    folder = path.parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    try:
        # An unnamed file (O_TMPFILE where the filesystem has it): nothing
        # is left behind, not even after a crash.
        with tempfile.TemporaryFile(dir=folder):
            pass
        space = os.statvfs(folder)
    except OSError as err:
        return f"folder {folder} does not take files: {err.strerror}"
    if space.f_bavail * space.f_frsize < MIN_FREE_BYTES:
        return f"folder {folder} is full ({space.f_bavail * space.f_frsize} bytes free)"
    return ""
