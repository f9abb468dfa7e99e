"""The plugin contract: every hook a service plugin may implement.

A service plugin (such as Backup/Rsnapshot) is a class or module registered in
the ``provisioning.plugins`` entry-point group under the name ``SERVICE/TYPE``
(the [Service] keys of the service configuration). The daemon loads exactly
the plugin the configuration names, registers it with pluggy and calls the
hooks below. Hook implementations are marked with ``provisioning.hookimpl``.

What the core owns and plugins must not do: reading the sync stream, deciding
whether an entry is a request, claiming it and writing sstProvisioningMode,
sstProvisioningState and sstProvisioningReturnValue. A plugin only does the
work on the host, through ``ctx.transport``, and returns an exit code.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from provisioning.base.checkline import CheckLine
    from provisioning.base.entry import Entry
    from provisioning.base.finding import Audit, Expected, Finding
    from provisioning.hooks.service import Request, ServiceContext

PROJECT = "provisioning"
# The plugin API's version (provisioning.api): MAJOR.MINOR. A new name or hook
# raises MINOR; a name or hook removed or changed in meaning raises MAJOR.
API_VERSION = "1.1"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def deprecated(why: str) -> DeprecationWarning:
    """What a hook that is on its way out is marked with: ``@hookspec(warn_on_impl=deprecated("..."))``.

    pluggy then warns, once a plugin implementing the hook is registered,
    with ``why`` (say what to implement instead and from which API version
    the hook is gone). No hook is deprecated in API 1.1.
    """
    return DeprecationWarning(why)


# ----------------------------------------------------------------------
# Set-up and shutdown: the plugin's configuration, its start-up checks, the attributes it needs,
# its background work.


@hookspec
def provisioning_config_spec() -> str | None:
    """Contribute configspec lines for the plugin's own configuration sections.

    Called once, before the service configuration is validated, so that the
    plugin's keys are checked with the core's and every error is reported
    together.

    :return: configspec text (configobj syntax), for example
        ``"[Backup]\\nMOUNTPOINT = string(default=/)"``, or None.
    """


@hookspec
def provisioning_start(ctx: "ServiceContext") -> list[str] | None:
    """Check the plugin's configuration and environment at start-up.

    Called once after the configuration is validated and before the daemon
    connects to LDAP (also for ``--check``). The plugin may prepare state it
    keeps for the life of the daemon.

    :param ctx: the service context (validated configuration, transport,
        dry-run flag).
    :return: a list of problems, each a full sentence naming the key or file
        at fault; an empty list or None when all is well. Any problem stops
        the daemon with the configuration-error exit code.
    """


@hookspec
def provisioning_attributes(ctx: "ServiceContext") -> list[str] | None:
    """Name the attributes of an entry the plugin needs: the daemon reads, passes on and keeps no others.

    Called once at start-up, after :func:`provisioning_start`. The daemon asks
    the directory for these and for the few the core needs itself (the
    sstProvisioning* attributes, sstIsActive, objectClass, entryUUID,
    entryCSN, modifyTimestamp), and for nothing else: ``request.entry`` and
    the ``entry`` of :func:`provisioning_owns` hold only those, and so does
    the store, which keeps the last known entry for a delete. A password hash
    the bind DN can read is thus never read unless a plugin names it. The
    lists of all plugins are merged. A plugin that declares nothing (None,
    or no implementation) leaves the choice to the others; when no plugin
    declares a list, every attribute is read, as before this hook existed.

    :param ctx: the service context (validated configuration, after start).
    :return: attribute names (``"*"`` stands for every user attribute), or
        None to declare nothing.
    """


@hookspec
def provisioning_serving(ctx: "ServiceContext") -> None:
    """Start the plugin's background work: the daemon now serves requests.

    Called once per daemon, after :func:`provisioning_start`, after
    ``--daemon`` detached (threads started earlier would not survive it) and
    before the first request; never for ``--check`` or ``status``. With
    ``--dry-run`` too (``ctx.dry_run``): background work must then change
    nothing. Stop what was started in :func:`provisioning_stop`. An
    exception is logged, never fatal.

    :param ctx: the service context.
    :return: nothing; a value is ignored.
    """


@hookspec
def provisioning_stop(ctx: "ServiceContext") -> None:
    """Release what :func:`provisioning_start` set up; called once at shutdown.

    Also called when start-up fails after :func:`provisioning_start` ran,
    and after ``--check``. An exception is logged, never fatal.

    :param ctx: the service context.
    :return: nothing; a value is ignored.
    """


# ----------------------------------------------------------------------
# Requests: whose an entry is, whether it can be served, and the work (in a worker).


@hookspec(firstresult=True)
def provisioning_owns(entry: "Entry", ctx: "ServiceContext") -> bool | None:
    """Say whether a request entry is this host's to serve.

    Called for every request before it is claimed or refused. Returning False
    leaves the entry untouched (no claim, no write), so that several hosts can
    share one subtree. Stops at the first non-None result; None from every
    plugin means yes.

    :param entry: the entry as the sync stream delivered it.
    :param ctx: the service context.
    :return: False to leave the entry to another host, True or None to serve it.
    """


@hookspec(firstresult=True)
def provisioning_validate(request: "Request", ctx: "ServiceContext") -> int | None:
    """Refuse a request before it is claimed, when the entry itself cannot be served.

    Called in a worker for a request the core would claim (selfcare: after
    the core's own checks, before the claim; MODUS LDAP: before the hook),
    with the entry as the stream delivered it and the one the store knew
    (``request.previous``). Must not change anything on the host or in LDAP,
    and be quick: read the entry, perhaps look at the host through
    ``ctx.transport``. A refusal is written as the request's return value
    without a claim (selfcare; the portal sees a refused request, judged
    again when someone writes the entry) or logged as the hook's failure
    (LDAP mode). Stops at the first non-None result.

    :param request: the request as it would be worked (``verb``, ``entry``,
        ``previous``).
    :param ctx: the service context.
    :return: None to go on; a return value (1-99, the plugin's own) to refuse.
    """


@hookspec(firstresult=True)
def provisioning_add(request: "Request", ctx: "ServiceContext") -> int | None:
    """Create the service for an add request.

    Selfcare: called after the core claimed the entry (sstProvisioningMode:
    adding). MODUS LDAP: called when an entry appears in SERVICE_SUBTREE (and
    again on its next change while add has not succeeded). Must be
    idempotent: after a crash it may be called again for the same entry and
    must reach the same end state. In selfcare it runs within the request's
    deadline (90% of [Service] CLAIM_LEASE after the claim): a command run
    through ``ctx.transport`` is not started once it has passed and is
    killed when it comes. Stops at the first non-None result.

    :param request: the request: ``request.verb`` is ``"add"``,
        ``request.entry`` the entry as read back by the claim itself (fresh,
        not the sync event; in LDAP mode the entry as the stream delivered
        it), ``request.dn`` its DN.
    :param ctx: the service context; every command and file write goes
        through ``ctx.transport`` so that --dry-run and CLISSH hold.
    :return: the exit code: 0 for success, any other value (1-99; the core
        keeps 100 and up) is written to sstProvisioningReturnValue. An
        exception counts as 1 (UNDEFINED_ERROR).
    """


@hookspec(firstresult=True)
def provisioning_modify(request: "Request", ctx: "ServiceContext") -> int | None:
    """Bring the service in line with a modify request.

    Selfcare: called after the core claimed the entry (sstProvisioningMode:
    modifying). MODUS LDAP: called when an entry the daemon handled before
    changes. Idempotent and within the request's deadline, like
    :func:`provisioning_add`. Stops at the first non-None result.

    :param request: the request: ``request.verb`` is ``"modify"``,
        ``request.entry`` the entry as it is now (read back by the claim).
    :param ctx: the service context; every command and file write goes
        through ``ctx.transport``.
    :return: the exit code: 0 for success, any other value (1-99) is written
        to sstProvisioningReturnValue. An exception counts as 1.
    """


@hookspec(firstresult=True)
def provisioning_delete(request: "Request", ctx: "ServiceContext") -> int | None:
    """Remove the service for a delete request.

    Selfcare: called after the core claimed the entry (sstProvisioningMode:
    deleting), only when it carries ``sstIsActive: FALSE`` (the core refuses
    a delete of an active entry itself). MODUS LDAP: called when the entry
    leaves SERVICE_SUBTREE. For an entry removed from the directory (LDAP
    mode, or a selfcare entry removed while its delete request was open)
    ``request.entry`` is the last known entry, from the daemon's store: the
    directory has nothing left to read. Idempotent like
    :func:`provisioning_add`: deleting what is already gone succeeds. Stops
    at the first non-None result.

    :param request: the request: ``request.verb`` is ``"delete"``,
        ``request.entry`` the entry (fresh from the claim, or the last known
        one of a removed entry).
    :param ctx: the service context; every command and file write goes
        through ``ctx.transport``.
    :return: the exit code: 0 for success, any other value (1-99) is written
        to sstProvisioningReturnValue (or, for a removed entry, logged and
        tried again at the next start). An exception counts as 1.
    """


# ----------------------------------------------------------------------
# Operators: --check, status, the metrics and the meaning of return values.


@hookspec
def provisioning_check(ctx: "ServiceContext") -> "list[CheckLine | tuple[str, str, str]] | None":
    """Check what the plugin needs on this host, for ``provisioning-daemon --check``.

    Called by ``--check`` only, after :func:`provisioning_start` (also when
    that found problems: report what you can, so that one run shows every
    problem) and before the core's LDAP checks. Must not change anything on
    the host or in LDAP: a check may create temporary files only, and must
    remove them. Run commands through ``ctx.transport`` (never in dry-run
    for --check). Each line is printed as ``STATUS name: detail``.

    :param ctx: the service context (validated configuration, transport,
        dry-run flag).
    :return: a list of :class:`provisioning.base.checkline.CheckLine` (or plain
        ``(name, status, detail)`` tuples), one per thing checked. ``status``
        is ``OK``, ``WARN`` (cannot tell here, or works but unwise: --check
        still passes) or ``FAIL`` (will not work: --check exits non-zero);
        ``detail`` says what was found and, for WARN and FAIL, what to do.
        None or an empty list when the plugin checks nothing. An exception
        is reported as a FAIL line.
    """


@hookspec
def provisioning_status(ctx: "ServiceContext") -> dict[str, str] | None:
    """Contribute details about the service to ``provisioning-daemon status``.

    Called once per ``status`` run, without :func:`provisioning_start`, while
    the daemon may be running: read only, change nothing, and be quick
    (monitoring calls it every few minutes).

    :param ctx: the service context (validated configuration, a dry-run
        transport: commands are not run).
    :return: ``{label: value}`` pairs shown under the plugin's name in the
        text output and as an object in ``--json`` (for example
        ``{"rsnapshot configurations": "120"}``); None when there is nothing
        to add. An exception is shown as the plugin's status, never fatal.
    """


@hookspec
def provisioning_warnings(ctx: "ServiceContext") -> list[str] | None:
    """Say what needs a person's attention on the service side, for ``status``.

    Called once per ``status`` run, like :func:`provisioning_status` (read
    only, quick, while the daemon may run). Each warning makes status
    WARNING (unless something is CRITICAL) and is shown as a reason.

    :param ctx: the service context (a dry-run transport).
    :return: a list of short sentences (for example ``"3 jails on an old
        image for more than a day"``); None or an empty list when all is well.
    """


@hookspec
def provisioning_metrics(ctx: "ServiceContext") -> dict[str, tuple[float, str]] | None:
    """Contribute gauges to the daemon's Prometheus metrics ([Service] METRICS_PORT).

    Called in the daemon each time the metrics are scraped (from the metrics
    server's thread): read figures the plugin keeps, do no I/O.

    :param ctx: the service context.
    :return: ``{name: (value, help)}``; each name is served prefixed with
        ``provisioning_`` (for example ``{"jails_stale": (3, "Jails on an
        old image")}``); None when there is nothing to add.
    """


@hookspec
def provisioning_return_values() -> dict[int, str] | None:
    """Name the plugin's return values (sstProvisioningReturnValue) for people.

    Called by ``status`` and ``retry`` to explain a failed request. The core
    names its own values (0, 1 and 100 and up, see provisioning.base.codes); a
    plugin names the codes its add, modify and delete hooks return.

    :return: ``{code: meaning}``, for example ``{6: "CANNOT_SET_QUOTA:
        setquota failed; check quotas on MOUNTPOINT"}``; None when the
        plugin names none.
    """


# ----------------------------------------------------------------------
# Drift: what is on the host against what the directory says (audit, explain, retire).


@hookspec(firstresult=True)
def provisioning_audit(entries: "Iterable[Expected]", only: str | None, ctx: "ServiceContext") -> "Audit | None":
    """Compare what the plugin made on the host with the directory, and find what no entry explains.

    Called by ``provisioning-daemon audit``, ``explain`` and ``retire``, and
    by the daemon every [Service] AUDIT_INTERVAL seconds, while the daemon
    may be working: read only, change nothing (``ctx.transport`` is a live
    one, so that a read-only pass can run where the files are). Read the
    host once for all entries (one pass over the folders, one quota report),
    not once per entry: an audit of 100,000 accounts must stay in minutes.
    Stops at the first non-None result.

    :param entries: every entry of this host that the directory holds (read
        once, as an iterator: consume it once, and let its exceptions pass:
        an answer that is not whole is no audit), each with what it expects
        (``Expected.expect``: present, absent, or a request open, which is
        not judged). Entries of other hosts are not given: what the host
        holds for them is an orphan here.
    :param only: None for everything; else the one name an operator gave
        (a DN, or the plugin's own name for an account, such as a uid):
        look at that account's objects only.
    :param ctx: the service context.
    :return: an :class:`provisioning.base.finding.Audit`: the findings (one
        per thing that differs, each saying whether it is safe to repair;
        an orphan names what ``retire`` takes and, as ``entry``, the entry
        the delete hook would be called with), how many entries were
        compared, and notes on what could not be checked; or
        ``Audit.impossible(why)`` from a plugin that cannot audit what it
        made. None: the plugin does not audit (said like ``impossible``).
    """


@hookspec(firstresult=True)
def provisioning_repair(entry: "Entry", findings: "list[Finding]", ctx: "ServiceContext") -> list[str] | None:
    """Repair what the audit found for one entry, with the steps the plugin's request hooks take.

    Called by ``provisioning-daemon audit --repair`` for an entry of this
    host with no request open, under the entry's lock on this host (the one
    every request of the daemon holds: no request of this entry runs
    meanwhile), with its repairable findings as a fresh audit of that entry
    found them. Only what is safe and idempotent: never delete or archive
    data, never act on an object that is not provably this entry's. An
    exception is reported as the repair's failure. Stops at the first
    non-None result.

    :param entry: the entry as the directory holds it now.
    :param findings: its repairable findings (``Finding.repairable``).
    :param ctx: the service context (a live transport).
    :return: what was done, one sentence per step; None when the plugin
        repairs nothing.
    """


# Every hook's name, by phase (provisioning.api.HOOKS).
HOOKS = tuple(name for name in list(globals()) if name.startswith("provisioning_"))
