"""Transports: the one place where commands run and files change on the host.

Plugins never call subprocess or write files themselves; they go through the
transport the configuration names ([Service] TRANSPORTAPI), and --dry-run
wraps it so that nothing changes anywhere.
"""
from __future__ import annotations

from provisioning.transport.base import CommandResult, DryRun, Transport
from provisioning.transport.local import LocalCLI
from provisioning.transport.ssh import CLISSH

__all__ = ["CommandResult", "DryRun", "Transport", "LocalCLI", "CLISSH", "build"]


def build(name: str, *, timeout: float, gateway: dict, dry_run: bool) -> Transport:
    """The transport for TRANSPORTAPI ``name``, wrapped for dry-run when asked."""
    if name == "CLISSH":
        transport: Transport = CLISSH(timeout=timeout, host=gateway["HOST"], user=gateway["USER"],
                                      key_file=gateway["DSA_FILE"], port=gateway["PORT"],
                                      known_hosts=gateway["KNOWN_HOSTS"])
    else:
        transport = LocalCLI(timeout=timeout)
    return DryRun(transport) if dry_run else transport
