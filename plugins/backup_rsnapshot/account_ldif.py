"""createBackupAccountLDIF: the four LDIF files of the wiki's test walk-through.

For one uid it writes, into the output folder:

    01_add_<uid>.ldif     a new backup account requesting add
    02_modify_<uid>.ldif  more quota and daily snapshots, requesting modify
    03_delete_<uid>.ldif  sstIsActive FALSE, requesting delete
    04_remove_<uid>.ldif  removes the entry from the directory

The entries use only attributes that the stoney schema (and our subset of
it, etc/Provisioning/schema/stoney-backup.ldif) allows on account,
posixAccount, shadowAccount, sstBackup, sstProvisioning and sstRelationship.
Given and surname go into cn: those classes have no givenName or sn.
"""
from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import ldap.dn

from provisioning_backup_rsnapshot.account import UID, pattern_directory

DEFAULT_BASE = "ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org"
GIB = 1024 ** 3


def _line(name: str, value: str) -> str:
    """An LDIF line; base64 unless the value is RFC 2849's SAFE-STRING.

    A line break in a value must never start a line of its own: that would
    let a name passed on the command line add attributes to the entry.
    """
    safe = (value.isascii() and value == value.strip() and not value.startswith((":", "<"))
            and not any(c in value for c in "\n\r\0"))
    return f"{name}: {value}" if safe else f"{name}:: {base64.b64encode(value.encode()).decode()}"


def _request(mode: str) -> list[str]:
    return [f"replace: sstProvisioningMode\nsstProvisioningMode: {mode}",
            "replace: sstProvisioningState\nsstProvisioningState: 0",
            "replace: sstProvisioningExecutionDate\nsstProvisioningExecutionDate: 0"]


def _modify(dn: str, changes: list[str]) -> str:
    return f"{_line('dn', dn)}\nchangetype: modify\n" + "\n-\n".join(changes) + "\n-\n"


def account_ldifs(args: argparse.Namespace) -> dict[str, str]:
    """File name -> LDIF text for the four steps."""
    uid = args.uid
    dn = f"uid={uid},{args.base}"
    home = f"{pattern_directory(uid, args.backup_root)}/chroot/./home/{uid}"
    entry = [
        _line("dn", dn), "objectClass: account", "objectClass: posixAccount", "objectClass: shadowAccount",
        "objectClass: sstBackup", "objectClass: sstProvisioning", "objectClass: sstRelationship",
        f"uid: {uid}", f"uidNumber: {uid}", f"gidNumber: {uid}",
        _line("cn", f"{args.givenname} {args.surname}"),
        f"homeDirectory: {home}", "loginShell: /bin/sh",
        "sstBackupIntervalHourly: 0", "sstBackupIntervalDaily: 7", "sstBackupIntervalWeekly: 4",
        "sstBackupIntervalMonthly: 3", "sstBackupIntervalYearly: 0",
        "sstBackupWarningDays: 3", "sstBackupWarningNumbers: 3", "sstBackupWarningOn: TRUE",
        "sstNotificationWarningLevel: 85", "sstNotificationWarningMedium: mail",
        "sstUseSelfcare: TRUE", "sstUseSSH: TRUE", "sstIsActive: TRUE",
        f"sstQuota: {args.quota}",
        _line("sstBelongsToResellerUID", args.reseller), _line("sstBelongsToCustomerUID", args.customer),
        _line("sstBelongsToPersonUID", args.people),
        "sstProvisioningMode: add", "sstProvisioningState: 0", "sstProvisioningExecutionDate: 0",
    ]
    if args.host:
        entry.append(_line("host", args.host))
    return {
        f"01_add_{uid}.ldif": "\n".join(entry) + "\n",
        f"02_modify_{uid}.ldif": _modify(dn, [f"replace: sstQuota\nsstQuota: {2 * args.quota}",
                                              "replace: sstBackupIntervalDaily\nsstBackupIntervalDaily: 14"]
                                         + _request("modify")),
        f"03_delete_{uid}.ldif": _modify(dn, ["replace: sstIsActive\nsstIsActive: FALSE"] + _request("delete")),
        f"04_remove_{uid}.ldif": f"{_line('dn', dn)}\nchangetype: delete\n",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="createBackupAccountLDIF", description=__doc__.splitlines()[0])
    parser.add_argument("--uid", required=True, help="the account's uid (digits, 4 to 10 of them)")
    parser.add_argument("--reseller", default="4000000", help="sstBelongsToResellerUID (default 4000000)")
    parser.add_argument("--customer", default="4000001", help="sstBelongsToCustomerUID (default 4000001)")
    parser.add_argument("--people", default="4000002", help="sstBelongsToPersonUID (default 4000002)")
    parser.add_argument("--givenname", default="Givenname", help='given name, in cn (default "Givenname")')
    parser.add_argument("--surname", default="Surname", help='surname, in cn (default "Surname")')
    parser.add_argument("--output", default="data", help="folder for the LDIF files (default ./data)")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"parent DN of the account (default {DEFAULT_BASE})")
    parser.add_argument("--backup-root", default="/var/backup",
                        help="BACKUP_ROOT the homeDirectory lies in (default /var/backup)")
    parser.add_argument("--quota", type=int, default=GIB, help="sstQuota in bytes, 1 or more (default 1 GiB)")
    parser.add_argument("--host", help="host attribute: the backup server that serves the account")
    args = parser.parse_args(argv)
    if not UID.fullmatch(args.uid) or len(args.uid) < 4:
        parser.error(f"--uid {args.uid!r}: 4 to 10 digits expected")
    if args.quota < 1:
        # 0 would be "no limit at all" for setquota: the plugin refuses it (return value 11).
        parser.error("--quota must be at least 1 (bytes)")
    if not ldap.dn.is_dn(args.base):
        parser.error(f"--base {args.base!r} is not a DN")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name, text in account_ldifs(args).items():
        (output / name).write_text(text, encoding="utf-8")
        print(output / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
