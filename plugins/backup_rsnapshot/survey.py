"""What is on disk where an account lives: type, owner and mode of each path, read in one go.

The transport's lstat looks at all the paths a request needs in one go (one
ssh call with CLISSH): a link is reported as a link, never followed.
Reading changes nothing, so it runs in dry-run too.
"""
from __future__ import annotations

from dataclasses import dataclass

from provisioning.api import Transport

from provisioning_backup_rsnapshot.codes import Code, StepError

DIRECTORY = "directory"
LINK = "symbolic link"
REGULAR = ("regular file",)


@dataclass(frozen=True)
class Node:
    """One path as stat saw it."""

    kind: str       # "directory", "symbolic link", "regular file" or "special file"
    uid: int
    gid: int
    mode: int       # permission bits

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY

    @property
    def is_link(self) -> bool:
        return self.kind == LINK

    @property
    def is_file(self) -> bool:
        return self.kind in REGULAR

    def root_only(self) -> bool:
        """Only root can change what is in it: root's, no group or other write bit."""
        return self.uid == 0 and not self.mode & 0o022

    def describe(self) -> str:
        return f"a {self.kind} owned by {self.uid}:{self.gid}, mode {self.mode:04o}"


def survey(paths: list[str], transport: Transport) -> dict[str, Node | None]:
    """Each path's Node, or None when it does not exist; StepError 4 if it cannot be looked at."""
    wanted = list(dict.fromkeys(p.rstrip("/") or "/" for p in paths))
    try:
        seen = transport.lstat(wanted)
    except OSError as err:
        raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE, f"cannot look at the account's folders: {err}") from err
    return {path: None if seen.get(path) is None else
            Node(seen[path]["kind"], seen[path]["uid"], seen[path]["gid"], seen[path]["mode"])
            for path in wanted}


def read_small_file(path: str, transport: Transport, limit: int = 256) -> str:
    """The first ``limit`` bytes of a regular file, read without following a link, as text."""
    try:
        return transport.read_small(path, limit)
    except OSError as err:
        raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE, f"cannot read {path}: {err}") from err
