"""The sandbox deletes only a folder it made; the loader says which configuration it uses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.sandbox.layout import MARKER, REPO, SandboxLayout, SandboxRefused

from helpers import wait_until


def _sandbox(root, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PROVISIONING_SANDBOX": str(root)}
    env.pop("PROVISIONING_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "provisioning.sandbox", "--no-demo", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


# The checkout's own wrapper, and the command an installation has (its console script).
CHECKOUT_LOADER = [str(REPO / "bin/loadOpenLDAPsingleLDIF")]
INSTALLED_LOADER = [str(Path(sys.executable).parent / "loadOpenLDAPsingleLDIF")]


def _loader(root, *args: str, config_env: str | None = None,
            command: list[str] = CHECKOUT_LOADER) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROVISIONING_SANDBOX": str(root)}
    env.pop("PROVISIONING_CONFIG", None)
    if config_env:
        env["PROVISIONING_CONFIG"] = config_env
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_folder_the_sandbox_did_not_make_is_refused_and_kept(tmp_path):
    root = tmp_path / "someones-folder"
    root.mkdir()
    (root / "notes.txt").write_text("keep me\n")
    proc = _sandbox(root)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"sandbox: {root} exists and was not made by the sandbox (it has no {MARKER} file): refusing to " \
           f"delete what is in it" in out
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "keep me\n"


def test_reset_deletes_only_a_folder_with_the_marker(tmp_path):
    made = SandboxLayout(tmp_path / "made")
    made.create()
    assert made.marker.is_file()
    (made.root / "left-over").write_text("x")
    made.reset()
    assert not made.root.exists()
    empty = SandboxLayout(tmp_path / "empty")
    empty.root.mkdir()
    empty.reset()                                  # nothing to delete: used as it is
    assert empty.root.is_dir()


def test_a_link_to_a_folder_is_refused_whatever_it_holds(tmp_path):
    victim = tmp_path / "victim"
    SandboxLayout(victim).create()                 # even a real sandbox behind the link
    (victim / "data.txt").write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(SandboxRefused, match="is a symbolic link"):
        SandboxLayout(link).reset()
    assert (victim / "data.txt").read_text() == "precious\n" and (victim / MARKER).is_file()


def test_a_marker_that_is_a_link_does_not_count(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    (root / "data.txt").write_text("precious\n")
    elsewhere = tmp_path / "marker-elsewhere"
    elsewhere.write_text("")
    (root / MARKER).symlink_to(elsewhere)
    with pytest.raises(SandboxRefused, match="was not made by the sandbox"):
        SandboxLayout(root).reset()
    assert (root / "data.txt").read_text() == "precious\n"


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    root = tmp_path / "a-file"
    root.write_text("precious\n")
    with pytest.raises(SandboxRefused, match="is not a folder"):
        SandboxLayout(root).reset()
    assert root.read_text() == "precious\n"


def test_the_loader_uses_a_running_sandbox_says_so_and_refuses_a_stale_one(tmp_path):
    root = tmp_path / "sandbox"
    proc = _sandbox(root, start_new_session=True)
    lines: list[str] = []
    try:
        wait_until(lambda: _read_until(proc, lines, "initial synchronisation"), "the sandbox's daemon", 60)
        layout = SandboxLayout(root)
        assert layout.running_pid() == proc.pid
        ldif = tmp_path / "one.ldif"
        ldif.write_text(f"dn: ou=loaded,ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org\n"
                        f"objectClass: organizationalUnit\nou: loaded\n")
        result = _loader(root, str(ldif))
        assert result.returncode == 0, result.stderr
        assert f"loadOpenLDAPsingleLDIF: configuration {layout.service_config} (from the sandbox running as " \
               f"process {proc.pid})" in result.stderr
        assert "add ou=loaded," in result.stdout
        # The installed command does not take a running sandbox for its directory (issue 18): it
        # would have written a production account into it.
        account = tmp_path / "production.ldif"
        account.write_text(f"dn: ou=production,ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org\n"
                           f"objectClass: organizationalUnit\nou: production\n")
        for command in (INSTALLED_LOADER, [sys.executable, "-m", "provisioning.operator.ldifload"]):
            refused = _loader(root, str(account), command=command)
            assert refused.returncode == 2, refused.stderr
            assert "no service configuration: give -c FILE or set PROVISIONING_CONFIG" in refused.stderr
            assert "add ou=production" not in refused.stdout
        asked = _loader(root, "--sandbox", str(ldif), command=INSTALLED_LOADER)    # unless asked to
        assert asked.returncode == 1 and "Already exists" in asked.stderr, asked.stderr
        # A second sandbox in the same folder would pull it away under the first one.
        second = _sandbox(root)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1 and f"a sandbox already runs in {root}" in out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert not layout.pid_file.exists()
    stale = _loader(root, str(ldif))
    assert stale.returncode == 2
    assert f"the sandbox configuration {layout.service_config} is left from a sandbox that no longer runs" \
        in stale.stderr
    # Named explicitly, it is used, and the loader says where it came from.
    named = _loader(root, "-c", str(layout.service_config), str(ldif))
    assert f"configuration {layout.service_config} (from -c)" in named.stderr
    assert "Can't contact LDAP server" in named.stderr and f"the server named in {layout.service_config}" \
        in named.stderr
    from_env = _loader(root, str(ldif), config_env=str(layout.service_config))
    assert f"configuration {layout.service_config} (from $PROVISIONING_CONFIG)" in from_env.stderr
    # The folder is the sandbox's own: the next sandbox may delete it.
    layout.reset()
    assert not root.exists()


def _read_until(proc: subprocess.Popen, lines: list[str], text: str) -> bool:
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError("the sandbox ended:\n" + "".join(lines))
    lines.append(line)
    return text in line

