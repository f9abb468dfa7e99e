"""The configuration as typed settings: each section one object, built once from the validated files.

The configspecs (provisioning/config/specs) are the one place where a key,
its check and its default are written; this module turns what configobj
validated into frozen dataclasses, so the rest of the code reads
``settings.service.command_timeout`` instead of ``conf["Service"]["COMMAND_TIMEOUT"]``
and no default is written twice. A plugin's own section stays a plain mapping
(ServiceContext.section), checked by the plugin's own spec.

What SIGHUP may change is declared in the specs themselves, next to the key
(``reload=True`` in its check; see loader.reloadable).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from provisioning.base.secret import Secret


@dataclass(frozen=True)
class Retry:
    """How often to try reaching LDAP or the gateway (0: for ever), and how long to wait in between."""

    attempts: int
    sleep: float


@dataclass(frozen=True)
class LogLevels:
    """[Global] LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR (the service file's, else Global.conf's)."""

    debug: bool
    info: bool
    warning: bool
    error: bool


@dataclass(frozen=True)
class Database:
    """[Database] of the service configuration."""

    servers: tuple[str, ...]          # SERVER, PORT filled in where a URI names none
    bind_dn: str
    password: Secret = field(repr=False)
    subtree: str = ""
    cookie_file: Path = Path()
    store_file: Path = Path()         # STORE_FILE, or COOKIE_FILE.sqlite
    default_cookie: str = "rid=001,csn="
    search_filter: str = ""
    ca_file: str = ""
    start_tls: bool = False
    timeout: float = 30.0
    failback_interval: float = 5.0    # seconds between looks for an earlier provider of SERVER


@dataclass(frozen=True)
class Brake:
    """[Service] DELETION_BRAKE_PERCENT, _COUNT, _WINDOW (see provisioning.engine.brake)."""

    percent: float = 10.0
    count: int = 5
    window: float = 10.0


@dataclass(frozen=True)
class Daemon:
    """[Service] of the service configuration: how this daemon works."""

    modus: str
    transport: str                    # TRANSPORTAPI: LocalCLI or CLISSH
    service: str
    type: str
    syslog_ident: str                 # SYSLOG, or SERVICE-TYPE
    lock_file: Path
    log_file: Path
    entry_lock_dir: Path              # ENTRY_LOCK_DIR, or SERVICE-TYPE.locks beside COOKIE_FILE
    command_timeout: float
    claim_lease: float
    claim_confirm_wait: float
    node_name: str
    workers: int
    brake: Brake
    metrics_port: int
    metrics_address: str
    audit_interval: float = 0.0       # AUDIT_INTERVAL: seconds between the daemon's audits (0: none)


@dataclass(frozen=True)
class Gateway:
    """[Gateway]: where CLISSH runs commands."""

    host: str
    user: str
    key_file: str                     # DSA_FILE
    port: int
    known_hosts: str
    sessions: int


def levels(service: Mapping[str, Any], global_: Mapping[str, Any]) -> LogLevels:
    """LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR: the service file wins over Global.conf."""
    def level(key: str) -> bool:
        value = service["Global"][key]
        return global_["Global"][key] if value is None else value
    return LogLevels(level("LOG_DEBUG"), level("LOG_INFO"), level("LOG_WARNING"), level("LOG_ERR"))


def database(section: Mapping[str, Any]) -> Database:
    """[Database], typed; STORE_FILE defaults to COOKIE_FILE.sqlite."""
    cookie = Path(section["COOKIE_FILE"])
    return Database(
        servers=tuple(with_port(uri, section["PORT"]) for uri in section["SERVER"]), bind_dn=section["ADMIN_USER"],
        password=section["ADMIN_PASSWORD"], subtree=section["SERVICE_SUBTREE"], cookie_file=cookie,
        store_file=Path(section["STORE_FILE"]) if section["STORE_FILE"] else Path(f"{cookie}.sqlite"),
        default_cookie=section["DEFAULT_COOKIE"], search_filter=section["SEARCH_FILTER"],
        ca_file=section["CA_FILE"], start_tls=section["START_TLS"], timeout=section["TIMEOUT"],
        failback_interval=section["FAILBACK_INTERVAL"])


def daemon(section: Mapping[str, Any], cookie_file: Path) -> Daemon:
    """[Service], typed; LOCK_FILE and LOG_FILE default to COOKIE_FILE.lock and .log."""
    return Daemon(
        modus=section["MODUS"], transport=section["TRANSPORTAPI"], service=section["SERVICE"],
        type=section["TYPE"], syslog_ident=section["SYSLOG"] or f"{section['SERVICE']}-{section['TYPE']}",
        lock_file=Path(section["LOCK_FILE"]) if section["LOCK_FILE"] else Path(f"{cookie_file}.lock"),
        log_file=Path(section["LOG_FILE"]) if section["LOG_FILE"] else Path(f"{cookie_file}.log"),
        entry_lock_dir=Path(section["ENTRY_LOCK_DIR"]) if section["ENTRY_LOCK_DIR"] else
        cookie_file.parent / f"{section['SERVICE']}-{section['TYPE']}.locks",
        command_timeout=section["COMMAND_TIMEOUT"], claim_lease=section["CLAIM_LEASE"],
        claim_confirm_wait=section["CLAIM_CONFIRM_WAIT"],
        node_name=section["NODE_NAME"], workers=section["WORKERS"],
        brake=Brake(section["DELETION_BRAKE_PERCENT"], section["DELETION_BRAKE_COUNT"],
                    section["DELETION_BRAKE_WINDOW"]),
        metrics_port=section["METRICS_PORT"], metrics_address=section["METRICS_ADDRESS"],
        audit_interval=section["AUDIT_INTERVAL"])


def gateway(section: Mapping[str, Any]) -> Gateway:
    """[Gateway], typed."""
    return Gateway(host=section["HOST"], user=section["USER"], key_file=section["DSA_FILE"], port=section["PORT"],
                   known_hosts=section["KNOWN_HOSTS"], sessions=section["SESSIONS"])


def retry(section: Mapping[str, Any]) -> Retry:
    """SLEEP and ATTEMPTS of Global.conf's [Global] (start-up) or [Operation Mode] (after a loss)."""
    return Retry(section["ATTEMPTS"], section["SLEEP"])


def with_port(uri: str, port: int | None) -> str:
    """Add PORT to an ldap:// or ldaps:// URI that names none."""
    match = re.match(r"^(ldaps?://)([^/]*)(.*)$", uri, re.IGNORECASE)
    if not match or port is None:
        return uri
    scheme, hostport, rest = match.groups()
    has_port = "]:" in hostport if hostport.startswith("[") else ":" in hostport
    if has_port or not hostport:
        return uri
    return f"{scheme}{hostport}:{port}{rest}"
