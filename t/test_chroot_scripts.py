"""The two CREATE_CHROOT_CMD scripts, run directly (as root, like the daemon runs them)."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from provisioning.sandbox.layout import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sets owners and builds a chroot: needs root (CI runs as root)")
SCRIPTS = [REPO / "bin/prov-backup-create-home", REPO / "bin/prov-backup-create-chroot"]
UID = "3723707"


def _run(script, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_home_is_the_accounts_and_closed(script, tmp_path):
    jail = tmp_path / UID / "chroot"
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    home = jail / "home" / UID
    assert (home.stat().st_uid, home.stat().st_gid, oct(home.stat().st_mode & 0o777)) == (int(UID), int(UID), "0o700")
    assert (jail.stat().st_uid, oct(jail.stat().st_mode & 0o777)) == (0, "0o755")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_running_again_keeps_what_is_there(script, tmp_path):
    jail = tmp_path / UID / "chroot"
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    (jail / "home" / UID / "data").write_text("customer data")
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    assert (jail / "home" / UID / "data").read_text() == "customer data"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_half_built_home_from_a_crash_is_replaced(script, tmp_path):
    jail = tmp_path / UID / "chroot"
    stale = jail / "home" / f".{UID}.partial"
    stale.mkdir(parents=True)
    (stale / "half").write_text("")
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    assert not stale.exists() and not (jail / "home" / UID / "half").exists()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("args", [
    ("relative/jail", "/home/1", "1", "1", "1"),
    ("/tmp/x/../etc", "/home/1", "1", "1", "1"),
    ("/tmp/x", "/home/../../etc", "1", "1", "1"),
    ("/tmp/x", "/home/1", "1;id", "1", "1"),
    ("/tmp/x", "/home/1", "1", "1"),
], ids=["relative", "dotdot-jail", "dotdot-home", "uid", "count"])
def test_bad_arguments_exit_2_and_touch_nothing(script, args):
    result = _run(script, *args)
    assert result.returncode == 2, result.stderr
    assert not os.path.exists("/tmp/x")


def test_the_full_jail_runs_rsync_inside(tmp_path):
    jail = tmp_path / UID / "chroot"
    assert _run(SCRIPTS[1], jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    null = (jail / "dev/null").stat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert (jail / "etc/passwd").read_text() == f"{UID}:x:{UID}:{UID}::/home/{UID}:/bin/sh\n"
    inside = subprocess.run(["chroot", str(jail), "/bin/sh", "-c", "rsync --version > /dev/null && echo ok"],
                            capture_output=True, text=True, timeout=30)
    assert inside.stdout == "ok\n", inside.stderr
