"""What delete does with an account's data: archive (default), keep or remove."""
from __future__ import annotations

import logging

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.codes import Code, StepError

log = logging.getLogger(__name__)


def dispose(directory: str, uid: str, how: str, archive_dir: str, stamp: str,
            transport: Transport) -> str:
    """Deal with ``directory`` as DELETE_DATA says; return what was done, for the log.

    Archiving is one rename into ``archive_dir/<uid>-<stamp>``: the data is
    never copied, so it is never half-archived. A directory that is already
    gone is fine.
    """
    try:
        if not transport.exists(directory):
            return f"{directory} is already gone"
        if how == "keep":
            return f"{directory} kept (DELETE_DATA = keep)"
        if how == "remove":
            transport.remove_tree(directory)
            return f"{directory} {'would be removed' if transport.dry_run else 'removed'} (DELETE_DATA = remove)"
        transport.makedirs(archive_dir, mode=0o700)
        target = f"{archive_dir}/{uid}-{stamp}"
        transport.rename(directory, target)
        return f"{directory} {'would be archived' if transport.dry_run else 'archived'} as {target}"
    except OSError as err:
        raise StepError(Code.CANNOT_ARCHIVE_ACCOUNT_DATA,
                        f"cannot {how} {directory}: {err}") from err
