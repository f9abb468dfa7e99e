"""Generic/Exec: the hook implementations.

Each request runs the command its type names in [Exec] through
``ctx.transport`` (so --dry-run and TRANSPORTAPI = CLISSH hold), with the
request on stdin and its environment built by provisioning_generic_exec.request.
The command's exit code becomes the return value (codes.return_value), and
its last stderr line goes to the log (with how many bytes of stderr before
the transport's 64 KiB tail were dropped, if any).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Iterable

from provisioning.api import Audit, CheckLine, Expected, Request, ServiceContext, hookimpl

from provisioning_generic_exec.codes import Code, meanings, return_value
from provisioning_generic_exec.request import environment, stdin_json

log = logging.getLogger(__name__)

NAME = "Generic/Exec"
SECTION = "Exec"
KEYS = {"add": "ADD_CMD", "modify": "MODIFY_CMD", "delete": "DELETE_CMD"}
# What the commands get of an entry unless ATTRIBUTES says otherwise: who and
# what it is, never a secret (userPassword and its kind are left out).
DEFAULT_ATTRIBUTES = ("objectClass, uid, cn, sn, givenName, displayName, mail, description, l, o, ou, host, "
                      "uidNumber, gidNumber, homeDirectory, loginShell, "
                      "sstBelongsToResellerUID, sstBelongsToCustomerUID, sstBelongsToPersonUID")
SPEC = f"""[Exec]
# The command run for each request type: an absolute path, run with no
# arguments, the request as one JSON object on stdin, PROVISIONING_VERB and
# PROVISIONING_DN in its environment. Empty: requests of that type are
# refused with return value 90 (NO_COMMAND) and nothing is run.
ADD_CMD = string(default="")
MODIFY_CMD = string(default="")
DELETE_CMD = string(default="")
# Seconds a command may run before it is killed (return value 92); 0 means
# [Service] COMMAND_TIMEOUT, which it may not exceed.
TIMEOUT = float(min=0, default=0)
# The attributes of an entry the commands get (separated by commas or blanks),
# besides the sstProvisioning* ones, sstIsActive, objectClass, entryUUID,
# entryCSN and modifyTimestamp. The daemon reads and keeps no others. * stands
# for every attribute the bind DN can read, password hashes included.
ATTRIBUTES = string(default="{DEFAULT_ATTRIBUTES}")
"""
# An attribute description (RFC 4512: a name or an OID, with options such as ;binary), or *.
ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*|\*")


@dataclass(frozen=True)
class Settings:
    commands: dict[str, str]       # verb -> command ("" when not set)
    timeout: float                 # 0: the transport's (COMMAND_TIMEOUT)
    attributes: list[str]          # ATTRIBUTES, as written

    @classmethod
    def of(cls, ctx: ServiceContext) -> "Settings":
        """[Exec] of the service configuration the plugin runs with."""
        section = ctx.section(SECTION)
        return cls({verb: section[key].strip() for verb, key in KEYS.items()}, section["TIMEOUT"],
                   re.split(r"[\s,]+", section["ATTRIBUTES"].strip()) if section["ATTRIBUTES"].strip() else [])


class GenericExec:
    """One instance per daemon; keeps the validated [Exec] settings."""

    def __init__(self) -> None:
        self.settings: Settings | None = None

    @hookimpl
    def provisioning_config_spec(self) -> str:
        return SPEC

    @hookimpl
    def provisioning_start(self, ctx: ServiceContext) -> list[str]:
        """Each command set is an absolute path that exists; at least one is set; TIMEOUT fits."""
        self.settings = Settings.of(ctx)
        where = f"{ctx.config_path}: [{SECTION}]"
        problems = []
        if not any(self.settings.commands.values()):
            problems.append(f"{where} ADD_CMD, MODIFY_CMD, DELETE_CMD: none is set; every request "
                            f"would be refused")
        for verb, command in self.settings.commands.items():
            if command:
                problems += _command_problems(f"{where} {KEYS[verb]}", command, ctx)
        limit = ctx.command_timeout
        if self.settings.timeout > limit:
            problems.append(f"{where} TIMEOUT: {self.settings.timeout:g} s is longer than [Service] "
                            f"COMMAND_TIMEOUT ({limit:g} s), which bounds every command")
        bad = [name for name in self.settings.attributes if not ATTRIBUTE.fullmatch(name)]
        if bad:
            problems.append(f"{where} ATTRIBUTES: {', '.join(repr(name) for name in bad)} "
                            f"{'is not an attribute name' if len(bad) == 1 else 'are not attribute names'}")
        return problems

    @hookimpl
    def provisioning_attributes(self, ctx: ServiceContext) -> list[str]:
        """ATTRIBUTES: what the commands get of an entry (with what the core reads itself)."""
        settings = self.settings or Settings.of(ctx)
        return settings.attributes

    @hookimpl
    def provisioning_add(self, request: Request, ctx: ServiceContext) -> int:
        """Run ADD_CMD."""
        return self._run(request, ctx)

    @hookimpl
    def provisioning_modify(self, request: Request, ctx: ServiceContext) -> int:
        """Run MODIFY_CMD."""
        return self._run(request, ctx)

    @hookimpl
    def provisioning_delete(self, request: Request, ctx: ServiceContext) -> int:
        """Run DELETE_CMD (in MODUS LDAP with the last known entry of a removed one)."""
        return self._run(request, ctx)

    @hookimpl
    def provisioning_check(self, ctx: ServiceContext) -> list[CheckLine]:
        """One line per request type: its command is an executable file, or it is not set."""
        settings = Settings.of(ctx)
        return [_check_line(verb, command, ctx) for verb, command in settings.commands.items()]

    @hookimpl
    def provisioning_status(self, ctx: ServiceContext) -> dict[str, str]:
        """The command of each request type (read from the configuration only)."""
        settings = Settings.of(ctx)
        return {KEYS[verb]: command or f"not set: {verb} requests are refused ({int(Code.NO_COMMAND)})"
                for verb, command in settings.commands.items()}

    @hookimpl
    def provisioning_return_values(self) -> dict[int, str]:
        return meanings()

    @hookimpl
    def provisioning_audit(self, entries: Iterable[Expected], only: str | None, ctx: ServiceContext) -> Audit:
        """Says it cannot: the commands are the operator's, and only they know what they made."""
        return Audit.impossible("Generic/Exec cannot audit: what ADD_CMD, MODIFY_CMD and DELETE_CMD made on the "
                                "host is known to those commands alone")

    # ---------------------------------------------------------------- work

    def _run(self, request: Request, ctx: ServiceContext) -> int:
        settings = self.settings or Settings.of(ctx)
        key, command = KEYS[request.verb], settings.commands[request.verb]
        if not command:
            log.error("%s: %s refused: [%s] %s is not set (return value %d, NO_COMMAND)", request.dn,
                      request.verb, SECTION, key, Code.NO_COMMAND)
            return Code.NO_COMMAND
        started = time.monotonic()
        result = ctx.transport.run([command], stdin=stdin_json(request.verb, request.entry),
                                   timeout=settings.timeout or None, env=environment(request.verb, request.dn))
        took = time.monotonic() - started
        if ctx.dry_run:
            log.info("%s: %s: %s %s would be run", request.dn, request.verb, key, command)
            return Code.SUCCESS
        code = return_value(result.returncode)
        said = _last_line(result.stderr)
        if said and result.stderr_dropped:       # only the end of stderr is kept (transport.CommandResult)
            said += f" ({result.stderr_dropped} earlier bytes of stderr dropped)"
        outcome = f"{key} {command} exited {result.returncode} in {took:.3f} s"
        if code != result.returncode:
            outcome += f" (return value {int(code)}, {Code(code).name})"
        if code == Code.SUCCESS:
            log.info("%s: %s: %s%s", request.dn, request.verb, outcome, f"; it said: {said}" if said else "")
        else:
            log.error("%s: %s: %s%s", request.dn, request.verb, outcome, f"; it said: {said}" if said else "")
        return int(code)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _command_problems(name: str, command: str, ctx: ServiceContext) -> list[str]:
    if not command.startswith("/"):
        return [f"{name}: {command!r} is not an absolute path"]
    try:
        present = ctx.transport.exists(command)
    except OSError as err:
        return [f"{name}: cannot check {command}: {err}"]
    return [] if present else [f"{name}: {command} does not exist"]


def _check_line(verb: str, command: str, ctx: ServiceContext) -> CheckLine:
    name = f"{NAME} {KEYS[verb]}"
    if not command:
        return CheckLine.ok(name, f"not set: {verb} requests are refused with return value {int(Code.NO_COMMAND)}")
    if not command.startswith("/"):
        return CheckLine.fail(name, f"{command!r} is not an absolute path")
    result = ctx.transport.run(["test", "-f", command, "-a", "-x", command])
    if result.ok:
        return CheckLine.ok(name, f"{command} is an executable file")
    if result.returncode != 1:
        return CheckLine.warn(name, f"cannot tell whether {command} is executable: {result.describe()}")
    return CheckLine.fail(name, f"{command} is not an executable file (chmod +x it, or name the program)")
