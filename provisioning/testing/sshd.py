"""A real sshd on a free loopback port that lets root in with a throwaway key: a CLISSH gateway.

For tests and benchmarks of TRANSPORTAPI = CLISSH on one machine; needs root
(the gateway logs in as root) and /usr/sbin/sshd. It runs with Debian's
default limits (MaxSessions 10, MaxStartups 10:30:100), written out so a test
sees the figures it runs against; ``kill()`` takes it down with every
session (as a crashed or rebooted gateway), ``start()`` brings it back on
the same port with the same keys.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from provisioning.testing.wait import wait_until

SSHD = "/usr/sbin/sshd"
# Debian's defaults (sshd_config(5)): sessions per connection, and unauthenticated
# connections beyond which sshd drops 30 % of new ones (all beyond 100).
MAX_SESSIONS = 10
MAX_STARTUPS = "10:30:100"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sshd:
    """``Sshd(folder).start()``; ``gateway`` is its [Gateway] section, ``log`` sshd's log; ``stop()``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.log = self.folder / "sshd.log"
        self.gateway: dict = {}
        self._proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        """Start it (the first time: keys, configuration and a port of its own; then the same again)."""
        if not self.gateway:
            self._prepare()
        Path("/run/sshd").mkdir(exist_ok=True)       # sshd's privilege separation directory
        with open(self.log, "a") as log:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.folder / "sshd_config")], stderr=log)
        port = self.gateway["PORT"]

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, "sshd to listen")
        return self

    def _prepare(self) -> None:
        root = self.folder
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        port = _free_port()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text()}")
        (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions {MAX_SESSIONS}
MaxStartups {MAX_STARTUPS}
""")
        self.gateway = {"HOST": "127.0.0.1", "USER": "root", "DSA_FILE": str(root / "client_key"),
                        "PORT": port, "KNOWN_HOSTS": str(root / "known_hosts")}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def sessions(self) -> list[int]:
        """Pids of the sshd processes serving connections (the listener's descendants that are sshd)."""
        if self._proc is None:
            return []
        children: dict[int, list[int]] = {}
        names: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
            names[int(entry)] = name
        found, todo = [], list(children.get(self._proc.pid, []))
        while todo:
            pid = todo.pop()
            if names.get(pid) == "sshd":
                found.append(pid)
                todo += children.get(pid, [])
        return found

    def kill(self) -> None:
        """SIGKILL the listener and every sshd serving a connection, at once: the gateway is gone.

        What ran in the sessions (the helpers) is left to find its connection
        gone, as on a gateway whose sshd was killed.
        """
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGSTOP)        # accepts no connection while its sessions are found
        sessions = self.sessions()
        self._proc.kill()
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None
