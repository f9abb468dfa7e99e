"""What delete does with an account's data: archive (default), keep or remove."""
from __future__ import annotations

import logging

from provisioning.api import Transport

from provisioning_backup_rsnapshot.codes import Code, StepError

log = logging.getLogger(__name__)

MAX_SAME_STAMP = 1000


def archive_target(archive_dir: str, uid: str, stamp: str, transport: Transport) -> str:
    """A name in ARCHIVE_DIR that no earlier archive has: ``<uid>-<stamp>``, else ``-2``, ``-3``...

    The stamp has one-second resolution, and the same uid can be deleted
    twice in one second (added again in between). A rename onto an existing
    archive would fail (or, onto an empty folder, replace it), so the name
    is checked free before delete changes anything.
    """
    try:
        for number in range(1, MAX_SAME_STAMP + 1):
            target = f"{archive_dir}/{uid}-{stamp}" + (f"-{number}" if number > 1 else "")
            if not transport.exists(target):
                return target
    except OSError as err:
        raise StepError(Code.CANNOT_ARCHIVE_ACCOUNT_DATA,
                        f"cannot archive: cannot look into ARCHIVE_DIR {archive_dir}: {err}") from err
    raise StepError(Code.CANNOT_ARCHIVE_ACCOUNT_DATA,
                    f"cannot archive: {MAX_SAME_STAMP} archives of uid {uid} at {stamp} in {archive_dir}")


def dispose(directory: str, present: bool, how: str, target: str | None, archive_dir: str,
            transport: Transport) -> str:
    """Deal with ``directory`` as DELETE_DATA says; return what was done, for the log.

    Archiving is one rename to ``target`` (from archive_target): the data is
    never copied, so it is never half-archived. A directory that is already
    gone (``present`` False) is fine.
    """
    if not present:
        return f"{directory} is already gone"
    if how == "keep":
        return f"{directory} kept (DELETE_DATA = keep)"
    try:
        if how == "remove":
            transport.remove_tree(directory)
            return f"{directory} {'would be removed' if transport.dry_run else 'removed'} (DELETE_DATA = remove)"
        transport.makedirs(archive_dir, mode=0o700)
        transport.rename(directory, target)
        return f"{directory} {'would be archived' if transport.dry_run else 'archived'} as {target}"
    except OSError as err:
        raise StepError(Code.CANNOT_ARCHIVE_ACCOUNT_DATA,
                        f"cannot {how} {directory}: {err}") from err
