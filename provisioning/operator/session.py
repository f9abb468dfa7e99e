"""What audit, explain and retire share: the configuration, the plugin started, the directory open.

Each of them compares the directory with the host: the plugin's start-up
checks run first (they load what it compares with, such as its template),
the transport is a live one (the audit reads the host where the files are,
through the plugin; it changes nothing unless asked to repair or retire),
and the directory is read with the attributes the daemon reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from provisioning.backend.ldap import Directory, LdapSettings
from provisioning.base.log import STREAM_FORMAT, SYSLOG_SOCKET, escape
from provisioning.base.log import install as install_handler
from provisioning.base.log import setup as setup_logging
from provisioning.config.loader import Config
from provisioning.hooks.service import Service
from provisioning.runtime import factory, startup

# Exit codes of the drift commands, as a monitoring plugin's (audit's are the convention).
CLEAN, DRIFT, CANNOT_CHECK, USAGE = 0, 1, 2, 3


class Parser(argparse.ArgumentParser):
    """A usage error exits 3 (argparse's own 2 means "could not check" here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {escape(message)}\n")


class SessionError(Exception):
    """The session cannot be opened; the message says why (every problem, one per line)."""


@dataclass
class Session:
    """A started plugin and an open directory, for one command."""

    config: Config
    service: Service
    directory: Directory
    plugin: str

    @property
    def base(self) -> str:
        return self.config.database.subtree

    @property
    def modus(self) -> str:
        return self.config.daemon.modus

    def close(self) -> None:
        self.directory.close()
        self.service.stop()


def open_session(args: argparse.Namespace, *, changes: bool = False) -> Session:
    """Load, start the plugin, connect. SessionError when any of it fails (nothing is left open then).

    ``changes``: the command changes the host (repair, retire): it logs like
    the daemon (its configured levels, to syslog); otherwise warnings only.
    """
    loaded = startup.load(Path(args.config), args.global_config)
    if not loaded.valid:
        raise SessionError("\n".join(loaded.problems))
    config = loaded.config
    _logging(config, debug=getattr(args, "debug", False), changes=changes)
    service = factory.service(loaded.manager, config)
    problems = service.start()
    if problems:
        service.stop()
        raise SessionError("\n".join(problems))
    settings = LdapSettings.from_config(config)
    wanted = service.attributes()
    if wanted is not None:
        settings = dataclasses.replace(settings, attributes=tuple(wanted))
    directory = Directory(settings)
    try:
        directory.open()
    except Exception:
        service.stop()
        raise
    return Session(config, service, directory, loaded.plugin)


def _logging(config: Config, *, debug: bool, changes: bool) -> None:
    flags = startup.level_flags(config, debug=debug)
    if not changes and not debug:
        flags = dataclasses.replace(flags, debug=False, info=False)
    setup_logging(config.syslog_ident, flags, to_stdout=False)
    if debug and os.path.exists(SYSLOG_SOCKET):          # without syslog, setup logs to stderr already
        install_handler(logging.StreamHandler(sys.stderr), STREAM_FORMAT, flags)
