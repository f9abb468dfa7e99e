"""Service configuration and Global.conf: read once, validated once, every error at once.

Both files are INI files in the original daemon's format, read by
provisioning.config.inifile (Config::IniFiles' rules: comments are whole lines, so a
``#`` inside a value is part of it), then handed to configobj and checked
against the configspecs in ``provisioning/configspec`` plus whatever sections
the selected plugin contributes. Values are not split at commas (DNs and
cookies contain them), not unquoted and not interpolated, as in the original.
A key checked with ``secret()`` (the passwords) becomes a
provisioning.base.secret.Secret: it shows as ``********`` wherever it goes.
"""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import ldap.dn
from configobj import ConfigObj, flatten_errors, get_extra_values
from validate import ValidateError, Validator

from provisioning.config import inifile
from provisioning.config import resources, settings
from provisioning.base.secret import Secret
from provisioning.transport.ssh import gateway_problem

GLOBAL_CONF_NAME = "Global.conf"
# The host's own, as the original's.
HOST_CONFIG_DIR = Path("/etc/Provisioning")
HOST_GLOBAL_CONF = HOST_CONFIG_DIR / GLOBAL_CONF_NAME


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Config:
    """The validated service configuration and Global.conf."""

    path: Path
    global_path: Path | None
    service: ConfigObj
    global_: ConfigObj
    # Sections of the service file with a value that did not validate (see read()).
    invalid_sections: set[str] = field(default_factory=set)

    @property
    def directory(self) -> Path:
        """Folder of the service configuration: relative paths start here."""
        return self.path.parent

    def section(self, name: str) -> dict[str, Any]:
        """A section of the service configuration as a plain dict (a plugin's own, say)."""
        return dict(self.service[name])

    # Each section typed, built once on first use (provisioning.config.settings).

    @cached_property
    def database(self) -> settings.Database:
        return settings.database(self.service["Database"])

    @cached_property
    def daemon(self) -> settings.Daemon:
        return settings.daemon(self.service["Service"], Path(self.service["Database"]["COOKIE_FILE"]))

    @cached_property
    def gateway(self) -> settings.Gateway:
        return settings.gateway(self.service["Gateway"])

    @cached_property
    def levels(self) -> settings.LogLevels:
        return settings.levels(self.service, self.global_)

    def mail_section(self) -> dict[str, Any]:
        """Global.conf's [Mail] as validated (provisioning.alerts types and checks it: MailSettings)."""
        return dict(self.global_["Mail"])

    @cached_property
    def startup_retry(self) -> settings.Retry:
        """Global.conf [Global] SLEEP and ATTEMPTS: reaching LDAP (or the gateway) at start-up."""
        return settings.retry(self.global_["Global"])

    @cached_property
    def operation_retry(self) -> settings.Retry:
        """Global.conf [Operation Mode] SLEEP and ATTEMPTS: after a lost connection."""
        return settings.retry(self.global_["Operation Mode"])

    @property
    def environment(self) -> str:
        """[Global] ENVIRONMENT: this host's name in the directory."""
        return self.service["Global"]["ENVIRONMENT"]

    @property
    def service_name(self) -> str:
        return self.daemon.service

    @property
    def type_name(self) -> str:
        return self.daemon.type

    @property
    def syslog_ident(self) -> str:
        return self.daemon.syslog_ident

    @property
    def store_file(self) -> Path:
        return self.database.store_file

    @property
    def lock_file(self) -> Path:
        return self.daemon.lock_file

    @property
    def entry_lock_dir(self) -> Path:
        """[Service] ENTRY_LOCK_DIR, or SERVICE-TYPE.locks beside COOKIE_FILE: the daemons of one host that
        keep their state files in one folder share it."""
        return self.daemon.entry_lock_dir

    @property
    def log_file(self) -> Path:
        """Where a detached daemon logs without syslog: [Service] LOG_FILE or COOKIE_FILE.log."""
        return self.daemon.log_file

    def log_flag(self, key: str) -> bool:
        """LOG_DEBUG/INFO/WARNING/ERR: the service file wins over Global.conf."""
        return getattr(self.levels, {"LOG_DEBUG": "debug", "LOG_INFO": "info", "LOG_WARNING": "warning",
                                     "LOG_ERR": "error"}[key])

    def ldap_uris(self) -> list[str]:
        """SERVER as a list of URIs, with PORT filled in where a URI has none."""
        return list(self.database.servers)


# --------------------------------------------------------------------- lookup

def global_config_candidates() -> list[Path]:
    """Where Global.conf is looked for when -g is not given, in order.

    The etc/Provisioning of the installation (the virtualenv or prefix the
    package is installed in, e.g. /opt/provisioning/etc/Provisioning: "next
    to the program", as the original), then the host's /etc/Provisioning, as
    the original, then the package's own, shipped with it (the defaults). The
    package's own comes last: it is replaced by every upgrade, so a file an
    operator edits must win over it.
    """
    return [Path(sys.prefix) / "etc/Provisioning" / GLOBAL_CONF_NAME, HOST_GLOBAL_CONF,
            resources.etc_path("Provisioning/" + GLOBAL_CONF_NAME)]


def find_global_config(explicit: str | None) -> Path | None:
    """The Global.conf to use; None means built-in defaults."""
    if explicit:
        return Path(explicit)
    return next((p for p in global_config_candidates() if p.is_file()), None)


def host_service_configs() -> list[Path]:
    """The service configurations below /etc/Provisioning: every *.conf but Global.conf."""
    return sorted(p for p in HOST_CONFIG_DIR.rglob("*.conf") if p.name != GLOBAL_CONF_NAME and p.is_file())


# ------------------------------------------------------------------- loading

def read_service_identity(path: Path) -> tuple[str | None, str | None]:
    """SERVICE and TYPE from [Service], read before validation to pick the plugin."""
    try:
        raw = _parse(path, None)
    except ConfigError:
        return None, None
    service = raw.get("Service", {})
    return service.get("SERVICE"), service.get("TYPE")


def load(path: str | Path, global_path: Path | None, plugin_spec: str = "") -> Config:
    """Read and validate both files; raise ConfigError listing every problem."""
    config, problems = read(path, global_path, plugin_spec)
    if problems:
        raise ConfigError(problems)
    return config


def read(path: str | Path, global_path: Path | None, plugin_spec: str = "") -> tuple[Config, list[str]]:
    """Read and validate both files; the configuration and every problem found.

    Unlike load() this does not stop at invalid values: --check goes on with
    what did validate (an LDAP check needs only [Database]) so that one run
    reports everything. Sections with a problem are in
    ``Config.invalid_sections`` ("Global.conf" stands for any in Global.conf).
    """
    path = Path(path).absolute()
    problems: list[str] = []
    invalid: set[str] = set()
    service = _load_one(path, _spec_text("service.spec") + "\n" + plugin_spec, problems, invalid)
    global_invalid: set[str] = set()
    if global_path is None:
        global_ = _load_one(None, _spec_text("global.spec"), problems, global_invalid)
    else:
        global_ = _load_one(Path(global_path).absolute(), _spec_text("global.spec"), problems, global_invalid)
    if global_invalid:
        invalid.add("Global.conf")
    config = Config(path, Path(global_path).absolute() if global_path else None, service, global_, invalid)
    return config, problems


def _load_one(path: Path | None, spec_text: str, problems: list[str], invalid: set[str]) -> ConfigObj:
    spec = ConfigObj(spec_text.splitlines(), list_values=False, _inspec=True)
    try:
        cfg = _parse(path, spec)
    except ConfigError as err:
        problems.extend(err.problems)
        invalid.add("*")
        return ConfigObj(configspec=spec, list_values=False, interpolation=False)
    present = set(cfg.sections)
    result = cfg.validate(_validator(), preserve_errors=True)
    label = str(path) if path else "built-in Global.conf defaults"
    found = _describe_errors(label, cfg, result, present)
    problems.extend(found)
    if result is not True:
        invalid.update(sections[0] for sections, _, _ in flatten_errors(cfg, result) if sections)
    return cfg


def _parse(path: Path | None, spec: ConfigObj | None) -> ConfigObj:
    if path is None:
        return ConfigObj(configspec=spec, list_values=False, interpolation=False)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from err
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not UTF-8 text"]) from err
    # Lines end at LF only (CR LF too), as for Config::IniFiles: other
    # characters Python counts as line breaks are part of a value. A BOM
    # some editors put first is not part of the first line.
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    try:
        sections = inifile.parse(lines)
    except inifile.IniError as err:
        raise ConfigError([f"{path}: {problem}" for problem in err.problems]) from err
    return ConfigObj(sections, configspec=spec, list_values=False, interpolation=False)


def _spec_text(name: str) -> str:
    return resources.configspec_text(name)


def _describe_errors(label: str, cfg: ConfigObj, result: Any, present: set[str]) -> list[str]:
    problems = []
    if result is True:
        return problems
    absent: dict[str, list[str]] = {}
    for sections, key, error in flatten_errors(cfg, result):
        where = "".join(f"[{s}]" for s in sections)
        if key is None:
            problems.append(f"{label}: section {where} is missing")
        elif error is False and sections and sections[0] not in present:
            absent.setdefault(sections[0], []).append(key)
        elif error is False:
            problems.append(f"{label}: {where} {key}: missing (required)")
        elif isinstance(error, Invalid):
            problems.append(f"{label}: {where} {key}: {error}{_comment_hint(cfg, sections, key)}")
        else:
            expected = _expected(_spec_of(cfg, sections, key))
            problems.append(f"{label}: {where} {key}: {str(error).rstrip('.')}{expected}"
                            f"{_comment_hint(cfg, sections, key)}")
    # A section that is not in the file at all is one problem, not one per key,
    # and a misspelt section in the file is the likely cause.
    unknown = [name for name in present if name not in (cfg.configspec or {})]
    for section, keys in absent.items():
        close = difflib.get_close_matches(section, unknown, n=1, cutoff=SIMILAR)
        hint = f"; the file has an unknown section [{close[0]}]: misspelt?" if close else ""
        problems.append(f"{label}: section [{section}] is missing (required: {', '.join(keys)}){hint}")
    return problems


def _comment_hint(cfg: ConfigObj, sections: list[str], key: str) -> str:
    """A hint when a refused value holds what may have been meant as a comment."""
    value = cfg
    for name in sections:
        value = value.get(name, {})
    if any(mark in str(value.get(key, "")) for mark in "#;"):
        return "; note: # and ; inside a value are part of it, comments are lines of their own"
    return ""


_TYPE_HINTS = {"boolean": "1 or 0 (also yes/no, true/false, on/off)",
               "integer": "a whole number", "float": "a number"}


def _spec_of(cfg: ConfigObj, sections: list[str], key: str) -> str:
    spec = cfg.configspec
    for name in sections:
        spec = spec.get(name, {}) if spec is not None else {}
    return str(spec.get(key, "")) if spec is not None else ""


def _expected(check: str) -> str:
    """" (expected ...)" for a configspec check such as integer(min=1, max=65535, default=None)."""
    name = check.split("(", 1)[0].strip()
    if name not in _TYPE_HINTS:
        return ""
    bounds = dict(re.findall(r"(min|max)\s*=\s*([-0-9.]+)", check))
    limits = "".join(f", {word} {bounds[k]}" for k, word in (("min", "at least"), ("max", "at most")) if k in bounds)
    return f" (expected {_TYPE_HINTS[name]}{limits})"


# How alike two names must be to suggest one for the other (difflib ratio).
SIMILAR = 0.75


def unknown_keys(cfg: Config) -> list[str]:
    """Keys and sections no spec knows, with a "did you mean" where a known name is close.

    Problems like any other, at a start, in --check and at SIGHUP: a misspelt
    key would otherwise silently take its default.
    """
    found = []
    for label, obj in ((cfg.path, cfg.service), (cfg.global_path or "Global.conf", cfg.global_)):
        spec = obj.configspec
        if spec is None:
            continue
        for sections, name in get_extra_values(obj):
            found.append(f"{label}: {_describe_unknown(obj, spec, list(sections), name)}")
    return found


def _describe_unknown(obj: ConfigObj, spec: ConfigObj, sections: list[str], name: str) -> str:
    where = "".join(f"[{s}]" for s in sections)
    parent_spec = spec
    parent = obj
    for section in sections:
        parent_spec = parent_spec.get(section, {})
        parent = parent[section]
    if isinstance(parent.get(name), dict):
        count = len(parent[name].scalars)
        text = f"[{name}]: unknown section (with {count} key(s))"
        close = difflib.get_close_matches(name, list(parent_spec.sections), n=1, cutoff=SIMILAR)
        return text + (f"; did you mean [{close[0]}]?" if close else "")
    text = f"{where} {name}: unknown key"
    close = difflib.get_close_matches(name, list(parent_spec.scalars), n=1, cutoff=SIMILAR)
    if close:
        return text + f"; did you mean {close[0]}?"
    elsewhere = [s for s in spec.sections if name in spec[s].scalars]
    if elsewhere:
        return text + f"; it belongs in [{elsewhere[0]}]"
    return text


# ----------------------------------------------------------------- checks

class Invalid(ValidateError):
    """A value our checks refuse; the message is shown as it is."""


def _validator() -> Validator:
    validator = Validator({
        "choice_ci": _choice_ci,
        "ldap_uris": _ldap_uris,
        "dn": _dn,
        "ldap_filter": _ldap_filter,
        "abspath": _abspath,
        "identifier": _identifier,
        "secret": _secret,
        "gateway": _gateway,
    })
    # ``reload=True`` in a key's check says that SIGHUP applies it (config.specdoc); no check takes it.
    validator.functions = {name: _reload_marked(check) for name, check in validator.functions.items()}
    return validator


def _reload_marked(check: Any) -> Any:
    def checked(value: Any, *args: Any, reload: Any = None, **kwargs: Any) -> Any:
        return check(value, *args, **kwargs)
    return checked


def _choice_ci(value: Any, *choices: str) -> str:
    """One of ``choices``, compared without case; returned as spelled in the spec."""
    for choice in choices:
        if str(value).strip().lower() == choice.lower():
            return choice
    raise Invalid(f'"{value}" is not valid; valid choices: {", ".join(choices)}')


_URI = re.compile(r"^(ldap|ldaps|ldapi)://", re.IGNORECASE)


def _ldap_uris(value: Any) -> list[str]:
    uris = str(value).split()
    if not uris:
        raise Invalid("no LDAP URI given (expected ldap://, ldaps:// or ldapi:// URIs)")
    bad = [u for u in uris if not _URI.match(u)]
    if bad:
        raise Invalid(f'"{" ".join(bad)}" is not an ldap://, ldaps:// or ldapi:// URI')
    return uris


def _dn(value: Any) -> str:
    text = str(value).strip()
    if not text or not ldap.dn.is_dn(text):
        raise Invalid(f'"{value}" is not a distinguished name')
    return text


def _ldap_filter(value: Any) -> str:
    text = str(value).strip()
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if not text.startswith("(") or depth != 0:
        raise Invalid(f'"{value}" is not an LDAP filter (parentheses do not balance)')
    return text


def _abspath(value: Any) -> str:
    text = str(value).strip()
    if not text.startswith("/"):
        raise Invalid(f'"{value}" is not an absolute path')
    return text


def _identifier(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        raise Invalid(f'"{value}" is not a name (letters, digits and _ only)')
    return text


def _secret(value: Any) -> Secret:
    """A password: kept as it is, shown as ******** everywhere."""
    return Secret(value)


def _gateway(value: Any, key: str) -> str:
    """A [Gateway] value ssh cannot misread as an option or several words (transport.ssh decides)."""
    problem = gateway_problem(key, value)
    if problem:
        raise Invalid(problem)
    return str(value)
