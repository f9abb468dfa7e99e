"""TRANSPORTAPI = CLISSH against a real sshd on 127.0.0.1 with throwaway keys."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from provisioning.transport import CLISSH

from helpers import DaemonProcess, assert_done, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="logs in over ssh as root (CI runs as root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd on a free loopback port that lets root in with one key, and the files to reach it."""
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
""")
    Path("/run/sshd").mkdir(exist_ok=True)       # sshd's privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")],
                            stderr=open(root / "sshd.log", "w"))

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, "sshd to listen")
    yield {"HOST": "127.0.0.1", "USER": "root", "DSA_FILE": str(root / "client_key"), "PORT": port,
           "KNOWN_HOSTS": str(root / "known_hosts")}
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def remote(sshd) -> CLISSH:
    return CLISSH(host=sshd["HOST"], user=sshd["USER"], key_file=sshd["DSA_FILE"], port=sshd["PORT"],
                  known_hosts=sshd["KNOWN_HOSTS"], timeout=30)


def test_arguments_arrive_as_they_were_given(remote):
    hostile = ["a b", "it's", '"q"', "$(touch /tmp/pwned)", "x;y", "*", ""]
    result = remote.run(["printf", "%s|", *hostile])
    assert result.ok, result.describe()
    assert result.stdout == "|".join(hostile) + "|"
    assert result.argv[0] == "printf"                  # reported as given, not as the ssh line
    assert not Path("/tmp/pwned").exists()


def test_exit_codes_and_stdin_pass_through(remote):
    assert remote.run(["sh", "-c", "exit 7"]).returncode == 7
    assert remote.run(["cat"], stdin=b"over the wire").stdout == "over the wire"


def test_file_operations(remote, tmp_path):
    target = str(tmp_path / "dir with space" / "file")
    remote.makedirs(str(tmp_path / "dir with space"), mode=0o750, owner=(1234, 5678))
    folder = tmp_path / "dir with space"
    assert (folder.stat().st_uid, folder.stat().st_gid, oct(folder.stat().st_mode & 0o777)) == (1234, 5678, "0o750")
    remote.write_file(target, b"content\n", mode=0o640, owner=(1234, 5678))
    assert Path(target).read_bytes() == b"content\n"
    assert oct(Path(target).stat().st_mode & 0o777) == "0o640" and Path(target).stat().st_uid == 1234
    assert remote.exists(target) and not remote.exists(target + ".missing")
    os.symlink("/nonexistent", tmp_path / "dangling")
    assert remote.exists(str(tmp_path / "dangling"))
    assert remote.realpath(str(tmp_path / "dir with space" / ".." / "dir with space")) == str(folder)
    remote.rename(target, target + ".moved")
    assert Path(target + ".moved").exists() and not Path(target).exists()
    remote.remove(target + ".moved")
    remote.remove(target + ".moved")                  # already gone is fine
    remote.remove_tree(str(folder))
    assert not folder.exists()


def test_a_failing_file_operation_raises_with_the_reason(remote, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="on the gateway: mkdir -p -- .*exited 1.*File exists|Not a directory"):
        remote.makedirs(str(tmp_path / "file" / "sub"))


def test_an_unknown_host_key_is_refused(sshd, tmp_path):
    (tmp_path / "known_hosts").write_text("")
    stranger = CLISSH(host=sshd["HOST"], user=sshd["USER"], key_file=sshd["DSA_FILE"], port=sshd["PORT"],
                      known_hosts=str(tmp_path / "known_hosts"), timeout=30)
    result = stranger.run(["true"])
    assert result.returncode == 255 and "Host key verification failed" in result.stderr


def test_the_daemon_provisions_over_clissh(host, directory, sshd):
    host.set("Service", TRANSPORTAPI="CLISSH")
    host.set("Gateway", **sshd)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add("3723707")
        assert_done(directory.wait_mode(dn, "added"), "added")
        daemon.wait_for(r"run: ssh -o BatchMode=yes .* -- \S+/create-chroot \S+/chroot /home/3723707 3723707")
    finally:
        assert daemon.stop() == 0
    assert (host.home("3723707") / "incoming").is_dir()
    assert "retain\tdaily\t7" in host.rsnapshot_config("3723707").read_text()
    assert host.quota_calls() == [["-u", "3723707", "1048576", "1048576", "0", "0", "/"]]
