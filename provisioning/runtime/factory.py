"""The one place the configured transport and service are made: the daemon, --check, status and retry."""
from __future__ import annotations

import threading

import pluggy

from provisioning.config.loader import Config
from provisioning.hooks.service import Service, ServiceContext
from provisioning.transport import Transport, build


def transport(config: Config, *, dry_run: bool = False, stopping: threading.Event | None = None) -> Transport:
    """The transport [Service] TRANSPORTAPI names, with COMMAND_TIMEOUT and [Gateway].

    ``stopping`` is set when the daemon stops (see transport.build). A
    [Gateway] value ssh could misread, or one CLISSH needs and lacks, raises
    ValueError naming the key.
    """
    return build(config.daemon.transport, timeout=config.daemon.command_timeout, gateway=config.gateway,
                 dry_run=dry_run, stopping=stopping)


def service(manager: pluggy.PluginManager, config: Config, *, dry_run: bool = False,
            stopping: threading.Event | None = None, transport_: Transport | None = None) -> Service:
    """The plugin behind its facade, with its context (a transport made here unless given)."""
    made = transport_ if transport_ is not None else transport(config, dry_run=dry_run, stopping=stopping)
    return Service(manager, ServiceContext(config, made, dry_run=dry_run))
