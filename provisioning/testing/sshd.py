"""A real sshd on a free loopback port that lets root in with a throwaway key: a CLISSH gateway.

For tests and benchmarks of TRANSPORTAPI = CLISSH on one machine; needs root
(the gateway logs in as root) and /usr/sbin/sshd.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from provisioning.testing.wait import wait_until

SSHD = "/usr/sbin/sshd"


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
MaxStartups 100
""")
        Path("/run/sshd").mkdir(exist_ok=True)       # sshd's privilege separation directory
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, "sshd to listen")
        self.gateway = {"HOST": "127.0.0.1", "USER": "root", "DSA_FILE": str(root / "client_key"),
                        "PORT": port, "KNOWN_HOSTS": str(root / "known_hosts")}
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None
