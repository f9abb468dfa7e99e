"""What is on disk where an account lives: type, owner and mode of each path, read in one go.

The transport has no stat, so this runs GNU ``stat`` (without -L: a link is
reported as a link, never followed) on all the paths a request looks at,
in one command. Reading changes nothing, so it runs in dry-run too.
"""
from __future__ import annotations

import stat as stat_module
from dataclasses import dataclass

from provisioning.transport import Transport

from provisioning_backup_rsnapshot.codes import Code, StepError

# One line per path that exists. The paths passed are plain (account.SAFE_PATH),
# so "|" and newlines cannot occur in them.
FORMAT = "%F|%u|%g|%a|%n\n"
# What stat says for a path that is absent, or under a file instead of a folder.
ABSENT = ("No such file or directory", "Not a directory")
DIRECTORY = "directory"
LINK = "symbolic link"
REGULAR = ("regular file", "regular empty file")


@dataclass(frozen=True)
class Node:
    """One path as stat saw it."""

    kind: str       # stat's %F: "directory", "symbolic link", "regular file", ...
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


def reader(transport: Transport) -> Transport:
    """The transport that really runs read-only commands, in dry-run too.

    DryRun prints commands instead of running them but lets reads through
    (exists, realpath); stat and head are reads, so they go to its inner
    transport: a dry run must judge the account as a real run would.
    """
    return getattr(transport, "inner", transport) if transport.dry_run else transport


def survey(paths: list[str], transport: Transport) -> dict[str, Node | None]:
    """Each path's Node, or None when it does not exist; StepError 4 if stat cannot tell."""
    wanted = list(dict.fromkeys(p.rstrip("/") or "/" for p in paths))
    result = reader(transport).run(["stat", f"--printf={FORMAT}", "--", *wanted])
    found: dict[str, Node | None] = dict.fromkeys(wanted)
    for line in result.stdout.splitlines():
        kind, uid, gid, mode, name = line.split("|", 4)
        if name in found:
            found[name] = Node(kind, int(uid), int(gid), stat_module.S_IMODE(int(mode, 8)))
    if not result.ok:
        # GNU stat exits 1 when a path cannot be looked at; only "absent" is fine.
        trouble = [line for line in result.stderr.splitlines() if line and not line.endswith(ABSENT)]
        if result.returncode != 1 or trouble or not result.stderr:
            raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE,
                            f"cannot look at the account's folders: {result.describe()}")
    return found


def read_small_file(path: str, transport: Transport, limit: int = 256) -> str:
    """The first ``limit`` bytes of a regular file (checked by the caller), as text."""
    result = reader(transport).run(["head", "-c", str(limit), "--", path])
    if not result.ok:
        raise StepError(Code.CANNOT_CHECK_HOME_DIR_PRESENCE, f"cannot read {path}: {result.describe()}")
    return result.stdout
