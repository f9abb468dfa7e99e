"""Transports: the one place where commands run and files change on the host.

Plugins never call subprocess or write files themselves; they go through the
transport the configuration names ([Service] TRANSPORTAPI), and --dry-run
wraps it so that nothing changes anywhere. Every transport's file operations
refuse to go through a symbolic link a customer could have planted
(provisioning.transport.nofollow), and its commands run in their own process
group, within COMMAND_TIMEOUT and the request's deadline (base.within_deadline).
"""
from __future__ import annotations

import threading

from provisioning.transport.base import (
    CommandResult, DryRun, Interrupted, Reach, Transport, Unreachable, request_deadline, within_deadline,
)
from provisioning.transport.local import LocalCLI
from provisioning.transport.ssh import CLISSH, SESSIONS

__all__ = ["CommandResult", "DryRun", "Interrupted", "Reach", "Transport", "Unreachable", "LocalCLI", "CLISSH",
           "build", "request_deadline", "within_deadline"]


def build(name: str, *, timeout: float, gateway: dict, dry_run: bool,
          stopping: threading.Event | None = None) -> Transport:
    """The transport for TRANSPORTAPI ``name``, wrapped for dry-run when asked.

    ``stopping`` is set by the core when the daemon stops: a command a signal
    ended after that raises Interrupted instead of returning a result.
    A [Gateway] value ssh could misread raises ValueError naming the key.
    """
    if name == "CLISSH":
        transport: Transport = CLISSH(timeout=timeout, host=gateway["HOST"], user=gateway["USER"],
                                      key_file=gateway["DSA_FILE"], port=gateway["PORT"],
                                      known_hosts=gateway["KNOWN_HOSTS"], sessions=gateway.get("SESSIONS", SESSIONS),
                                      stopping=stopping)
    else:
        transport = LocalCLI(timeout=timeout, stopping=stopping)
    return DryRun(transport) if dry_run else transport
