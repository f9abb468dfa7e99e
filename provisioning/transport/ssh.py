"""CLISSH: commands and files on the gateway host ([Gateway]) over OpenSSH.

Each operation is one ``ssh`` process with an argv list. The remote side runs
the command through the login shell, so every argument is quoted with
shlex.quote: values are passed as data, never spliced into a command.
"""
from __future__ import annotations

import shlex
from typing import Sequence

from provisioning.transport.base import CommandResult, Transport
from provisioning.transport.local import LocalCLI


class CLISSH(Transport):
    """Runs argv lists on ``user@host`` with key authentication, no password, no prompt."""

    def __init__(self, *, host: str, user: str, key_file: str, port: int = 22,
                 known_hosts: str = "", timeout: float = 600) -> None:
        self.local = LocalCLI(timeout=timeout)
        self.ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-p", str(port)]
        if key_file and key_file.lower() != "none":
            self.ssh += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
        if known_hosts:
            self.ssh += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if user:
            self.ssh += ["-l", user]
        self.ssh += [host, "--"]

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None) -> CommandResult:
        result = self.local.run(self.ssh + [shlex.join(str(a) for a in argv)],
                                stdin=stdin, timeout=timeout)
        result.argv = [str(a) for a in argv]
        return result

    def _must(self, argv: Sequence[str], stdin: bytes | None = None) -> CommandResult:
        result = self.run(argv, stdin=stdin)
        if not result.ok:
            raise OSError(f"on the gateway: {result.describe()}")
        return result

    def exists(self, path: str) -> bool:
        # test -e follows symlinks; -L catches dangling ones. 1 means absent.
        result = self.run(["sh", "-c", 'test -e "$1" || test -L "$1"', "sh", path])
        if result.returncode in (0, 1):
            return result.returncode == 0
        raise OSError(f"on the gateway: {result.describe()}")

    def realpath(self, path: str) -> str:
        return self._must(["realpath", "-m", "--", path]).stdout.strip()

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        script = ('set -e; t="$1.tmp-$$"; umask 077; cat > "$t"; chmod "$2" "$t"; '
                  'if [ -n "$3" ]; then chown "$3" "$t"; fi; mv -f "$t" "$1"')
        chown = f"{owner[0]}:{owner[1]}" if owner else ""
        self._must(["sh", "-c", script, "sh", path, f"{mode:o}", chown], stdin=data)

    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        self._must(["mkdir", "-p", "--", path])
        self._must(["chmod", f"{mode:o}", "--", path])
        if owner is not None:
            self._must(["chown", "-h", f"{owner[0]}:{owner[1]}", "--", path])

    def rename(self, src: str, dst: str) -> None:
        self._must(["mv", "-T", "--", src, dst])

    def remove(self, path: str) -> None:
        self._must(["rm", "-f", "--", path])

    def remove_tree(self, path: str) -> None:
        self._must(["rm", "-rf", "--", path])
