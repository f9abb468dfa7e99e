"""Which entry an account directory belongs to, proven before root touches it.

An account directory is this entry's when its marker ``<directory>/.entryUUID``
(root's, 0600) holds this entry's entryUUID. The plugin never leaves a
directory of its own without one: it makes a new account directory under a
temporary name, writes the marker in it and only then moves it into place
(``home.build``). A directory without a marker was made before markers
existed: it is adopted (the marker written) when its ``incoming/`` is a
folder owned by the entry's uidNumber, which is all an old account can show.
Anything else is refused with NOT_THIS_ENTRYS_ACCOUNT before any change: a
folder nobody can prove to be this entry's is neither finished nor deleted
by it, whatever the few paths looked at show (its ``snapshots/`` may hold
someone's data).
"""
from __future__ import annotations

import enum
import logging

from provisioning.api import Transport

from provisioning_backup_rsnapshot.account import Account, Layout
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.survey import Node, read_small_file

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    NEW = "new"         # no account directory yet: this entry may create it
    OURS = "ours"       # the marker names this entry
    ADOPT = "adopt"     # no marker; incoming/ belongs to this entry's uidNumber


def judge(account: Account, uuid: str | None, place: Layout, nodes: dict[str, Node | None],
          transport: Transport) -> Verdict:
    """Whether this entry may work on the account directory; StepError 13 (or 15) if not."""
    marker = nodes[place.marker]
    readable = uuid is not None and nodes[place.directory] is not None and marker is not None \
        and marker.is_file and marker.uid == 0
    owner = read_small_file(place.marker, transport).strip() if readable else None
    return decide(account, uuid, place, nodes, owner)


def decide(account: Account, uuid: str | None, place: Layout, nodes: dict[str, Node | None],
           owner: str | None) -> Verdict:
    """judge() with the marker's text already read (``owner``; None when there is none to read)."""
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
        if owner == uuid:
            return Verdict.OURS
        raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                        f"{place.directory} belongs to the entry with entryUUID {owner!r}, "
                        f"not to this one ({uuid})")
    incoming = nodes[place.incoming.rstrip("/")]
    if incoming is not None and incoming.is_dir and incoming.uid == account.uid_number:
        return Verdict.ADOPT
    seen = incoming.describe() if incoming else "absent"
    raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                    f"{place.directory} exists without an owner marker and its incoming/ is {seen}, "
                    f"not a folder of uidNumber {account.uid_number}: nothing shows it is this entry's "
                    f"account (if it is, an operator writes the entryUUID {uuid} to {place.marker})")


def mark(place: Layout, uuid: str, verdict: Verdict, dn: str, transport: Transport) -> None:
    """Write the marker for an adopted account (NEW got it with its directory, OURS has it already)."""
    if verdict is not Verdict.ADOPT:
        return
    log.warning("%s: %s has no owner marker (made before markers existed); its incoming/ belongs to "
                "this entry's uidNumber, so it is adopted as this entry's (entryUUID %s)",
                dn, place.directory, uuid)
    write_marker(place.marker, uuid, transport)


def write_marker(path: str, uuid: str, transport: Transport) -> None:
    """Write the owner marker ``path`` (root's 0600) naming ``uuid``; StepError 5 if it cannot be."""
    try:
        transport.write_file(path, f"{uuid}\n".encode(), mode=0o600)
    except OSError as err:
        raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot write the owner marker {path}: {err}") from err
