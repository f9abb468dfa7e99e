"""The configuration as typed settings: each section one object, built once from the validated files.

The configspecs (provisioning/config/specs) are the one place where a key,
its check and its default are written; this module turns what configobj
validated into frozen dataclasses, so the rest of the code reads
``settings.service.command_timeout`` instead of ``conf["Service"]["COMMAND_TIMEOUT"]``
and no default is written twice. A plugin's own section stays a plain mapping
(ServiceContext.section), checked by the plugin's own spec.

What SIGHUP may change is declared in the specs themselves, next to the key
(``reload=True`` in its check, see loader._validator); reload_keys() reads it.
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
    command_timeout: float
    claim_lease: float
    node_name: str
    workers: int
    brake: Brake
    metrics_port: int
    metrics_address: str


@dataclass(frozen=True)
class Gateway:
    """[Gateway]: where CLISSH runs commands."""

    host: str
    user: str
    key_file: str                     # DSA_FILE
    port: int
    known_hosts: str
    sessions: int


@dataclass(frozen=True)
class Mail:
    """[Mail] of Global.conf."""

    sendto: tuple[str, ...] = ()
    host: str = ""
    port: int = 587
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""), repr=False)
    fromname: str = "Provisioning daemon"
    ca_dir: str = "/etc/ssl/certs"
    ssl: str = "starttls"
    auth_method: str = "LOGIN"
    want_info_mail: bool = True


@dataclass(frozen=True)
class Settings:
    """Everything the core reads of both files, typed."""

    environment: str
    levels: LogLevels
    database: Database
    daemon: Daemon
    gateway: Gateway
    startup: Retry                    # Global.conf [Global] SLEEP, ATTEMPTS
    operation: Retry                  # Global.conf [Operation Mode] SLEEP, ATTEMPTS
    mail: Mail


def build(service: Mapping[str, Any], global_: Mapping[str, Any]) -> Settings:
    """The typed settings of a validated service configuration and Global.conf."""
    db, svc, gw, g = service["Database"], service["Service"], service["Gateway"], global_["Global"]
    cookie = Path(db["COOKIE_FILE"])
    return Settings(
        environment=service["Global"]["ENVIRONMENT"],
        levels=LogLevels(*(_level(service, global_, key) for key in ("LOG_DEBUG", "LOG_INFO", "LOG_WARNING",
                                                                     "LOG_ERR"))),
        database=Database(
            servers=tuple(with_port(uri, db["PORT"]) for uri in db["SERVER"]), bind_dn=db["ADMIN_USER"],
            password=db["ADMIN_PASSWORD"], subtree=db["SERVICE_SUBTREE"], cookie_file=cookie,
            store_file=Path(db["STORE_FILE"]) if db["STORE_FILE"] else Path(f"{cookie}.sqlite"),
            default_cookie=db["DEFAULT_COOKIE"], search_filter=db["SEARCH_FILTER"], ca_file=db["CA_FILE"],
            start_tls=db["START_TLS"], timeout=db["TIMEOUT"]),
        daemon=Daemon(
            modus=svc["MODUS"], transport=svc["TRANSPORTAPI"], service=svc["SERVICE"], type=svc["TYPE"],
            syslog_ident=svc["SYSLOG"] or f"{svc['SERVICE']}-{svc['TYPE']}",
            lock_file=Path(svc["LOCK_FILE"]) if svc["LOCK_FILE"] else Path(f"{cookie}.lock"),
            log_file=Path(svc["LOG_FILE"]) if svc["LOG_FILE"] else Path(f"{cookie}.log"),
            command_timeout=svc["COMMAND_TIMEOUT"], claim_lease=svc["CLAIM_LEASE"],
            node_name=svc["NODE_NAME"], workers=svc["WORKERS"],
            brake=Brake(svc["DELETION_BRAKE_PERCENT"], svc["DELETION_BRAKE_COUNT"], svc["DELETION_BRAKE_WINDOW"]),
            metrics_port=svc["METRICS_PORT"], metrics_address=svc["METRICS_ADDRESS"]),
        gateway=Gateway(host=gw["HOST"], user=gw["USER"], key_file=gw["DSA_FILE"], port=gw["PORT"],
                        known_hosts=gw["KNOWN_HOSTS"], sessions=gw["SESSIONS"]),
        startup=Retry(g["ATTEMPTS"], g["SLEEP"]),
        operation=Retry(global_["Operation Mode"]["ATTEMPTS"], global_["Operation Mode"]["SLEEP"]),
        mail=mail(global_["Mail"]))


def mail(section: Mapping[str, Any]) -> Mail:
    """[Mail] of Global.conf, typed (SENDTO split at commas and blanks)."""
    return Mail(sendto=tuple(a for a in re.split(r"[\s,]+", section["SENDTO"]) if a), host=section["HOST"],
                port=section["PORT"], username=section["USERNAME"], password=section["PASSWORD"],
                fromname=section["FROMNAME"], ca_dir=section["CA_DIR"], ssl=section["SSL"],
                auth_method=section["AUTH_METHOD"], want_info_mail=section["WANTINFOMAIL"])


def _level(service: Mapping[str, Any], global_: Mapping[str, Any], key: str) -> bool:
    """LOG_*: the service file wins over Global.conf."""
    value = service["Global"][key]
    return global_["Global"][key] if value is None else value


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
