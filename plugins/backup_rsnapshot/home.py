"""The account's folders: checked, created, and brought to the current layout.

The rule (DESIGN.md, root's rules): no folder root works in, and none on the
way from ``/`` to snapshot_root, is owned by or writable for the customer. So
everything in the account directory is root's except ``incoming/`` (and what
the chroot script gives the customer inside the home, such as ``.ssh/``),
and snapshot_root lies next to the jail, root's 0700, where the customer
cannot reach it (see account.Layout).

Accounts made before this layout had a home owned by the customer with
``.snapshots/`` inside it; the customer could rename that and put a link in
its place, and root's ``rsnapshot`` then wrote wherever the link pointed.
``settle`` brings such an account to the current layout on its next add or
modify: the home becomes root's, and the old ``.snapshots/`` moves to
snapshot_root if it is still root's folder.
"""
from __future__ import annotations

import logging
import posixpath
import re
from typing import Callable

from provisioning.api import Transport

from provisioning_backup_rsnapshot.account import MARKER_NAME, Account, Layout
from provisioning_backup_rsnapshot.builder import Builder
from provisioning_backup_rsnapshot.codes import Code, StepError
from provisioning_backup_rsnapshot.ownership import Verdict, mark, write_marker
from provisioning_backup_rsnapshot.survey import Node, survey

log = logging.getLogger(__name__)

ROOT = (0, 0)
# entryUUID as slapd writes it (RFC 4122 text): it names the staging folder of a new account.
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def paths(place: Layout, backup_root: str) -> list[str]:
    """Every path a request looks at, for one survey."""
    return [*place.above(backup_root), *place.chain, place.marker, place.incoming,
            place.old_snapshot_root, place.snapshot_root]


def check_paths(place: Layout, backup_root: str, nodes: dict[str, Node | None]) -> None:
    """StepError 15 for a link or a foreign folder where root must work, 4 for a file instead of a folder.

    Above the account directory nothing is fixed: those folders are not the
    account's. Inside it, a folder with the wrong owner is fixed by ``settle``
    (that is the migration), but a link is never followed or replaced.
    """
    for folder in place.above(backup_root) + [place.directory]:
        node = nodes[folder]
        if node is None:
            continue
        # BACKUP_ROOT itself may be the administrator's link (/var/backup -> /data/backup).
        if node.is_link and folder == backup_root and node.uid == 0:
            continue
        if not node.is_dir or not node.root_only():
            raise StepError(Code.UNSAFE_ACCOUNT_PATH,
                            f"{folder} is {node.describe()}: every folder down to the account directory "
                            f"must be root's and writable by nobody else")
    for path in place.chain[1:] + [place.incoming.rstrip("/"), place.snapshot_root.rstrip("/")]:
        node = nodes[path]
        if node is None:
            continue
        if node.is_link:
            raise StepError(Code.UNSAFE_ACCOUNT_PATH, f"{path} is a symbolic link: root does not follow it")
        if not node.is_dir:
            raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE, f"{path} is {node.describe()}, not a folder")


def build(account: Account, place: Layout, uuid: str, verdict: Verdict, nodes: dict[str, Node | None],
          builder: Builder, backup_root: str, transport: Transport,
          built: Callable[[], None] | None = None, waiting: Callable[[], None] | None = None) -> None:
    """Create what is missing and settle the layout, for an account judged this entry's.

    ``built`` is called once CREATE_CHROOT_CMD made the jail (see Builder.create);
    ``waiting`` just before it runs, when the thread is about to wait for it
    (the plugin starts the steps that can run beside it then).
    """
    if verdict is Verdict.NEW:
        # Each missing folder down to the account directory gets its mode here, not from
        # the daemon's umask: one that others could write would refuse every account below it.
        for folder in place.above(backup_root)[1:]:
            if nodes[folder] is None:
                _folder(folder, 0o755, ROOT, transport)
        _create_directory(place, uuid, transport)
    mark(place, uuid, verdict, account.dn, transport)
    if nodes[place.home_path] is None:
        if waiting is not None:
            waiting()
        builder.create(account, place, transport, built)
        # Whatever the script made (an operator's own script may still make
        # the old layout) is looked at again before it is settled.
        nodes = survey(paths(place, backup_root), transport)
        check_paths(place, backup_root, nodes)
    settle(account, place, nodes, transport)


def _create_directory(place: Layout, uuid: str, transport: Transport) -> None:
    """The account directory, root's 0755, with its owner marker in it from the start.

    It is made under a staging name beside its place, marked, and then moved
    into place (a rename: there at once or not at all), so no crash leaves
    an account directory of ours without a marker: ownership.judge refuses
    any such folder. A crash before the move leaves the staging folder (root's,
    holding the marker only), which the entry's next attempt takes up again.
    """
    if not UUID_TEXT.fullmatch(uuid):
        raise StepError(Code.NOT_THIS_ENTRYS_ACCOUNT,
                        f"the entryUUID {uuid!r} is not a UUID: the account directory could not be tied to it")
    parent, name = posixpath.split(place.directory)
    staging = f"{parent}/.{name}.new-{uuid}"
    _folder(staging, 0o755, ROOT, transport)
    write_marker(f"{staging}/{MARKER_NAME}", uuid, transport)
    try:
        transport.rename(staging, place.directory)
    except OSError as err:
        raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot move {staging} to {place.directory}: {err}") from err


def settle(account: Account, place: Layout, nodes: dict[str, Node | None], transport: Transport) -> None:
    """Bring the folders to the layout (idempotent: nothing is done when all is in place)."""
    home_was_theirs = False
    # Top down: a folder is made root's before anything inside it is looked at again.
    for folder in place.chain:
        node = nodes[folder]
        if node is None or not node.root_only():
            if node is not None:
                log.warning("%s: %s was %s; now root's 0755 (the customer keeps only incoming/)",
                            account.dn, folder, node.describe())
                home_was_theirs = True
            _folder(folder, 0o755, ROOT, transport)
    incoming = nodes[place.incoming.rstrip("/")]
    if incoming is None or (incoming.uid, incoming.gid) != account.owner or incoming.mode != 0o700:
        _folder(place.incoming.rstrip("/"), 0o700, account.owner, transport)
    snapshots = _move_old_snapshots(account, place, nodes, home_was_theirs, transport)
    if snapshots is None or not (snapshots.uid == 0 and snapshots.mode == 0o700):
        _folder(place.snapshot_root.rstrip("/"), 0o700, ROOT, transport)


def _move_old_snapshots(account: Account, place: Layout, nodes: dict[str, Node | None],
                        home_was_theirs: bool, transport: Transport) -> Node | None:
    """Move ``<home>/.snapshots`` to snapshot_root if it is root's folder; return snapshot_root's Node.

    The customer could rename entries in a home they owned until ``settle``
    made it root's: what is there now is looked at again before it is moved.
    """
    old, new = place.old_snapshot_root, place.snapshot_root.rstrip("/")
    if nodes[old] is None:
        return nodes[new]
    if home_was_theirs and not transport.dry_run:
        nodes = {**nodes, **survey([old, new], transport)}
    found, target = nodes[old], nodes[new]
    if found is None:
        return target
    if target is None and found.is_dir and found.uid == 0:
        try:
            transport.rename(old, new)
        except OSError as err:
            raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot move {old} to {new}: {err}") from err
        log.info("%s: snapshots moved from %s to %s, out of the customer's reach", account.dn, old, new)
        return found
    log.warning("%s: %s (%s) left where it is: %s", account.dn, old, found.describe(),
                "snapshot_root exists already" if target is not None else "not root's folder")
    return target


def _folder(path: str, mode: int, owner: tuple[int, int], transport: Transport) -> None:
    try:
        transport.makedirs(path, mode=mode, owner=owner)
    except OSError as err:
        raise StepError(Code.CANNOT_CREATE_HOME_DIR, f"cannot create {path} (mode {mode:04o}): {err}") from err
