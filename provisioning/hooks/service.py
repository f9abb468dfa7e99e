"""The selected service plugin behind one small facade that isolates its failures.

pluggy does not isolate plugins: an exception in a hook aborts the call. Here
every exception from a request hook becomes that request's failure (return
value 1, UNDEFINED_ERROR, with the traceback in the log), never a dead daemon.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import pluggy

from provisioning.backend.storeview import KnownEntries
from provisioning.base.codes import ReturnValue
from provisioning.config.loader import Config
from provisioning.base.entry import Entry
from provisioning.base.finding import Audit, Expected, Finding
from provisioning.transport import Transport
from provisioning.transport.base import Interrupted, Unreachable, within_deadline

__all__ = ["Interrupted", "Request", "Service", "ServiceContext", "Unreachable", "within_deadline"]

log = logging.getLogger(__name__)

VERBS = ("add", "modify", "delete")
# What the core reads of every entry, whatever the plugin: the selfcare protocol
# (mode, state, date, return value, the claim), sstIsActive (a delete's
# condition), objectClass, and what entries are known and aged by.
CORE_ATTRIBUTES = ("objectClass", "sstProvisioningMode", "sstProvisioningState", "sstProvisioningExecutionDate",
                   "sstProvisioningReturnValue", "sstProvisioningExecutionTime", "sstIsActive",
                   "entryUUID", "entryCSN", "modifyTimestamp")


@dataclass
class ServiceContext:
    """What a plugin gets to do its work: its configuration section, the transport, the dry-run flag.

    ``config`` is the core's whole configuration: not part of the plugin API
    (provisioning.api); a plugin reads its own section with :meth:`section`.
    """

    config: Config
    transport: Transport
    dry_run: bool = False

    def section(self, name: str) -> Mapping[str, Any]:
        """A section of the service configuration, as the plugin's spec validated it (read only)."""
        return MappingProxyType(self.config.section(name))

    @property
    def config_path(self) -> Path:
        """The service configuration's file: name it in a message about one of its keys."""
        return self.config.path

    @property
    def config_dir(self) -> Path:
        """The service configuration's folder: where relative names in it start."""
        return self.config.directory

    @property
    def environment(self) -> str:
        """[Global] ENVIRONMENT: this host's name in the directory."""
        return self.config.environment

    @property
    def command_timeout(self) -> float:
        """[Service] COMMAND_TIMEOUT: seconds a command may run (the transport's default)."""
        return self.config.daemon.command_timeout

    def known_entries(self) -> KnownEntries:
        """The entries the daemon's store knows, read only (by entryUUID), from any thread.

        For background work that must tie something on the host to an entry
        without a request in hand. Close it when done.
        """
        return KnownEntries(self.config.store_file)


@dataclass
class Request:
    """A request: what to do (``verb``) to which entry, and the entry as the daemon knew it before."""

    verb: str       # add, modify or delete
    entry: Entry    # fresh: read back by the claim
    # The entry as the store knew it when the request came (the version the
    # daemon last handled), None for an entry it never saw: a modify hook sees
    # what changed. For a removed entry (delete) the entry itself is the last known.
    previous: Entry | None = None

    @property
    def dn(self) -> str:
        return self.entry.dn


class Service:
    """Calls the plugin's hooks; a plugin's exception is the request's failure."""

    def __init__(self, manager: pluggy.PluginManager, ctx: ServiceContext) -> None:
        self.manager = manager
        self.ctx = ctx

    def start(self) -> list[str]:
        """Run the plugins' start-up checks; return every problem found."""
        problems: list[str] = []
        for result in self.manager.hook.provisioning_start(ctx=self.ctx):
            problems.extend(result or [])
        return problems

    def serving(self) -> None:
        """Let the plugins start their background work (see provisioning_serving)."""
        try:
            self.manager.hook.provisioning_serving(ctx=self.ctx)
        except Exception:  # noqa: BLE001 - background work is not worth a dead daemon
            log.exception("plugin failed to start its background work")

    def warnings(self) -> list[str]:
        """The plugins' warnings for status; a failing hook is one warning itself."""
        found: list[str] = []
        try:
            for answer in self.manager.hook.provisioning_warnings(ctx=self.ctx):
                found.extend(str(w) for w in answer or [])
        except Unreachable as err:          # a BaseException: the gateway (CLISSH) is away
            log.debug("the plugin's warnings cannot be had: %s", err)   # status names the gateway itself
        except Exception as err:  # noqa: BLE001 - status reports it instead
            found.append(f"the plugin's warnings hook raised {type(err).__name__}: {err}")
        return found

    def gauges(self) -> dict[str, tuple[float, str]]:
        """The plugins' gauges for the metrics; a failing hook is logged and gives none."""
        found: dict[str, tuple[float, str]] = {}
        try:
            for answer in self.manager.hook.provisioning_metrics(ctx=self.ctx):
                found.update(answer or {})
        except Exception:  # noqa: BLE001 - a scrape must not fail for it
            log.exception("plugin failed to give its metrics")
        return found

    def stop(self) -> None:
        try:
            self.manager.hook.provisioning_stop(ctx=self.ctx)
        except Exception:  # noqa: BLE001 - shutting down anyway; say why
            log.exception("plugin failed while stopping")
        self.ctx.transport.close()

    def attributes(self) -> list[str] | None:
        """The attributes the daemon reads of an entry: the core's and those the plugins declare.

        None when no plugin declares any (hook provisioning_attributes): every
        attribute. A hook that raises gets the core's only: a plugin that
        cannot say what it needs is not given everything.
        """
        try:
            declared = self.manager.hook.provisioning_attributes(ctx=self.ctx)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("plugin failed to name the attributes it needs; it gets the core's only")
            declared = [[]]
        if not declared:
            return None
        names: dict[str, str] = {}
        for name in [*CORE_ATTRIBUTES, *(name for names_ in declared for name in names_)]:
            names.setdefault(name.lower(), name)     # attribute names are case-insensitive
        return list(names.values())

    def validate(self, request: Request) -> int | None:
        """A plugin's refusal of ``request`` before its claim (hook provisioning_validate), or None.

        A hook that raises refuses with 1 (UNDEFINED_ERROR): nothing is claimed for an entry the
        plugin could not judge. A value outside 1-99 is refused as 1 too, and logged.
        """
        try:
            code = self.manager.hook.provisioning_validate(request=request, ctx=self.ctx)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("%s: plugin raised while validating the %s request", request.dn, request.verb)
            return ReturnValue.UNDEFINED_ERROR
        if code is None:
            return None
        if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 99:
            log.error("%s: plugin refused the %s request with %r, which is no return value of a plugin "
                      "(1-99)", request.dn, request.verb, code)
            return ReturnValue.UNDEFINED_ERROR
        return code

    def owns(self, entry: Entry) -> bool:
        """False when a plugin says the entry belongs to another host."""
        try:
            answer = self.manager.hook.provisioning_owns(entry=entry, ctx=self.ctx)
        except Exception:  # noqa: BLE001 - a broken check must not take the entry
            log.exception("%s: plugin failed to decide whether the entry is ours; leaving it", entry.dn)
            return False
        return answer is not False

    def not_ours(self, entry: Entry) -> str | None:
        """None when ``entry`` is this host's (provisioning_owns); else why not, with both values exactly.

        The core's rule for the plugins it ships: [Global] ENVIRONMENT names
        this host, an entry's ``host`` attribute the one that serves it.
        """
        if self.owns(entry):
            return None
        host, here = entry.get("host"), self.ctx.environment
        # Quoted as they are: whoever shows this escapes it (provisioning.base.log.escape, json).
        if host is None:
            return f"the plugin leaves it to another host (it has no host; this daemon's ENVIRONMENT is '{here}')"
        return f"its host is '{host}', this daemon's [Global] ENVIRONMENT is '{here}'"

    def audit(self, entries: Iterable[Expected], only: str | None = None) -> Audit:
        """The plugin's comparison of the host with ``entries`` (hook provisioning_audit).

        A plugin that does not implement it, or answers None, cannot audit
        (``Audit.cannot`` says so). What the hook raises is raised: an
        audit that failed is no audit.
        """
        hook = getattr(self.manager.hook, "provisioning_audit", None)
        answer = hook(entries=entries, only=only, ctx=self.ctx) if hook is not None else None
        if answer is None:
            return Audit.impossible("the plugin does not audit what it made on the host "
                                    "(it implements no provisioning_audit)")
        if not isinstance(answer, Audit):
            raise TypeError(f"the plugin's provisioning_audit returned {type(answer).__name__}, not an Audit")
        return answer

    def repair(self, entry: Entry, findings: list[Finding]) -> list[str]:
        """The plugin's repair of ``findings`` of ``entry`` (hook provisioning_repair): what it did.

        What the hook raises is raised (the caller reports it as the repair's failure).
        """
        hook = getattr(self.manager.hook, "provisioning_repair", None)
        done = hook(entry=entry, findings=findings, ctx=self.ctx) if hook is not None else None
        return [str(line) for line in done or []]

    def meaning(self, code: int) -> str:
        """What a return value means: the core's own, or the plugin's (hook provisioning_return_values)."""
        try:
            return f"{ReturnValue(code).name}"
        except ValueError:
            pass
        hook = getattr(self.manager.hook, "provisioning_return_values", None)
        try:
            for table in (hook() if hook is not None else []):
                if table and code in table:
                    return table[code]
        except Exception:  # noqa: BLE001 - a broken table must not cost the alert
            log.exception("plugin failed to describe return value %d", code)
        return "no description"

    def reachable(self) -> None:
        """Unreachable while the transport knows its host to be away: no request is begun then."""
        reach = self.ctx.transport.reach()
        if reach is not None and not reach.up:
            raise Unreachable(f"the gateway {reach.where} is out of reach: {reach.why}")

    def run(self, request: Request) -> int:
        """Run the hook for ``request.verb``; return its exit code.

        Unreachable (raised through) when the transport's host does not
        answer: that is no exit code of the request's.
        """
        self.reachable()
        hook = getattr(self.manager.hook, f"provisioning_{request.verb}")
        try:
            code: Any = hook(request=request, ctx=self.ctx)
        except Exception:  # noqa: BLE001 - see module docstring
            log.exception("%s: plugin raised during %s", request.dn, request.verb)
            return ReturnValue.UNDEFINED_ERROR
        if isinstance(code, bool) or not isinstance(code, int):
            log.error("%s: plugin returned %r from %s instead of an exit code",
                      request.dn, code, request.verb)
            return ReturnValue.UNDEFINED_ERROR
        return code
