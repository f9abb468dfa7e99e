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
  share one connection (OpenSSH multiplexing, see Multiplexer), at most
  [Gateway] SESSIONS of them (see gatewayhelper.HelperPool).
- A gateway that does not answer (connection refused or reset, ssh's exit
  255, the shared connection or its socket gone, a helper silent for
  ALIVE_INTERVAL * ALIVE_COUNT seconds) is not the request's failure: the
  operation raises Unreachable, every helper on the connection is ended at
  once with the connection (they share its fate), and every operation fails
  at once with Unreachable until the core reaches the gateway again
  (reconnect). Only an answer from the gateway (an errno, an exit code)
  comes back as the operation's result.

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
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from provisioning.transport.commandguard import GUARD
from provisioning.transport import nofollow
from provisioning.transport.base import (
    EXIT_TIMEOUT, PAST_DEADLINE, STOP_NOTICE, CommandResult, Interrupted, Reach, Transport, Unreachable,
    ended_by_the_stop, killed_after, not_run_past_deadline, stopped_by_signal, time_left,
)
from provisioning.transport.gatewayhelper import Broken, GaveUp, Helper, HelperPool
from provisioning.transport.presence import Presence
from provisioning.transport.spawn import REAP_SECONDS

log = logging.getLogger(__name__)

HELPER_SOURCE = Path(nofollow.__file__).read_text(encoding="utf-8")
# How long the shared connection stays open with nothing to carry.
PERSIST_SECONDS = 60
# Helpers (ssh sessions on the shared connection) at most, by default: below
# sshd's MaxSessions (10 in Debian's default).
SESSIONS = 8
# How long starting the shared connection, or a helper on it, may take.
START_SECONDS = 30
# A control socket's path is at most 107 bytes, and ssh binds a temporary name
# (the path and 17 more characters) first; the socket's own name is 1.
_CONTROL_DIR_MAX = 107 - 17 - 2

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


# A connection that stops answering (a firewall that dropped it, a gateway
# that went down without closing it) is given up by ssh after ALIVE_INTERVAL
# * ALIVE_COUNT seconds of unanswered keepalives, and a helper at work that
# says nothing (no answer, no heartbeat) for as long is taken for dead: a dead
# connection is noticed in seconds. A new connection that gets no answer (TCP
# connect and ssh's banner) is given up after CONNECT_TIMEOUT.
ALIVE_INTERVAL = 2
ALIVE_COUNT = 3
CONNECT_TIMEOUT = 10


class CLISSH(Transport):
    """Runs argv lists on ``user@host`` with key authentication, no password, no prompt."""

    def __init__(self, *, host: str, user: str, key_file: str, port: int = 22,
                 known_hosts: str = "", timeout: float = 600, sessions: int = SESSIONS,
                 stopping: threading.Event | None = None) -> None:
        host, user = _checked("HOST", host), _checked("USER", user)
        key_file, known_hosts = _checked("DSA_FILE", key_file), _checked("KNOWN_HOSTS", known_hosts)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"[Gateway] PORT: {port!r} is not a port number (1-65535)")
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
            raise ValueError(f"[Gateway] SESSIONS: {sessions!r} is not a number of sessions (1 or more)")
        self.timeout = timeout
        self.stopping = stopping
        self.silence = float(ALIVE_INTERVAL * ALIVE_COUNT)
        # Whatever ssh_config says: no terminal between the daemon and a helper (-T), and no
        # agent, X11 or port forwarding to the gateway.
        self.ssh = ["ssh", "-T", "-a", "-x", "-o", "ClearAllForwardings=yes",
                    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
                    "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-p", str(port)]
        if key_file and key_file.lower() != "none":
            self.ssh += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
        if known_hosts:
            self.ssh += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if user:
            self.ssh += ["-l", user]
        self.ssh += ["--", host]
        self.where = f"{user + '@' if user else ''}{host} port {port}"
        self.presence = Presence(self.where)
        self.multiplexer = Multiplexer(self.ssh[:-2], host)
        self.helpers = HelperPool(self._start_helper, cap=sessions)
        self._leftovers: list[str] = []           # files to remove once the gateway answers again
        self._were_working = 0                     # helpers at work when the gateway went away
        self._leftovers_lock = threading.Lock()

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
        except OSError as err:             # given up at the deadline (see _ask)
            return CommandResult(argv, EXIT_TIMEOUT, stderr=str(err))
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
        yet. Unreachable when the gateway does not answer (at once while it is
        known to be away); Interrupted when the daemon is stopping; OSError
        (ETIME) when the operation did not end by ``deadline``: it is given
        up, here and on the gateway.
        """
        self.presence.check()
        helper = None
        try:
            helper = self.helpers.take(deadline)
            loading = _load(helper, modules, deadline)
            answer = loading if loading is not None else helper.ask(request, data, deadline)
        except GaveUp as err:
            if helper is not None:
                self.helpers.drop(helper)  # its session ends: the helper on the gateway stops the operation
            raise OSError(errno.ETIME, f"on the gateway: {shown}: {err}; given up") from None
        except Broken as err:
            raise self._broken(helper, f"{shown}: {err}") from None
        except BaseException:
            if helper is not None:
                self.helpers.drop(helper)      # whatever it was doing, nobody waits for it any more
            raise
        self.helpers.give_back(helper)
        self.presence.answered()
        if "value" in answer:
            return answer["value"]
        raise OSError(answer.get("errno"), f"on the gateway: {answer.get('strerror')}", answer.get("filename"))

    def _broken(self, helper: Helper | None, why: str) -> BaseException:
        """What a helper that failed (``helper`` None: one that could not be started) means."""
        code = None
        if helper is not None:
            code = helper.proc.poll()
            self.helpers.drop(helper)
        if self._stopped(code):
            return Interrupted(f"{why}: ended because the daemon is stopping")
        self._lost(why)
        return Unreachable(self.presence.describe())

    def _stopped(self, code: int | None) -> bool:
        """Whether the daemon's stop ended the helper: a stop seen, or a signal (systemd's KillMode
        signals the ssh processes with the daemon) while the gateway was still taken for up."""
        if self.stopping is None:
            return False
        if self.stopping.is_set():
            return True
        return (code is not None and stopped_by_signal(code) and self.presence.up
                and self.stopping.wait(STOP_NOTICE))

    def _lost(self, why: str) -> None:
        """The gateway is away: end the shared connection and every helper on it at once."""
        if not self.presence.lose(why):
            return                      # another operation found it first
        log.warning("the gateway %s stopped answering (%s): its connection and every helper on it are ended; "
                    "operations wait until it answers again", self.where, why)
        self._were_working = self.helpers.cut_all()
        self.multiplexer.drop()

    def reach(self) -> Reach:
        return self.presence.reach()

    def reconnect(self) -> None:
        """Reach the gateway again after Unreachable: a new connection and a helper that answers.

        One helper proves the gateway back; then as many as were at work
        start side by side, while the daemon reconnects to LDAP (the work
        cut short comes back at once). Started all at once before, they
        shared the gateway's CPU and the first answered seconds later on a
        busy one. Files left to remove while it was away (see discard) are
        removed before any request is worked again. Unreachable when it
        still does not answer. Nothing to do while the gateway is taken for
        up.
        """
        if self.presence.up:
            return
        deadline = time.monotonic() + START_SECONDS
        helper = None
        try:
            helper = self.helpers.take(deadline)
            helper.ask({"operation": "exists", "args": ["/"]}, b"", deadline)
        except (Broken, GaveUp) as err:
            if helper is not None:
                self.helpers.drop(helper)
            raise Unreachable(f"the gateway {self.where} is out of reach: {err}") from None
        except BaseException:
            if helper is not None:
                self.helpers.drop(helper)
            raise
        self.helpers.give_back(helper)
        away = self.presence.back()
        log.debug("the gateway %s answers again (away for %.1f s)", self.where, away)
        self._remove_leftovers()
        self.helpers.warm(self._were_working - 1, time.monotonic() + START_SECONDS)

    def discard(self, path: str) -> None:
        try:
            self.remove(path)
        except Unreachable:
            with self._leftovers_lock:
                self._leftovers.append(path)
            log.info("cannot remove %s now: the gateway %s is out of reach; removed once it answers again",
                     path, self.where)

    def _remove_leftovers(self) -> None:
        with self._leftovers_lock:
            todo, self._leftovers = self._leftovers, []
        for number, path in enumerate(todo):
            try:
                self.remove(path)
            except OSError as err:
                log.warning("cannot remove %s, left while the gateway was away: %s", path, err)
                continue
            except Unreachable:
                with self._leftovers_lock:
                    self._leftovers[:0] = todo[number:]
                return
            log.info("removed %s, left while the gateway was away", path)

    def _start_helper(self, deadline: float) -> Helper:
        deadline = min(deadline, time.monotonic() + START_SECONDS)
        self.multiplexer.connect(deadline)
        ssh = self.ssh[:-2] + self.multiplexer.client_options() + self.ssh[-2:]
        log.debug("run: %s python3 nofollow.py serve", shlex.join(ssh))
        try:
            return Helper(ssh, ["python3", "-I", "-S", "-c", HELPER_SOURCE], deadline, silence=self.silence)
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
    """One ssh connection for all of a CLISSH's helpers: an OpenSSH ControlMaster started on its own.

    ``connect`` starts it (``ssh -f -N -o ControlMaster=yes``: ssh returns
    once the connection is up and leaves the master in the background) when
    none runs; the helpers' ssh only use it (ControlMaster=no). One thread
    starts it while the others wait: when a gateway comes back, every worker
    opening a connection of its own at once would run into sshd's
    MaxStartups (10:30:100 in Debian: 30 % of new connections dropped beyond
    10 unauthenticated ones). The master ends PERSIST_SECONDS after its last
    session (ControlPersist), when ssh gives the connection up (ServerAlive),
    with ``drop`` (the gateway went away) or ``close`` (the daemon's stop, or
    this process's end); the next ``connect`` starts a new one.

    The control socket lets anyone who can reach it use the connection, so it
    lives in a private folder (mode 0700) made for this transport in this
    process: a detached daemon makes its own. After a kill -9 of the daemon
    the command guard ends the master with the helpers: started this way it
    keeps its argv and environment (a master ssh forks for ControlPersist
    from a session sets a title over them, which the guard cannot read).
    """

    def __init__(self, options: list[str], host: str) -> None:
        self._options, self._host = options, host
        self._lock = threading.Lock()
        self._folder = ""
        self._pid = -1                  # the process that made the folder
        self._master = -1               # the master's pid
        self._finalizer: weakref.finalize | None = None

    def client_options(self) -> list[str]:
        """The ssh options of a session on the shared connection."""
        with self._lock:
            return ["-o", "ControlMaster=no", "-o", f"ControlPath={self._socket()}"]

    @property
    def socket(self) -> str:
        """The control socket's path (in this process's private folder)."""
        with self._lock:
            return self._socket()

    def connect(self, deadline: float) -> None:
        """Start the master unless it runs; Broken with ssh's reason when no connection is made by ``deadline``."""
        with self._lock:
            if self._running():
                return
            socket_path = self._socket()
            _unlink(socket_path)          # a master killed with SIGKILL leaves its socket behind
            argv = self._options + ["-f", "-N", "-o", "ControlMaster=yes", "-o", f"ControlPersist={PERSIST_SECONDS}",
                                    "-o", f"ControlPath={socket_path}", "--", self._host]
            log.debug("run: %s", shlex.join(argv))
            ended = _quietly(argv, deadline, GUARD.environment(None))
            if ended.returncode != 0:
                said = ended.stderr.decode("utf-8", "replace").strip().splitlines()
                raise Broken(f"ssh exited {ended.returncode}" + (f": {said[-1]}" if said else ""))
            self._master = self._master_pid(socket_path, deadline)

    def drop(self) -> None:
        """The connection is dead: kill the master now (its sessions end with it)."""
        with self._lock:
            if self._running():
                try:
                    os.kill(self._master, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._master = -1
            if self._pid == os.getpid():
                _unlink(self._socket())

    def close(self) -> None:
        """End the shared connection and remove its folder (nothing if none was made here)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._pid, self._master = -1, -1

    def _socket(self) -> str:
        if self._pid != os.getpid():
            self._folder, self._pid, self._master = _control_folder(), os.getpid(), -1
            self._finalizer = weakref.finalize(self, _close_connection, self._exit_argv(),
                                               self._folder, self._pid)
        return f"{self._folder}/m"

    def _running(self) -> bool:
        """The master this object started is alive and serves its socket."""
        if self._master <= 0 or self._pid != os.getpid():
            return False
        try:
            with open(f"/proc/{self._master}/cmdline", "rb") as f:
                argv = f.read()           # ssh -f -N keeps it (the pid may have been reused)
        except OSError:
            return False
        return (f"\0ControlPath={self._folder}/m\0".encode() in argv and b"\0ControlMaster=yes\0" in argv
                and os.path.exists(f"{self._folder}/m"))

    def _master_pid(self, socket_path: str, deadline: float) -> int:
        ended = _quietly(self._options + ["-o", f"ControlPath={socket_path}", "-O", "check", "--", self._host],
                         deadline)
        found = re.search(rb"pid=(\d+)", ended.stderr + ended.stdout)
        if ended.returncode != 0 or found is None:
            raise Broken(f"the shared connection did not answer: {ended.stderr.decode('utf-8', 'replace').strip()}")
        return int(found.group(1))

    def _exit_argv(self) -> list[str]:
        return self._options + ["-o", f"ControlPath={self._folder}/m", "-O", "exit", "--", self._host]


def _quietly(argv: list[str], deadline: float, env: Mapping[bytes, bytes] | None = None
             ) -> subprocess.CompletedProcess:
    """Run a local ssh that ends by itself (the master backgrounds itself); Broken at ``deadline``."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False, env=env,
                              timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise Broken("ssh made no connection in time") from None
    except OSError as err:
        raise Broken(f"ssh: {err.strerror}") from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
