"""CLISSH: commands and files on the gateway host ([Gateway]) over OpenSSH.

Everything runs in helpers on the gateway: provisioning.transport.nofollow,
the same source LocalCLI uses, started as ``python3 -I -S -c SOURCE serve
NONCE`` over one ssh session each, answering one JSON request after another
(provisioning.transport.gatewayhelper). The gateway needs ``python3`` (3.7 or
newer) on the login user's PATH.

- File operations give the same guarantees as on this host against planted
  links.
- Commands are argv lists that the helper runs itself, without a shell:
  no value is ever read as shell syntax. Their environment travels in the
  request, never on a command line. Each runs in a session of its own on
  the gateway; at COMMAND_TIMEOUT or the request's deadline the helper kills
  its process group and every process carrying its PROVISIONING_COMMAND
  marker, and so it does when the daemon goes away (the helper's input
  ends). Only the last 64 KiB of its stdout and of its stderr come back.
- ssh: every option comes before ``--`` and the destination, and HOST,
  USER, DSA_FILE and KNOWN_HOSTS are checked when the transport is made, so
  no configuration value can be read by ssh as an option. All sessions
  share one connection (OpenSSH multiplexing, see Multiplexer).

Before, every operation was an ssh of its own, through the login shell:
an add over CLISSH took some 30 handshakes and 12 s on the test gateway.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from provisioning.transport import nofollow
from provisioning.transport.base import (
    PAST_DEADLINE, CommandResult, Interrupted, Transport, ended_by_the_stop, killed_after, not_run_past_deadline,
    time_left,
)
from provisioning.transport.gatewayhelper import Broken, Helper, HelperPool
from provisioning.transport.spawn import REAP_SECONDS

log = logging.getLogger(__name__)

HELPER_SOURCE = Path(nofollow.__file__).read_text(encoding="utf-8")
EXIT_SSH_ERROR = 255
# How long the shared connection stays open with nothing to carry.
PERSIST_SECONDS = 60
# A control socket's path is at most 107 bytes, and ssh binds a temporary name
# (the path and 17 more characters) first; %C is 40.
_CONTROL_DIR_MAX = 107 - 17 - 41

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
# ssh reads -o values as words (whitespace, quotes) with %-tokens; none of that in a path.
_SSH_PATH = re.compile(r"[^\s\"'%\\\x00-\x1f\x7f]+")


def gateway_problem(key: str, value: Any) -> str:
    """What is wrong with ``value`` for [Gateway] ``key`` as ssh would read it ('' if nothing).

    HOST: a host name, an IPv4 or a bracket-less IPv6 address. USER: empty
    (ssh's default) or a POSIX user name. DSA_FILE, KNOWN_HOSTS: empty,
    'none' or a file name without blanks, quotes, backslashes, % or control
    characters (ssh splits -o values into words and expands %-tokens). None
    of them may begin with '-'.
    """
    text = str(value)
    if key == "HOST":
        if _HOSTNAME.fullmatch(text) and len(text) <= 253 or _ipv6(text):
            return ""
        return f"{text!r} is not a host name, an IPv4 or an IPv6 address (without brackets)"
    if key == "USER":
        if text == "" or _USER.fullmatch(text):
            return ""
        return f"{text!r} is not a user name (letters, digits, . _ -; not beginning with - or .)"
    if key in ("DSA_FILE", "KNOWN_HOSTS"):
        if text == "" or text.lower() == "none" or (_SSH_PATH.fullmatch(text) and not text.startswith("-")):
            return ""
        return (f"{text!r} is not a file name ssh can take (no blanks, quotes, backslashes, % or "
                "control characters; not beginning with -)")
    raise KeyError(key)


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return "%" not in text                      # no zone index: it would reach ssh's parser


def _checked(key: str, value: Any) -> str:
    problem = gateway_problem(key, value)
    if problem:
        raise ValueError(f"[Gateway] {key}: {problem}")
    return str(value)


# A connection that stops answering (a firewall that dropped it while it sat
# idle) is given up after ALIVE_INTERVAL * ALIVE_COUNT seconds, and every
# operation on it fails then, instead of each waiting for its own timeout; a
# new one that gets no answer (TCP connect and ssh's banner) after as long.
ALIVE_INTERVAL = 15
ALIVE_COUNT = 3


class CLISSH(Transport):
    """Runs argv lists on ``user@host`` with key authentication, no password, no prompt."""

    def __init__(self, *, host: str, user: str, key_file: str, port: int = 22,
                 known_hosts: str = "", timeout: float = 600,
                 stopping: threading.Event | None = None) -> None:
        host, user = _checked("HOST", host), _checked("USER", user)
        key_file, known_hosts = _checked("DSA_FILE", key_file), _checked("KNOWN_HOSTS", known_hosts)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"[Gateway] PORT: {port!r} is not a port number (1-65535)")
        self.timeout = timeout
        self.stopping = stopping
        # Whatever ssh_config says: no terminal between the daemon and a helper (-T), and no
        # agent, X11 or port forwarding to the gateway.
        self.ssh = ["ssh", "-T", "-a", "-x", "-o", "ClearAllForwardings=yes",
                    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
                    "-o", f"ConnectTimeout={ALIVE_INTERVAL * ALIVE_COUNT}", "-p", str(port)]
        if key_file and key_file.lower() != "none":
            self.ssh += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
        if known_hosts:
            self.ssh += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if user:
            self.ssh += ["-l", user]
        self.ssh += ["--", host]
        self.multiplexer = Multiplexer(self.ssh[:-2], host)
        self.helpers = HelperPool(self._start_helper)

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        argv = [str(a) for a in argv]
        shown = f"{shlex.join(argv)} (on {self.ssh[-1]})"
        wanted = timeout or self.timeout
        limit = time_left(wanted)
        if limit is None:
            return not_run_past_deadline(argv, shown)
        log.debug("run: %s", shown)
        request = {"operation": "run", "args": argv, "env": None if env is None else dict(env),
                   "stdin": stdin is not None, "timeout": limit}
        try:
            # The helper kills the command at ``limit``; its answer gets a moment more.
            value = self._ask(request, stdin or b"", time.monotonic() + limit + REAP_SECONDS, shown)
        except OSError as err:
            return CommandResult(argv, EXIT_SSH_ERROR, stderr=str(err))
        result = CommandResult(argv, value["returncode"], value["stdout"], value["stderr"],
                               value["stdout_dropped"], value["stderr_dropped"])
        if ended_by_the_stop(result.returncode, self.stopping):
            raise Interrupted(f"{shown} ended ({result.returncode}) because the daemon is stopping")
        if value["timed_out"]:
            result.stderr = killed_after(limit, wanted)
        return result

    def call(self, modules: Sequence[ModuleType], function: str, *args: Any, shown: str = "") -> Any:
        """In a helper on the gateway, which is sent each module's source the first time it needs it."""
        names = [_short(module) for module in modules]
        shown = f"{shown or names[-1] + '.' + function} (on {self.ssh[-1]})"
        limit = time_left(self.timeout)
        if limit is None:
            raise OSError(errno.ETIME, f"on the gateway: {shown}: not run, {PAST_DEADLINE}")
        log.debug("gateway: call %s", shown)
        return self._ask({"operation": "call", "args": [names[-1], function]}, json.dumps(list(args)).encode(),
                         time.monotonic() + limit, shown, modules=modules)

    def _helper(self, operation: str, *args: str, stdin: bytes | None = None) -> Any:
        """Run nofollow's ``operation`` on the gateway; its value, or its OSError raised here."""
        shown = f"python3 nofollow.py {shlex.join([operation, *args])}"
        limit = time_left(self.timeout)
        if limit is None:
            raise OSError(errno.ETIME, f"on the gateway: {shown}: not run, {PAST_DEADLINE}")
        log.debug("gateway: %s", shown)
        return self._ask({"operation": operation, "args": list(args)}, stdin or b"",
                         time.monotonic() + limit, shown)

    def _ask(self, request: dict, data: bytes, deadline: float, shown: str,
             modules: Sequence[ModuleType] = ()) -> Any:
        """A helper's answer to ``request``: its value, or its OSError raised here.

        ``modules`` are loaded into the helper first, those it does not hold
        yet. A helper that fails is killed and dropped: OSError naming
        ``shown``, or Interrupted when the daemon is stopping.
        """
        helper = None
        try:
            helper = self.helpers.take(deadline)
            loading = _load(helper, modules, deadline)
            answer = loading if loading is not None else helper.ask(request, data, deadline)
        except BaseException as err:
            if helper is not None:
                helper.kill()            # whatever it was doing, nobody waits for it any more
            if not isinstance(err, Broken):
                raise
            if ended_by_the_stop(None, self.stopping):
                raise Interrupted(f"{shown} ended because the daemon is stopping") from None
            raise OSError(f"on the gateway: {shown}: {err}") from None
        self.helpers.give_back(helper)
        if "value" in answer:
            return answer["value"]
        raise OSError(answer.get("errno"), f"on the gateway: {answer.get('strerror')}", answer.get("filename"))

    def _start_helper(self, deadline: float) -> Helper:
        ssh = self.ssh[:-2] + self.multiplexer.options() + self.ssh[-2:]
        log.debug("run: %s python3 nofollow.py serve", shlex.join(ssh))
        try:
            return Helper(ssh, ["python3", "-I", "-S", "-c", HELPER_SOURCE], deadline)
        except OSError as err:
            raise Broken(f"ssh: {err.strerror}") from None

    def close(self) -> None:
        """End the helpers and the shared connection, and remove its control folder."""
        self.helpers.close()
        self.multiplexer.close()

    def exists(self, path: str) -> bool:
        return bool(self._helper("exists", path))

    def realpath(self, path: str) -> str:
        return str(self._helper("realpath", path))

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        return [str(real) for real in self._helper("realpaths", *paths)] if paths else []

    def lstat(self, paths: Sequence[str]) -> dict[str, dict | None]:
        return dict(self._helper("lstat", *paths)) if paths else {}

    def read_small(self, path: str, limit: int = 4096) -> str:
        return str(self._helper("read_small", path, str(limit)))

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644,
                   owner: tuple[int, int] | None = None) -> None:
        self._helper("write_file", path, f"{mode:o}", _owner(owner), stdin=data)

    def makedirs(self, path: str, *, mode: int = 0o755,
                 owner: tuple[int, int] | None = None) -> None:
        self._helper("makedirs", path, f"{mode:o}", _owner(owner))

    def rename(self, src: str, dst: str) -> None:
        self._helper("rename", src, dst)

    def remove(self, path: str) -> None:
        self._helper("remove", path)

    def remove_tree(self, path: str) -> None:
        self._helper("remove_tree", path)


# Module name -> its source, read once: what Transport.call sends to each helper.
_SOURCES: dict[str, str] = {}


def _short(module: ModuleType) -> str:
    """The name a module has in the helper: its last part (``jailfs``), as it imports the others."""
    return module.__name__.rpartition(".")[2]


def _load(helper: Helper, modules: Sequence[ModuleType], deadline: float) -> dict | None:
    """Send ``helper`` the modules it does not hold yet; None, or the answer of a load that failed."""
    for module in modules:
        name = _short(module)
        if name in helper.loaded:
            continue
        if name not in _SOURCES:
            _SOURCES[name] = Path(module.__file__).read_text(encoding="utf-8")
        answer = helper.ask({"operation": "load", "args": [name]}, _SOURCES[name].encode("utf-8"), deadline)
        if "value" not in answer:
            return answer
        helper.loaded.add(name)
    return None


class Multiplexer:
    """One ssh connection for all of a CLISSH's operations, by OpenSSH's ControlMaster.

    The first ssh that finds no connection opens one and leaves it in the
    background (ControlPersist) for the next; ssh falls back to a connection
    of its own when the shared one is busy (sshd's MaxSessions) or gone.
    The control socket lets anyone who can reach it use the connection, so it
    lives in a private folder (mode 0700) made for this transport in this
    process: a detached daemon makes its own. The connection ends with
    close() (the daemon's stop, or this process's end), or PERSIST_SECONDS
    after its last use. The command guard cannot end it after a kill -9: ssh
    overwrites the environment the guard reads to set its process title.
    """

    def __init__(self, options: list[str], host: str) -> None:
        self._options, self._host = options, host
        self._lock = threading.Lock()
        self._folder = ""
        self._pid = -1
        self._finalizer: weakref.finalize | None = None

    def options(self) -> list[str]:
        """The ssh options that use (or open) the shared connection."""
        with self._lock:
            if self._pid != os.getpid():
                self._folder, self._pid = _control_folder(), os.getpid()
                self._finalizer = weakref.finalize(self, _close_connection, self._exit_argv(),
                                                   self._folder, self._pid)
            return self._control(self._folder)

    def close(self) -> None:
        """End the shared connection and remove its folder (nothing if none was made here)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._pid = -1

    def _exit_argv(self) -> list[str]:
        return self._options + self._control(self._folder) + ["-O", "exit", "--", self._host]

    @staticmethod
    def _control(folder: str) -> list[str]:
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={folder}/%C",
                "-o", f"ControlPersist={PERSIST_SECONDS}"]


def _control_folder() -> str:
    """A new private folder for a control socket, in TMPDIR if ssh can take its name there."""
    parent = tempfile.gettempdir()
    if len(parent) > _CONTROL_DIR_MAX - 30 or not _SSH_PATH.fullmatch(parent):
        parent = "/tmp"
    return tempfile.mkdtemp(prefix="provisioning-ssh-", dir=parent)


def _close_connection(exit_argv: list[str], folder: str, pid: int) -> None:
    """Ask the shared connection to end, then remove its folder; only in the process that made it."""
    if os.getpid() != pid:
        return
    try:
        subprocess.run(exit_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass                         # it ends by itself PERSIST_SECONDS after its last use
    shutil.rmtree(folder, ignore_errors=True)


def _owner(owner: tuple[int, int] | None) -> str:
    return "-" if owner is None else f"{int(owner[0])}:{int(owner[1])}"
