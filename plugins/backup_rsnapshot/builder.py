"""How CREATE_CHROOT_CMD runs: the shipped builder in the daemon, anything else as a command.

The shipped builders (prov-backup-create-chroot, prov-backup-create-home)
cost a Python start per account when run as programs, 72 ms of CPU for the
full jail. When CREATE_CHROOT_CMD is left out, or names one of them wherever
it is installed (a console script of any installation, or a checkout's bin/
wrapper; links followed), the daemon calls the same code instead
(jailcalls.build through Transport.call): in its own process with LocalCLI,
in its helper on the gateway with CLISSH. The full jail's programs are then
hard links to the jail image. Any other CREATE_CHROOT_CMD is an operator's
own script and runs as the wiki says: ``CMD JAIL HOME UID UIDNUMBER
GIDNUMBER``, exit 0 for success.
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Callable

from provisioning.transport import Transport

from provisioning_backup_rsnapshot import chroot, jailcalls, jailfs, jailimage, relink
from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.settings import Settings

log = logging.getLogger(__name__)

# What Transport.call sends to the gateway's helper, in the order it loads them (each imports
# those before it by its last name there).
MODULES = (jailfs, jailimage, relink, chroot, jailcalls)
# What the shipped builders' files say, by kind: the console script pip (distlib) writes, the
# one setuptools writes, and the checkout's bin/ wrapper.
SIGNATURES = {
    "chroot": ("from provisioning_backup_rsnapshot.chroot import main_chroot",
               "'console_scripts','prov-backup-create-chroot'", "provisioning-shipped-builder: chroot"),
    "home": ("from provisioning_backup_rsnapshot.chroot import main_home",
             "'console_scripts','prov-backup-create-home'", "provisioning-shipped-builder: home"),
}
# A console script is a few hundred bytes; read no more than this to recognise one.
SCRIPT_MAX = 4096


@dataclass(frozen=True)
class Builder:
    """CREATE_CHROOT_CMD as it will run: ``kind`` chroot or home (the shipped builder), or None (a command)."""

    command: str
    kind: str | None
    images: dict | None          # for the full jail: {"backup_root", "programs", "limit"}

    @property
    def shown(self) -> str:
        return self.command or "prov-backup-create-chroot (CREATE_CHROOT_CMD left out)"

    def describe(self) -> str:
        if self.kind is None:
            return f"CREATE_CHROOT_CMD {self.command} runs as a command for every new home"
        return (f"CREATE_CHROOT_CMD {self.shown} is the shipped {'jail' if self.kind == 'chroot' else 'home'} "
                f"builder: it runs in the daemon (with CLISSH, in its helper on the gateway), "
                f"no program started per account")

    def create(self, account: Account, place: Layout, transport: Transport,
               built: Callable[[], None] | None = None) -> None:
        """Make the jail and home ``place`` names; StepError 5 when it fails.

        ``built``, if given, is called once the jail is made.
        """
        argv = [place.jail, place.home, account.uid, str(account.uid_number), str(account.gid_number)]
        if self.kind is None:
            self._run(argv, transport)
        else:
            self._call(account, argv, transport)
        if built is not None and not transport.dry_run:
            built()
        if not transport.dry_run and not transport.exists(place.home_path):
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"{self.shown} {'exited 0' if self.kind is None else 'succeeded'} "
                                                         f"but {place.home_path} does not exist")
        # DEBUG: the request's summary line names the home as well.
        log.debug("%s: home %s %s", account.dn, place.home_path, "would be created" if transport.dry_run else "created")

    def _run(self, argv: list[str], transport: Transport) -> None:
        result = transport.run([self.command, *argv])
        if not result.ok:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"creating the home failed: {result.describe()}")

    def _call(self, account: Account, argv: list[str], transport: Transport) -> None:
        shown = f"{shlex.join([self.shown.split(' ')[0], *argv])} (the shipped builder)"
        try:
            answer = transport.call(MODULES, "build", self.kind, argv, self.images, shown=shown)
        except OSError as err:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"creating the home failed: {shown}: {err}") from err
        if answer is None:                      # a dry run
            return
        if "refused" in answer:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"creating the home failed: {shown}: {answer['refused']}")
        linked = answer["linked"]
        if linked:
            log.debug("%s: jail %s: %d files from the jail image %s (%s)", account.dn, argv[0], linked["moved"],
                      linked["image"], ", ".join(f"{n} by {how}" for how, n in sorted(linked["how"].items())))


def choose(settings: Settings, transport: Transport) -> Builder:
    """The Builder for CREATE_CHROOT_CMD (looked at through ``transport``: on the gateway with CLISSH)."""
    kind = shipped_kind(settings.create_chroot_cmd, transport)
    images = None
    if kind == "chroot":
        images = {"backup_root": settings.backup_root, "programs": settings.jail_programs,
                  "limit": settings.jail_link_limit}
    return Builder(settings.create_chroot_cmd, kind, images)


def shipped_kind(command: str, transport: Transport) -> str | None:
    """chroot or home when ``command`` is a shipped builder (or empty: chroot), None otherwise."""
    if not command:
        return "chroot"
    try:
        text = transport.read_small(transport.realpath(command), SCRIPT_MAX)
    except OSError:
        return None                 # cannot be read here: run it, as any command
    for kind, signatures in SIGNATURES.items():
        if text.startswith("#!") and any(signature in text for signature in signatures):
            return kind
    return None
