"""Loading a service configuration together with the plugin it names.

The plugin contributes its configspec, so the plugin is loaded before the
configuration is validated. ``load`` gathers every problem it can see in one
run: the validation of both files, a plugin that cannot be loaded, and the
core's checks of values that depend on each other or on the host.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from provisioning.config import loader as configuration
from provisioning.hooks import loading as plugins
from provisioning.runtime import factory
from provisioning.config.loader import (
    HOST_CONFIG_DIR, Config, ConfigError, find_global_config, host_service_configs, read, read_service_identity,
)
from provisioning.base.log import LevelFlags, escape
from provisioning.base.log import setup as setup_logging
from provisioning.alerts.mail import mail_problems


@dataclass
class Loaded:
    """A configuration as far as it could be read, the plugin, and what is wrong."""

    config: Config
    manager: pluggy.PluginManager | None
    plugin: str                     # SERVICE/TYPE as the file names it
    origin: str = ""                # where the plugin comes from (entry point value)
    problems: list[str] = field(default_factory=list)      # validation and plugin loading

    @property
    def valid(self) -> bool:
        """Whether the files validated and the plugin loaded (host problems aside)."""
        return not self.problems and self.manager is not None


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """-c FILE and -g FILE, as the subcommands that read the daemon's configuration take them (see load).

    -c may be left out where the host has one service configuration (see config_path).
    """
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"service configuration (default: the one below {HOST_CONFIG_DIR}, if there is "
                             f"exactly one)")
    parser.add_argument("-g", "--global-config", metavar="FILE", help="Global.conf (found as the daemon finds it)")


def config_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in -c with the host's one service configuration; a usage error saying why when there is not one."""
    if args.config:
        return
    found = host_service_configs()
    if len(found) == 1:
        args.config = str(found[0])
        return
    why = "there is none" if not found else f"there are {len(found)}: {', '.join(map(str, found))}"
    parser.error(f"-c FILE is needed: {why} below {configuration.HOST_CONFIG_DIR}")


def load(path: Path, global_arg: str | None) -> Loaded:
    """Read both files with the plugin's spec; every problem collected, nothing raised."""
    problems: list[str] = []
    manager, spec, origin = None, "", ""
    service, type_ = read_service_identity(path)
    if service and type_:
        try:
            manager = plugins.load(service, type_)
            spec = "\n".join(s for s in manager.hook.provisioning_config_spec() if s)
            origin = _origin(service, type_)
        except plugins.PluginError as err:
            problems.append(f"{path}: [Service] SERVICE/TYPE: {err}")
    config, found = read(path, find_global_config(global_arg), spec)
    return Loaded(config, manager, f"{service}/{type_}", origin, found + problems)


def load_for(prog: str, args: argparse.Namespace) -> Loaded | None:
    """The configuration of a sub-command's -c and -g with its plugin; None, every problem said on
    stderr under ``prog``'s name, when it does not validate."""
    loaded = load(Path(args.config), args.global_config)
    if loaded.valid:
        return loaded
    for problem in loaded.problems:
        print(f"{prog}: {escape(problem)}", file=sys.stderr)
    return None


def load_configuration(path: Path, global_arg: str | None) -> tuple[Config, pluggy.PluginManager]:
    """Validate both files with the plugin's spec; ConfigError with every problem."""
    loaded = load(path, global_arg)
    problems = loaded.problems + (core_checks(loaded.config) if "*" not in loaded.config.invalid_sections else [])
    if problems or loaded.manager is None:
        raise ConfigError(problems or [f"{path}: [Service] SERVICE, TYPE: missing (required)"])
    return loaded.config, loaded.manager


def core_checks(config: Config, *, folders: bool = True) -> list[str]:
    """What the specs cannot say: values that depend on each other or on the host.

    A check whose keys did not validate is left out (its key is reported
    already); the others run, so that one run says everything. ``folders``:
    whether the state files' folders are looked at (--check has lines of
    its own for them).
    """
    problems = []
    for check in (_lease, _gateway, _state_folders, _ca_file, _metrics, mail_problems):
        if check is _state_folders and not folders:
            continue
        try:
            problems.extend(check(config))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return problems


def _lease(config: Config) -> list[str]:
    daemon = config.daemon
    if daemon.claim_lease <= daemon.command_timeout:
        return [f"{config.path}: [Service] CLAIM_LEASE: {daemon.claim_lease:g} s must be longer than "
                f"COMMAND_TIMEOUT ({daemon.command_timeout:g} s): another daemon would take over "
                f"a request while its command may still run"]
    return []


def _gateway(config: Config) -> list[str]:
    try:
        factory.transport(config).close()       # how the transport itself judges [Gateway]
    except ValueError as err:
        return [f"{config.path}: {err}"]
    return []


def state_files(config: Config) -> list[tuple[str, Path]]:
    """The daemon's own files, with the key that names each."""
    return [("[Database] COOKIE_FILE", config.database.cookie_file),
            ("[Database] STORE_FILE", config.store_file),
            ("[Service] LOCK_FILE", config.lock_file)]


def _state_folders(config: Config) -> list[str]:
    places = state_files(config)
    if config.entry_lock_dir.parent != config.database.cookie_file.parent:
        # The default lies in COOKIE_FILE's folder, checked already; the daemon makes the last step.
        places.append(("[Service] ENTRY_LOCK_DIR", config.entry_lock_dir))
    return [f"{config.path}: {key}: folder {path.parent} does not exist"
            for key, path in places if not path.parent.is_dir()]


def _metrics(config: Config) -> list[str]:
    address = config.daemon.metrics_address
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [f"{config.path}: [Service] METRICS_ADDRESS: {escape(address)!r} is not an IP address "
                f"(127.0.0.1 keeps the metrics on this host)"]
    return []


def _ca_file(config: Config) -> list[str]:
    ca_file = config.database.ca_file
    if ca_file and not os.path.isfile(ca_file):
        return [f"{config.path}: [Database] CA_FILE: {ca_file} does not exist"]
    return []


def _origin(service: str, type_: str) -> str:
    """"module:object (distribution and version, or the checkout's folder)" of the plugin, for --check and status."""
    found = plugins.find(service, type_)
    return f"{found.value} ({found.origin})" if found is not None else ""


def configure_logging(config: Config, *, debug: bool) -> None:
    """Syslog (stderr without /dev/log) with the LOG_* levels; with ``debug`` stdout too."""
    setup_logging(config.syslog_ident, level_flags(config, debug=debug), to_stdout=debug)


def level_flags(config: Config, *, debug: bool) -> LevelFlags:
    return LevelFlags(debug=config.log_flag("LOG_DEBUG") or debug, info=config.log_flag("LOG_INFO"),
                      warning=config.log_flag("LOG_WARNING"), error=config.log_flag("LOG_ERR"))
