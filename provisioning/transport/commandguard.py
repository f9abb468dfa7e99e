"""Commands die with the daemon: one guard process instead of a wrapper per command.

Every command LocalCLI starts carries ``PROVISIONING_GUARD=<token>`` in its
environment. The guard, started once per daemon, blocks reading a pipe whose
write end only the daemon holds. However the daemon ends (even kill -9), the
pipe then reads end-of-file, and the guard kills every process whose initial
environment (``/proc/PID/environ``) carries the token: the commands and what
they started in the background, so none keeps racing the request that is
resumed at the next start. Then it exits.

This replaces ``setpriv --pdeathsig KILL`` in front of every command: that
cost about 1 ms of CPU and 1.5 ms of latency per command, and reached only
the command itself, not its children.

Each command also carries ``PROVISIONING_COMMAND=<marker>``, a value of its
own (command_marker): when it times out, the same scan finds what it
started that left its process group (setsid, a daemon's double fork), see
spawn.kill_group. The environment is inherited, so both variables reach
every descendant, unless one replaces its environment before exec.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from typing import Mapping

log = logging.getLogger(__name__)

VARIABLE = "PROVISIONING_GUARD"
_VARIABLE_B = VARIABLE.encode()
# The command's own marker (nofollow.COMMAND_VARIABLE on the gateway).
COMMAND_VARIABLE = "PROVISIONING_COMMAND"
_COMMAND_VARIABLE_B = COMMAND_VARIABLE.encode()
# What the guard process runs (python -c).
_GUARD_MAIN = f"import sys; from {__name__} import main; sys.exit(main(sys.argv))"
# New processes can appear while the guard kills (a command forking): scan again.
ROUNDS = 5


class CommandGuard:
    """The daemon's side: starts the guard when first needed, again if it died."""

    def __init__(self) -> None:
        self.token = ""
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._owner = -1

    def environment(self, env: Mapping[str, str] | None, command: str | None = None) -> dict[bytes, bytes]:
        """``env`` (or this process's environment) with the token, encoded; starts the guard if needed.

        ``command``: the command's marker (see command_marker), added as
        COMMAND_VARIABLE. Bytes, because Popen encodes every str key and
        value again for each command: copying os.environ (decoding ~40
        variables) and encoding it back cost as much CPU as the rest of
        starting a command.
        """
        self._ensure_running()
        if env is None:
            marked = _environb()
        else:
            marked = {os.fsencode(key): os.fsencode(value) for key, value in env.items()}
        marked[_VARIABLE_B] = self.token.encode()
        if command is not None:
            marked[_COMMAND_VARIABLE_B] = command.encode()
        return marked

    def start(self) -> None:
        """Start the guard now if it is not running (the daemon does, before its first request)."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._alive():
            return
        with self._lock:
            if self._alive():
                return
            if self._proc is not None and self._owner == os.getpid():
                log.warning("the command guard ended (%s); starting it again", self._proc.returncode)
            # A session of its own: a terminal's Ctrl-C or a signal to the
            # daemon's group must not end the guard before the daemon's commands.
            self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
            # Not "-m": the transport package imports this module before runpy would run it.
            self._proc = subprocess.Popen([sys.executable, "-c", _GUARD_MAIN, self.token],
                                          stdin=subprocess.PIPE, start_new_session=True)
            self._owner = os.getpid()

    def _alive(self) -> bool:
        # A forked child (detaching) starts a guard of its own.
        return self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None

    def close(self) -> None:
        """End the guard now (it kills what is still marked); for tests and tools."""
        with self._lock:
            if self._proc is not None and self._owner == os.getpid():
                self._proc.stdin.close()
                self._proc.wait()
            self._proc = None


def _environb() -> dict[bytes, bytes]:
    """A copy of this process's environment as bytes, as it is now (putenv included)."""
    # os.environ keeps its variables encoded in _data; copying that dict is one
    # C call where dict(os.environb) is two Python calls per variable.
    data = getattr(os.environ, "_data", None)
    return data.copy() if isinstance(data, dict) else dict(os.environb)


# One guard per process, shared by all its transports.
GUARD = CommandGuard()
_COMMANDS = itertools.count(1)
_RANDOM = secrets.token_hex(6)


def command_marker() -> str:
    """A value of COMMAND_VARIABLE that no other command on this host carries."""
    return f"{os.getpid()}-{_RANDOM}-{next(_COMMANDS)}"


def marked(token: str, variable: str = VARIABLE) -> list[int]:
    """Pids of the processes whose initial environment carries ``variable=token``."""
    wanted = f"\0{variable}={token}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:                 # gone meanwhile, or not ours to read
            continue
        if wanted in b"\0" + environ + b"\0":
            found.append(int(name))
    return found


def kill_marked(token: str, variable: str = VARIABLE) -> int:
    """SIGKILL every process carrying ``variable=token``, scanning until none is left; how many were killed."""
    killed: set[int] = set()
    for _ in range(ROUNDS):
        pids = [pid for pid in marked(token, variable) if pid != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
    return len(killed)


def main(argv: list[str]) -> int:
    """The guard: wait for the daemon to end (end-of-file on stdin), then kill its commands."""
    token = argv[1]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)   # only the daemon's end ends the guard
    while os.read(0, 65536):
        pass
    kill_marked(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
