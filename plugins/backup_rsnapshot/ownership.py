"""Which entry an account directory belongs to, proven before root touches it.

An account directory is this entry's when its marker ``<directory>/.entryUUID``
(root's, 0600, written when the plugin creates the directory) holds this
entry's entryUUID. A directory without a marker was made before markers
existed: it is adopted (the marker written) when its ``incoming/`` is a
folder owned by the entry's uidNumber, which is all an old account can show.
Anything else is refused with NOT_THIS_ENTRYS_ACCOUNT before any change.
"""
from __future__ import annotations

import enum
import logging

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.survey import Node, read_small_file

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    NEW = "new"         # no account directory yet: this entry may create it
    OURS = "ours"       # the marker names this entry
    ADOPT = "adopt"     # no marker; incoming/ belongs to this entry's uidNumber
    RECLAIM = "reclaim"  # no marker, no incoming/, only root's folders: an add cut short before its marker


def judge(account: Account, uuid: str | None, place: Layout, nodes: dict[str, Node | None],
          transport: Transport) -> Verdict:
    """Whether this entry may work on the account directory; StepError 13 (or 15) if not."""
    directory = nodes[place.directory]
    if uuid is None:
        raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                        "the entry has no entryUUID: the account directory could not be tied to it")
    if directory is None:
        return Verdict.NEW
    marker = nodes[place.marker]
    if marker is not None:
        if not (marker.is_file and marker.uid == 0):
            raise StepError(Code.UNSAFE_ACCOUNT_PATH,
                            f"the owner marker {place.marker} is {marker.describe()}, not root's file")
        owner = read_small_file(place.marker, transport).strip()
        if owner == uuid:
            return Verdict.OURS
        raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                        f"{place.directory} belongs to the entry with entryUUID {owner!r}, "
                        f"not to this one ({uuid})")
    incoming = nodes[place.incoming.rstrip("/")]
    if incoming is not None and incoming.is_dir and incoming.uid == account.uid_number:
        return Verdict.ADOPT
    if incoming is None and _only_roots(place, nodes):
        # A customer never had a folder here (incoming/ is theirs alone, and
        # nothing else is theirs): nothing to protect, so whoever asks first
        # may finish it. This is what an add interrupted by a crash between
        # the account directory and its marker leaves.
        return Verdict.RECLAIM
    seen = incoming.describe() if incoming else "absent"
    raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                    f"{place.directory} exists without an owner marker and its incoming/ is {seen}, "
                    f"not a folder of uidNumber {account.uid_number}: nothing shows it is this entry's account")


def _only_roots(place: Layout, nodes: dict[str, Node | None]) -> bool:
    """Everything looked at inside the account directory is root's folder (or absent)."""
    inside = [node for path, node in nodes.items()
              if path.startswith(place.directory.rstrip("/") + "/") and path != place.marker]
    return all(node is None or (node.is_dir and node.uid == 0) for node in inside)


def mark(place: Layout, uuid: str, verdict: Verdict, dn: str, transport: Transport) -> None:
    """Write the marker for a new or adopted account (OURS has it already)."""
    if verdict is Verdict.OURS:
        return
    if verdict is Verdict.ADOPT:
        log.warning("%s: %s has no owner marker (made before markers existed); its incoming/ belongs to "
                    "this entry's uidNumber, so it is adopted as this entry's (entryUUID %s)",
                    dn, place.directory, uuid)
    elif verdict is Verdict.RECLAIM:
        log.warning("%s: %s has no owner marker and nothing of a customer's (an add cut short?): "
                    "it is finished as this entry's (entryUUID %s)", dn, place.directory, uuid)
    try:
        transport.write_file(place.marker, f"{uuid}\n".encode(), mode=0o600)
    except OSError as err:
        raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot write the owner marker {place.marker}: {err}") from err
