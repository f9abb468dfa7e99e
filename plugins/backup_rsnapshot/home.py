"""The account's chrooted home: presence check, creation script, backup folders."""
from __future__ import annotations

import logging

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.codes import Code, StepError

log = logging.getLogger(__name__)


def ensure_home(account: Account, place: Layout, create_cmd: str, transport: Transport) -> None:
    """Create the chroot and home if absent, then the folders rsnapshot needs.

    CREATE_CHROOT_CMD is called as ``CMD JAIL HOME UID UIDNUMBER GIDNUMBER``
    (HOME as seen inside the jail). The shipped scripts build the home under
    a temporary name and rename it last, so a home that exists is complete.
    """
    if not _present(place.home_path, transport):
        argv = [create_cmd, place.jail, place.home, account.uid,
                str(account.uid_number), str(account.gid_number)]
        result = transport.run(argv)
        if not result.ok:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"creating the home failed: {result.describe()}")
        if not transport.dry_run and not _present(place.home_path, transport):
            raise StepError(Code.CANNOT_CREATE_HOME_DIR,
                            f"{create_cmd} exited 0 but {place.home_path} does not exist")
        log.info("%s: home %s %s", account.dn, place.home_path, "would be created" if transport.dry_run else "created")
    # Backups land in incoming/ (the owner's); snapshots in .snapshots/
    # (root's, readable): rsnapshot refuses a configuration without them.
    try:
        transport.makedirs(place.incoming.rstrip("/"), mode=0o700, owner=account.owner)
        transport.makedirs(place.snapshot_root.rstrip("/"), mode=0o755, owner=(0, 0))
    except OSError as err:
        raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot create the backup folders: {err}") from err


def _present(path: str, transport: Transport) -> bool:
    try:
        return transport.exists(path)
    except OSError as err:
        raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE, f"cannot check {path}: {err}") from err
