"""Backup/Rsnapshot's hooks for operators: --check lines, status details, return values.

A mixin of the plugin class, so the plugin stays one object registered under
one entry point, and these hooks stay out of the request path.
"""
from __future__ import annotations

import glob
import os

from provisioning.base.checkline import CheckLine
from provisioning.hooks.specs import hookimpl
from provisioning.hooks.service import ServiceContext
from provisioning.transport import LocalCLI

from provisioning_backup_rsnapshot import checks, jailstatus
from provisioning_backup_rsnapshot.codes import Code
from provisioning_backup_rsnapshot.settings import Settings

# The meaning of each return value, for status and retry (docs/return-values.md
# says the same at more length; keep the two in step).
MEANINGS = {
    Code.SUCCESS: "the request was done",
    Code.UNDEFINED_ERROR: "undefined error (the log has the details)",
    Code.USER_NOT_PRESENT_IN_BACKEND: "the entry has no uid, uidNumber or gidNumber: make it a posixAccount",
    Code.RUNTIME_NOT_SATISFIED: "SET_QUOTA_CMD, CREATE_CHROOT_CMD or RSNAPSHOT_CMD is not installed, "
                                "or Python is too old: install what the log names",
    Code.CANNOT_CHECK_HOME_DIR_PRESENCE: "cannot check whether the home exists (a file in its place, "
                                         "permissions): fix the path the log names",
    Code.CANNOT_CREATE_HOME_DIR: "CREATE_CHROOT_CMD failed or made no home, or a folder of the layout or "
                                 "the owner marker could not be made: read the script's message in the log",
    Code.CANNOT_SET_QUOTA: "SET_QUOTA_CMD failed: check user quota on MOUNTPOINT",
    Code.CANNOT_CREATE_RSNAPSHOT_CONFIGURATION: "the rsnapshot configuration could not be written or failed "
                                                "configtest: read rsnapshot's error in the log",
    Code.CANNOT_REMOVE_RSNAPSHOT_CONFIGURATION: "the account's rsnapshot configuration could not be removed",
    Code.CANNOT_ARCHIVE_ACCOUNT_DATA: "the account directory could not be archived or removed "
                                      "(ARCHIVE_DIR on another filesystem?)",
    Code.PATH_OUTSIDE_BACKUP_ROOT: "homeDirectory leads outside BACKUP_ROOT (.., symlinks) or overlaps "
                                   "ARCHIVE_DIR: fix homeDirectory",
    Code.INVALID_ACCOUNT_DATA: "a value of the entry is not what an account may have (uid, uidNumber, "
                               "sstQuota missing or 0, intervals, homeDirectory): fix the entry",
    Code.AMBIGUOUS_IDENTITY: "uid, uidNumber, gidNumber or homeDirectory has several values, or the DN "
                             "names another uid: nothing was changed",
    Code.NOT_THIS_ENTRYS_ACCOUNT: "the account directory belongs to another entry (owner marker, or the "
                                  "owner of incoming/): nothing was changed",
    Code.ACCOUNT_DIRECTORY_MISPLACED: "homeDirectory puts the account outside the uid's place under "
                                      "BACKUP_ROOT: nothing was changed",
    Code.UNSAFE_ACCOUNT_PATH: "a symbolic link, or a folder not root's, where root must work: "
                              "nothing was changed",
}

# Account directories of the stoney layout: ROOT/<digit>/<3 digits>/<3 digits>/<uid>.
ACCOUNT_GLOB = "[0-9]/[0-9][0-9][0-9]/[0-9][0-9][0-9]/[0-9]*"


class OperatorHooks:
    """provisioning_check, provisioning_status and provisioning_return_values."""

    @hookimpl
    def provisioning_check(self, ctx: ServiceContext) -> list[CheckLine]:
        """Commands, folders, the template under rsnapshot configtest, user quota on MOUNTPOINT."""
        return checks.check(ctx)

    @hookimpl
    def provisioning_status(self, ctx: ServiceContext) -> dict[str, str]:
        """How many rsnapshot configurations, account directories and archived accounts there are;
        the jails by image (the jail job's figures)."""
        settings = Settings.from_config(ctx.config)
        jails = jailstatus.details(jailstatus.read(ctx.transport, settings.backup_root))
        if ctx.config.service["Service"]["TRANSPORTAPI"] != LocalCLI.__name__:
            host = ctx.config.service["Gateway"]["HOST"]
            return {"files": f"on {host} (TRANSPORTAPI CLISSH): not counted", **jails}
        before, _, after = settings.config_file.partition("%uid%")
        configs = glob.glob(glob.escape(before) + "[0-9]*" + glob.escape(after))
        accounts = [p for p in glob.glob(os.path.join(glob.escape(settings.backup_root), ACCOUNT_GLOB))
                    if os.path.isdir(p) and os.path.basename(p).isdigit()]
        archived = glob.glob(os.path.join(glob.escape(settings.archive_dir), "[0-9]*-*"))
        return {"rsnapshot configurations": str(len(configs)),
                "account directories": str(len(accounts)),
                "archived accounts": str(len(archived)), **jails}

    @hookimpl
    def provisioning_warnings(self, ctx: ServiceContext) -> list[str]:
        """A jail stale (old image, copied programs) for more than a day."""
        settings = Settings.from_config(ctx.config)
        return jailstatus.warnings(jailstatus.read(ctx.transport, settings.backup_root))

    @hookimpl
    def provisioning_return_values(self) -> dict[int, str]:
        """Code.* with their meanings."""
        return {int(code): f"{code.name}: {MEANINGS[code]}" for code in Code}
