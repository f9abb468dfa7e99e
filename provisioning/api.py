"""The plugin API: the one module of provisioning a service plugin imports.

Everything a plugin needs from the core is named here, and only what is
named here is promised: the core's folders may change from one release to
the next, these names change only with API_VERSION. A plugin's tests may use
``provisioning.testing`` as well (a throwaway slapd, entries, a daemon in a
subprocess).

What the names are for (docs/PLUGINS.md has the whole story):

- ``hookimpl`` marks a plugin's hooks; their specifications and docstrings
  are in provisioning.hooks.specs (see HOOKS for their names).
- A hook gets a ``Request`` (``verb``, ``entry``, ``previous``, ``dn``) and
  the ``ServiceContext`` (its configuration section, the transport, the
  dry-run flag, ENVIRONMENT, COMMAND_TIMEOUT).
- ``Entry`` is an entry as the daemon read it: ``get``, ``values``, ``dn``,
  ``uuid``, ``csn``.
- ``Transport`` runs commands (``run`` returns a ``CommandResult``) and
  changes files on the host, never through a link a customer planted;
  ``Interrupted`` is what a command ended by the daemon's stop raises, and
  ``Unreachable`` what any operation raises while the CLISSH gateway is away
  (both BaseExceptions: do not catch them); ``within_deadline`` bounds a
  step by the request's deadline. ``transport.where`` says where the work
  happens (None: this host).
- ``CheckLine`` is one line of ``provisioning-daemon --check``.
- ``Expected``, ``Expect``, ``Audit`` and ``Finding`` are what the audit
  hooks take and give (``provisioning-daemon audit``; API 1.1).
- ``ReturnValue`` holds the core's own return values (0, 1 and 100 and up);
  ``PLUGIN_RETURN_VALUES`` is the range a plugin's own codes must lie in.
- ``Clock`` and ``utc_stamp`` for dates the way the core writes them.
- ``shipped_file`` and ``etc_path`` find files the package ships.

A plugin that needs a later API than the installed one says so with
``require("1.1")`` at import: loading it then stops the daemon with a clear
message instead of failing later on a missing name.
"""
from __future__ import annotations

from provisioning.base.checkline import CheckLine
from provisioning.base.clock import Clock, utc_stamp
from provisioning.base.codes import ReturnValue
from provisioning.base.entry import Entry
from provisioning.base.finding import Audit, Expect, Expected, Finding
from provisioning.config.resources import etc_path, shipped_file
from provisioning.hooks.service import Request, ServiceContext
from provisioning.hooks.specs import API_VERSION, HOOKS, hookimpl
from provisioning.transport.base import CommandResult, Interrupted, Transport, Unreachable, within_deadline

# A plugin's own return values (0 is success); the core keeps 100 and up.
PLUGIN_RETURN_VALUES = range(0, 100)


class ApiVersionError(ImportError):
    """The installed provisioning offers an older plugin API than a plugin requires."""


def require(version: str) -> None:
    """Stop a plugin's import unless this API is ``version`` or a later, compatible one.

    :param version: ``"MAJOR.MINOR"``, the API the plugin was written for.
    :raises ApiVersionError: a different MAJOR, or an older MINOR.
    """
    wanted, have = _parse(version), _parse(API_VERSION)
    if wanted[0] != have[0] or wanted[1] > have[1]:
        raise ApiVersionError(f"this plugin needs the provisioning plugin API {version}; the installed "
                              f"provisioning offers {API_VERSION}")


def _parse(version: str) -> tuple[int, int]:
    major, _, minor = str(version).strip().partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise ValueError(f"{version!r} is no API version (MAJOR.MINOR)") from None


__all__ = ["API_VERSION", "ApiVersionError", "Audit", "CheckLine", "Clock", "CommandResult", "Entry", "Expect",
           "Expected", "Finding", "HOOKS", "Interrupted", "PLUGIN_RETURN_VALUES", "Request", "ReturnValue", "ServiceContext", "Transport", "Unreachable",
           "etc_path", "hookimpl", "require", "shipped_file", "utc_stamp", "within_deadline"]
