"""A real sshd on a free loopback port that lets root in with a throwaway key (the CLISSH gateway).

Shared by every test that needs a gateway: t/conftest.py makes ``sshd`` a
session fixture.
"""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """The running sshd as a [Gateway] section: HOST, USER, DSA_FILE, PORT, KNOWN_HOSTS."""
    if os.geteuid() != 0:
        pytest.skip("the gateway logs in over ssh as root (CI runs as root)")
    root = tmp_path_factory.mktemp("sshd")
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
    with open(root / "sshd.log", "w") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, "sshd to listen")
    yield {"HOST": "127.0.0.1", "USER": "root", "DSA_FILE": str(root / "client_key"), "PORT": port,
           "KNOWN_HOSTS": str(root / "known_hosts")}
    proc.terminate()
    proc.wait(10)
