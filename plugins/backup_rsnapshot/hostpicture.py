"""What the host holds, read once for an audit: account directories, configurations, quotas.

The pass itself is auditcalls.py, run where the files are (through
``Transport.call``); this module keeps its answer small enough for 100,000
accounts (each account's nodes packed into a few bytes, each configuration
as its digest) and turns it back into survey Nodes for the plugin's own
checks (home.check_paths, ownership.decide), which the audit shares with
the request hooks.
"""
from __future__ import annotations

import functools
import posixpath
import struct
import sys
from dataclasses import dataclass, field

from provisioning.api import Transport

from provisioning_backup_rsnapshot import auditcalls, builder, quotareport
from provisioning_backup_rsnapshot.quotareport import QuotaReport
from provisioning_backup_rsnapshot.settings import Settings
from provisioning_backup_rsnapshot.survey import Node

# What Transport.call sends to the gateway's helper (the jail modules first: the jails are looked at too).
MODULES = (*builder.MODULES, quotareport, auditcalls)
BUCKETS = "0123456789"
KINDS = ("directory", "symbolic link", "regular file", "special file")
# One packed node: kind (0: nothing there), mode, uid, gid.
PACKED = struct.Struct("<BHII")


@dataclass(frozen=True)
class HostAccount:
    """One account directory as the pass saw it (nodes packed in layout_paths' order)."""

    path: str
    marker: str | None
    packed: bytes
    jail: str | None = None
    error: str | None = None

    def node(self, relative: str) -> Node | None:
        """What is at ``relative`` below the account directory ("" for the directory itself)."""
        index = _positions(posixpath.basename(self.path))[relative]
        kind, mode, uid, gid = PACKED.unpack_from(self.packed, index * PACKED.size)
        return None if kind == 0 else Node(KINDS[kind - 1], uid, gid, mode)

    def knows(self, relative: str) -> bool:
        """Whether the pass looked at ``relative`` (the paths of the stoney layout)."""
        return relative in _positions(posixpath.basename(self.path))


@functools.lru_cache(maxsize=16)
def _positions(uid: str) -> dict[str, int]:
    """Where each path's node lies in HostAccount.packed (the few of one account, asked for in a row)."""
    return {"": 0, **{name: n + 1 for n, name in enumerate(auditcalls.layout_paths(uid))}}


@dataclass
class HostPicture:
    """Everything the audit compares the directory with."""

    accounts: dict[str, HostAccount] = field(default_factory=dict)
    folders: dict[str, Node | None] = field(default_factory=dict)
    configs: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)   # uid -> (kind, SHA-256)
    quotas: QuotaReport = field(default_factory=QuotaReport)


def read(settings: Settings, transport: Transport, timeout: float, only: str | None = None) -> HostPicture:
    """The host's picture: one pass over BACKUP_ROOT (a bucket per call), the configurations, one quota report.

    ``only``: that uid's objects alone; ``timeout``: what the quota report may take (COMMAND_TIMEOUT).
    OSError when the host cannot be read.
    """
    picture = HostPicture()
    for bucket in ([only[-1]] if only else BUCKETS):
        answer = transport.call(MODULES, "accounts", settings.backup_root, bucket, only or "",
                                shown=f"audit: accounts of {settings.backup_root}/{bucket}")
        picture.folders.update({path: _node(node) for path, node in answer["folders"].items()})
        for record in answer["accounts"]:
            picture.accounts[record["uid"]] = _account(record)
    folder, name = posixpath.split(settings.config_file)
    prefix, _, suffix = name.partition("%uid%")
    found = transport.call(MODULES, "configs", folder, prefix, suffix, only or "",
                           shown=f"audit: rsnapshot configurations in {folder}")
    picture.configs = {uid: (sys.intern(kind), bytes.fromhex(digest) if digest else None)
                       for uid, (kind, digest) in found.items()}
    picture.quotas = quotareport.of(transport.call(MODULES, "quotas", settings.quota_report_cmd, settings.mountpoint,
                                                   timeout, shown=f"audit: {settings.quota_report_cmd} of "
                                                                  f"{settings.mountpoint}"))
    return picture


def config_path(settings: Settings, uid: str) -> str:
    return settings.config_file.replace("%uid%", uid)


def _account(record: dict) -> HostAccount:
    nodes = [record["dir"]] + [record["nodes"].get(name) for name in auditcalls.layout_paths(record["uid"])]
    packed = b"".join(_pack(node) for node in nodes)
    return HostAccount(record["path"], record["marker"], packed, record.get("jail"), record.get("error"))


def _pack(node: list | None) -> bytes:
    if node is None:
        return PACKED.pack(0, 0, 0, 0)
    kind, uid, gid, mode = node
    return PACKED.pack(KINDS.index(kind) + 1, mode, uid, gid)


def _node(node: list | None) -> Node | None:
    return None if node is None else Node(node[0], node[1], node[2], node[3])
