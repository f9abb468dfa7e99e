"""What attack tests need: a picture of a folder tree to compare, and commands run as a customer."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from provisioning.testing.wait import DEADLINE


def picture(top: Path | str, skip: tuple[Path | str, ...] = ()) -> dict[str, tuple]:
    """Every path under ``top`` (but ``skip``) with kind, owner, mode, device, content or link target.

    Compared before and after an attack: root must not have changed anything in it.
    """
    skipped = {str(p) for p in skip}
    seen = {}
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if path in skipped:
                continue
            info = os.lstat(path)
            content = (os.readlink(path) if stat.S_ISLNK(info.st_mode)
                       else Path(path).read_bytes() if stat.S_ISREG(info.st_mode) else None)
            seen[path] = (stat.S_IFMT(info.st_mode), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode),
                          info.st_rdev, content)
    return seen


def as_user(uid: int, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``uid`` (its own group, no others): what a customer could do on the host.

    With ``cwd`` the command starts there (entered as root, like sshd enters
    a jail), and Path arguments are given relative to it: the customer
    reaches their folders without passing root's private folders above them.
    """
    args = [os.path.relpath(a, cwd) if cwd and isinstance(a, Path) else str(a) for a in argv]
    return subprocess.run(args, user=uid, group=uid, extra_groups=[], cwd=cwd,
                          capture_output=True, text=True, timeout=DEADLINE)
