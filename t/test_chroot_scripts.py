"""The two CREATE_CHROOT_CMD scripts, run directly (as root, like the daemon runs them)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.sandbox.layout import REPO

from helpers import picture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sets owners and builds a chroot: needs root (CI runs as root)")
SCRIPTS = [REPO / "bin/prov-backup-create-home", REPO / "bin/prov-backup-create-chroot"]
UID = "3723707"


def _run(script, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=60)


def _owner_mode(path) -> tuple[int, int, str]:
    info = path.lstat()
    return info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_home_is_roots_and_only_incoming_the_accounts(script, tmp_path):
    jail = tmp_path / UID / "chroot"
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    home = jail / "home" / UID
    assert _owner_mode(jail) == _owner_mode(jail / "home") == _owner_mode(home) == (0, 0, "0o755")
    assert _owner_mode(home / "incoming") == (int(UID), int(UID), "0o700")


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
    ("JAIL/../etc", "/home/1", "1", "1", "1"),
    ("JAIL", "/home/../../etc", "1", "1", "1"),
    ("JAIL", "/home/1", "1;id", "1", "1"),
    ("JAIL", "/home/1", "1", "1"),
    ("JAIL", "/home/1:0:0::/:/bin/sh", "1", "1", "1"),
    ("JAIL", "/", "1", "1", "1"),
    ("JAIL", "/home/1", "1", "4294967295", "1"),
], ids=["relative", "dotdot-jail", "dotdot-home", "uid", "count", "passwd-line", "home-is-jail", "uidnumber"])
def test_bad_arguments_exit_2_and_touch_nothing(script, args, tmp_path):
    # JAIL: a path of this test's own that does not exist (a shared /tmp/x may, made by anyone).
    jail = tmp_path / "x"
    result = _run(script, *(a.replace("JAIL", str(jail)) for a in args))
    assert result.returncode == 2, result.stderr
    assert not jail.exists() and list(tmp_path.iterdir()) == []


def test_the_full_jail_runs_rsync_inside(tmp_path):
    jail = tmp_path / UID / "chroot"
    assert _run(SCRIPTS[1], jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    null = (jail / "dev/null").stat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert (jail / "etc/passwd").read_text() == f"{UID}:x:{UID}:{UID}::/home/{UID}:/bin/sh\n"
    home = jail / "home" / UID
    assert _owner_mode(home / ".ssh") == (int(UID), int(UID), "0o700")
    assert _owner_mode(home / ".ssh/authorized_keys") == (int(UID), int(UID), "0o600")
    inside = subprocess.run(["chroot", str(jail), "/bin/sh", "-c", "rsync --version > /dev/null && echo ok"],
                            capture_output=True, text=True, timeout=30)
    assert inside.stdout == "ok\n", inside.stderr


def test_run_by_hand_a_script_gets_the_interpreter_it_names(tmp_path):
    wrapper = tmp_path / "tools/wrapper"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/usr/bin/env bash\n[ -n \"$BASH_VERSION\" ] && echo bash here\n")
    wrapper.chmod(0o755)
    jail = tmp_path / UID / "chroot"
    built = subprocess.run([str(SCRIPTS[1]), jail, f"/home/{UID}", UID, UID, UID], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "CHROOT_PROGRAMS": str(wrapper)})
    assert built.returncode == 0, built.stderr
    assert (jail / "usr/bin/bash").is_file() and (jail / "usr/bin/env").is_file()
    inside = subprocess.run(["chroot", str(jail), str(wrapper)], capture_output=True, text=True, timeout=30)
    assert inside.stdout == "bash here\n", inside.stderr
    wrapper.write_text("#!/opt/nowhere/bash\n")
    again = subprocess.run([str(SCRIPTS[1]), tmp_path / "other" / "chroot", f"/home/{UID}", UID, UID, UID],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "CHROOT_PROGRAMS": str(wrapper)})
    assert again.returncode == 1
    assert f"CHROOT_PROGRAMS: {wrapper} is a script for /opt/nowhere/bash, which is not installed" in again.stderr


# ------------------------------------------------------------ planted links
#
# A jail may exist already, with whatever someone put in it. The scripts must
# make nothing through a link and use no folder that is not root's; outside
# the jail nothing may change. Each case plants something, runs the script
# and compares a picture of the outside (every path, kind, owner, mode,
# content and link target) before and after.

@pytest.fixture
def outside(tmp_path):
    """A folder outside the backup root, with what a link would aim at: files, folders, a passwd."""
    top = tmp_path / "outside"
    (top / "etc").mkdir(parents=True)
    (top / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (top / "dev").mkdir()
    (top / "null").write_text("not a device")
    (top / "lib").mkdir()
    (top / "lib/keep.so").write_text("library")
    (top / "home").mkdir()
    return top


def _jail(tmp_path):
    jail = tmp_path / "backup" / UID / "chroot"
    jail.mkdir(parents=True)
    return jail


# (what to plant, relative to the jail -> target relative to outside; which scripts refuse)
PLANTS = {
    "etc": ("etc", "etc", {"prov-backup-create-chroot"}),
    "dev": ("dev", "dev", {"prov-backup-create-chroot"}),
    "libdir": ("usr/lib/x86_64-linux-gnu", "lib", {"prov-backup-create-chroot"}),
    "lib64": ("lib64", "lib", {"prov-backup-create-chroot"}),
    "home-parent": ("home", "home", {"prov-backup-create-chroot", "prov-backup-create-home"}),
    "home": (f"home/{UID}", "home", {"prov-backup-create-chroot", "prov-backup-create-home"}),
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("plant", PLANTS, ids=str)
def test_a_planted_folder_link_is_refused_and_nothing_outside_changes(script, plant, tmp_path, outside):
    where, target, refusers = PLANTS[plant]
    jail = _jail(tmp_path)
    (jail / where).parent.mkdir(parents=True, exist_ok=True)
    (jail / where).symlink_to(outside / target)
    before = picture(outside)
    result = _run(script, jail, f"/home/{UID}", UID, UID, UID)
    assert picture(outside) == before
    assert (jail / where).is_symlink()
    if script.name in refusers:
        assert result.returncode == 1 and "refused" in result.stderr, result.stderr
        assert str(jail / where) in result.stderr          # not replaced either: a folder link is refused


@pytest.mark.parametrize("plant", ["dev/null", "etc/passwd", "etc/group"])
def test_a_planted_file_link_is_replaced_not_written_through(plant, tmp_path, outside):
    jail = _jail(tmp_path)
    (jail / plant).parent.mkdir(parents=True)
    (jail / plant).symlink_to(outside / ("null" if plant == "dev/null" else "etc/passwd"))
    before = picture(outside)
    result = _run(SCRIPTS[1], jail, f"/home/{UID}", UID, UID, UID)
    assert picture(outside) == before
    assert result.returncode == 0, result.stderr
    made = (jail / plant).lstat()
    assert not stat.S_ISLNK(made.st_mode) and made.st_uid == 0
    if plant == "dev/null":
        assert stat.S_ISCHR(made.st_mode) and made.st_rdev == os.makedev(1, 3)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_folder_in_the_jail_that_is_not_roots_is_refused(script, tmp_path, outside):
    jail = _jail(tmp_path)
    (jail / "home").mkdir()
    os.chown(jail / "home", int(UID), int(UID))
    result = _run(script, jail, f"/home/{UID}", UID, UID, UID)
    assert result.returncode == 1 and f"{jail}/home is a folder owned by {UID}:{UID}" in result.stderr
    assert not (jail / "home" / UID).exists()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_link_on_the_way_to_the_jail_is_refused(script, tmp_path, outside):
    # The account directory (the jail's parent) is a link someone planted in a folder they can write.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / UID).symlink_to(outside / "home")
    before = picture(outside)
    result = _run(script, shared / UID / "chroot", f"/home/{UID}", UID, UID, UID)
    assert picture(outside) == before
    assert result.returncode == 1 and "not going through it" in result.stderr, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_stale_partial_home_that_is_a_link_is_removed_not_followed(script, tmp_path, outside):
    jail = _jail(tmp_path)
    (jail / "home").mkdir()
    (outside / "home/data").write_text("someone's data")
    (jail / "home" / f".{UID}.partial").symlink_to(outside / "home")
    before = picture(outside)
    assert _run(script, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    assert picture(outside) == before
    assert (jail / "home" / UID / "incoming").is_dir()


def test_a_jail_built_twice_is_the_same(tmp_path):
    jail = _jail(tmp_path)
    assert _run(SCRIPTS[1], jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    first = picture(jail)
    assert _run(SCRIPTS[1], jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    assert picture(jail) == first


@pytest.mark.parametrize("name", ["prov-backup-create-home", "prov-backup-create-chroot"])
def test_the_installed_console_scripts_are_the_same_programs(name, tmp_path):
    installed = Path(sys.executable).parent / name
    jail = tmp_path / UID / "chroot"
    assert _run(installed, jail, f"/home/{UID}", UID, UID, UID).returncode == 0
    assert (jail / "home" / UID / "incoming").stat().st_uid == int(UID)
    wrong = _run(installed, jail, f"/home/{UID}", UID, UID)
    assert wrong.returncode == 2 and f"usage: {name} JAIL HOME UID UIDNUMBER GIDNUMBER" in wrong.stderr
