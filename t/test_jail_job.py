"""The jail job through the daemon: jails follow an upgrade of the host's programs.

Each test upgrades a program of its own (JAIL_PROGRAMS names a copy of
``true``; the test renames a copy of ``false`` or ``rsync`` over it, as apt
does) and waits, with a deadline, for what the job must bring about.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from provisioning.sandbox.layout import REPO, write_recorder
from provisioning_backup_rsnapshot import jailjob

from helpers import DaemonProcess, picture, wait_until
from jailtest import (  # noqa: F401 - jails and tool are fixtures
    UIDS, content, figures, images, in_current_image, inode, jail, jails, provision, run_in, scrape, store, tool,
    upgrade,
)
from test_mail import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds jails and chroots into them: needs root")
FAULT = Path(__file__).with_name("jail_fault.py")


# ------------------------------------------------------------- copies

def test_the_copies_an_operators_script_made_are_linked_to_the_image(jails, directory):
    """The old copying builder as an operator's script (run as a command): the job links its copies."""
    write_recorder(jails.chroot_cmd, jails.chroot_log, then=str(REPO / "bin/prov-backup-create-chroot"))
    jails.set("Backup", CREATE_CHROOT_CMD=jails.chroot_cmd, JAIL_PROGRAMS="sh rsync")
    with DaemonProcess(jails):
        provision(directory, UIDS[:2])
        assert len(jails.chroot_calls()) == 2
        wait_until(lambda: all(in_current_image(jails, uid, "usr/bin/rsync") for uid in UIDS[:2]),
                   "the copies linked to the image")
    assert run_in(jails, UIDS[0], "/bin/sh", "-c", "rsync --version").returncode == 0


def test_existing_copied_jails_are_converted_at_start(jails, directory):
    with DaemonProcess(jails):
        provision(directory)
    # What the old builder left in every jail: copies (it replaces the links, whatever is there).
    programs = jails.service["Backup"]["JAIL_PROGRAMS"]
    for uid in UIDS:
        place = jail(jails, uid)
        subprocess.run([str(REPO / "bin/prov-backup-create-chroot"), str(place), f"/home/{uid}", uid, uid, uid],
                       check=True, env={**os.environ, "CHROOT_PROGRAMS": programs})
        assert (place / "usr/bin/sh").stat().st_nlink == 1
    with DaemonProcess(jails) as daemon:
        wait_until(lambda: all(in_current_image(jails, uid, "usr/bin/sh") for uid in UIDS), "the copies linked")
        daemon.wait_for(r"jails: 3 on the current image, 3 moved to it in this pass")


# ------------------------------------------------------------- an upgrade

def test_an_upgrade_moves_every_jail_and_the_old_image_goes(jails, directory, tool):
    port = free_port()
    jails.set("Backup", JAIL_RELINK_RATE=2)
    jails.set("Service", METRICS_PORT=port)
    program = str(tool).lstrip("/")
    with DaemonProcess(jails) as daemon:
        provision(directory)
        (old,) = images(jails)
        assert all(run_in(jails, uid, str(tool)).returncode == 0 for uid in UIDS)
        wait_until(lambda: scrape(port).get("provisioning_jails_current") == 3, "3 jails current in the metrics")
        upgrade(tool)
        # At 2 jails a second the move takes a while: the metrics see them stale first.
        wait_until(lambda: scrape(port).get("provisioning_jails_stale", 0) >= 1, "stale jails in the metrics")
        wait_until(lambda: all(in_current_image(jails, uid, program) for uid in UIDS), "every jail moved")
        wait_until(lambda: not old.exists(), "the old image removed")
        daemon.wait_for(r"jail image \S+ of \S+ removed: no jail links to it any more")
        assert all(run_in(jails, uid, str(tool)).returncode == 1 for uid in UIDS)      # false, now
        wait_until(lambda: scrape(port).get("provisioning_jails_stale") == 0, "no stale jail in the metrics")
        wait_until(lambda: figures(jails).get("current") == 3 and figures(jails).get("stale") == 0, "the status file")
        status = subprocess.run([sys.executable, "-m", "provisioning", "status", "-c", str(jails.config), "-g",
                                 str(jails.global_config)], capture_output=True, text=True, timeout=60)
    assert "jails 3 with programs: 3 on the current image, 0 on an old one" in status.stdout
    assert "old jail image" not in status.stdout.splitlines()[0]


def test_status_counts_every_jail_stale_as_soon_as_a_new_image_is_made(jails, directory, tool):
    """Right after an upgrade no jail is on the new image: the status file says so at once (status and
    the metrics read the same figures), not bucket by bucket as the pass (at JAIL_RELINK_RATE) gets to them."""
    jails.set("Backup", JAIL_RELINK_RATE=0.1)            # a jail every 10 s: the pass is slow
    with DaemonProcess(jails):
        provision(directory)
        wait_until(lambda: figures(jails).get("current") == 3, "3 jails current in the status file")
        first = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != first, "the new image")
        # Written with the new image, before the pass has moved more than one jail.
        wait_until(lambda: (figures(jails).get("stale"), figures(jails).get("current")) == (3, 0),
                   "3 stale, 0 current in the status file", timeout=4)
        assert figures(jails)["stale_since"] == json.loads((store(jails) / "current").read_text())["since"]


def test_after_a_restart_status_keeps_the_last_figures_until_the_pass_counts_again(jails, directory, tool):
    with DaemonProcess(jails):
        provision(directory)
        wait_until(lambda: figures(jails).get("current") == 3, "3 jails current in the status file")
    jails.set("Backup", JAIL_RELINK_RATE=0.1)
    restarted = time.time()
    with DaemonProcess(jails):
        # The first status the new daemon writes (after bucket 0, which has no jail) still knows
        # the jails of buckets 1 to 3; it used to say 0 until the pass reached them.
        wait_until(lambda: figures(jails).get("written", 0) >= restarted, "the new daemon's status")
        assert (figures(jails)["current"], figures(jails)["stale"]) == (3, 0)
        first = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != first, "the new image")
        wait_until(lambda: (figures(jails).get("stale"), figures(jails).get("current")) == (3, 0),
                   "3 stale, 0 current in the status file", timeout=4)


def test_programs_outside_bin_alone_are_followed_through_an_upgrade(jails, directory, tool):
    """JAIL_PROGRAMS without sh or rsync (an operator's program in /opt or /usr/local/bin): the jails'
    bin folders stay empty, and the job must still see the programs and move every jail."""
    jails.set("Backup", JAIL_PROGRAMS=str(tool))
    program = str(tool).lstrip("/")
    with DaemonProcess(jails) as daemon:
        provision(directory)
        assert all(run_in(jails, uid, str(tool)).returncode == 0 for uid in UIDS)
        first = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != first and all(in_current_image(jails, uid, program) for uid in UIDS),
                   "every jail on the new image")
        assert all(run_in(jails, uid, str(tool)).returncode == 1 for uid in UIDS)      # false, now
        daemon.wait_for(r"jails: 3 on the current image")
        assert "the jail job failed" not in daemon.text()


def test_a_script_in_jail_programs_runs_in_every_jail_and_follows_its_interpreters_upgrade(jails, directory, tool):
    """JAIL_PROGRAMS names a script whose interpreter (tool) is named nowhere else: an apt upgrade of
    the interpreter is one of the jail's programs changing, and every jail follows it."""
    upgrade(tool, "/usr/bin/dash")
    wrapper = tool.with_name("wrapper")
    wrapper.write_text(f"#!{tool}\necho \"${{BASH_VERSION:-dash}}\"\n")
    wrapper.chmod(0o755)
    jails.set("Backup", JAIL_PROGRAMS=str(wrapper))
    interpreter = str(tool).lstrip("/")
    with DaemonProcess(jails):
        provision(directory)
        assert [run_in(jails, uid, str(wrapper)).stdout for uid in UIDS] == ["dash\n"] * 3
        first = content(jails)
        upgrade(tool, "/usr/bin/bash")
        wait_until(lambda: content(jails) != first and all(in_current_image(jails, uid, interpreter) for uid in UIDS),
                   "every jail on the interpreter's new image")
        assert all(run_in(jails, uid, str(wrapper)).stdout.startswith("5.") for uid in UIDS)


def test_jail_programs_changed_between_two_starts_moves_every_jail(jails, directory, tool):
    # An operator adds a program to JAIL_PROGRAMS and later drops one: at the next start the
    # image holds what the key names, and every jail follows (the new file there, the dropped gone).
    other = tool.with_name("othertool")
    other.write_bytes(Path("/usr/bin/false").read_bytes())
    other.chmod(0o755)
    with DaemonProcess(jails):
        provision(directory, UIDS[:2])
    jails.set("Backup", JAIL_PROGRAMS=f"sh {tool} {other}")
    with DaemonProcess(jails):
        added = str(other).lstrip("/")
        wait_until(lambda: all((jail(jails, uid) / added).exists() and in_current_image(jails, uid, added)
                               for uid in UIDS[:2]), "every jail with the added program")
        assert all(run_in(jails, uid, str(other)).returncode == 1 for uid in UIDS[:2])
    jails.set("Backup", JAIL_PROGRAMS=f"sh {other}")
    with DaemonProcess(jails) as daemon:
        wait_until(lambda: all(not (jail(jails, uid) / str(tool).lstrip("/")).exists() for uid in UIDS[:2]),
                   "the dropped program gone from every jail")
        assert all(in_current_image(jails, uid, added) for uid in UIDS[:2])
        daemon.wait_for(r"jail image \S+ of \S+ removed: no jail links to it any more")


def test_an_upgrade_with_the_link_limit_reached_moves_every_jail_to_sibling_images(jails, directory, tool):
    # JAIL_LINK_LIMIT 2: an image file holds its own name and one jail's, so each jail needs
    # an image of its own, before and after the upgrade; no file ever has more links.
    jails.set("Backup", JAIL_LINK_LIMIT=2)
    program = str(tool).lstrip("/")

    def on_current_content() -> bool:
        now = content(jails)
        try:
            theirs = {inode(f) for i in images(jails) if json.loads((i / "manifest.json").read_text())["content"] == now
                      for f in (i / "root").rglob("*") if f.is_file()}
        except FileNotFoundError:
            return False            # an old image removed while this looked at it: look again
        return all((jail(jails, uid) / program).exists() and inode(jail(jails, uid) / program) in theirs
                   for uid in UIDS)

    with DaemonProcess(jails) as daemon:
        provision(directory)
        assert len(images(jails)) == 3 and on_current_content()
        old = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != old and on_current_content(), "every jail on the new content")
        wait_until(lambda: len(images(jails)) == 3, "the old images removed")
        daemon.wait_for(r"jail image \S+ of \S+ removed: no jail links to it any more", count=3)
    assert max(f.lstat().st_nlink for i in images(jails) for f in (i / "root").rglob("*") if f.is_file()) <= 2
    assert all(run_in(jails, uid, str(tool)).returncode == 1 for uid in UIDS)


def test_a_jail_whose_marker_is_another_entrys_or_missing_is_left_alone(jails, directory, tool):
    program = str(tool).lstrip("/")
    with DaemonProcess(jails) as daemon:
        provision(directory)
        a, b, c = (jails.account_dir(uid) for uid in UIDS)
        (a / ".entryUUID").write_text((b / ".entryUUID").read_text())        # B's entry, in A's directory
        (c / ".entryUUID").unlink()
        before = {uid: picture(jail(jails, uid)) for uid in (UIDS[0], UIDS[2])}
        old = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != old, "a new image")
        wait_until(lambda: in_current_image(jails, UIDS[1], program), "B moved")
        wait_until(lambda: figures(jails).get("left_alone") == 2 and figures(jails).get("current") == 1,
                   "the figures")
        daemon.wait_for(r"jails: 1 on the current image, 1 moved to it in this pass, 0 stale, 2 left alone")
        assert {uid: picture(jail(jails, uid)) for uid in (UIDS[0], UIDS[2])} == before
        assert len(images(jails)) == 2                 # A and C still link to the old one


def test_a_kill_9_between_two_renames_resumes_at_the_next_start(jails, directory, tool, tmp_path):
    armed, reached = tmp_path / "armed", tmp_path / "reached"
    program = str(tool).lstrip("/")

    class Faulty(DaemonProcess):
        def command(self) -> list[str]:
            return [self.python, str(FAULT), *super().command()[3:]]

    env = {"JAIL_FAULT_ARMED": str(armed), "JAIL_FAULT_REACHED": str(reached),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULT.parent), os.environ.get("PYTHONPATH")]))}
    daemon = Faulty(jails, env=env).start()
    try:
        provision(directory)
        (old,) = images(jails)
        armed.write_text("")
        upgrade(tool, "/usr/bin/rsync")             # seven more libraries: eight renames per jail
        wait_until(reached.exists, "the first rename of a move")
        daemon.kill_all()
    finally:
        if daemon.running:
            daemon.kill_all()
    where, first = reached.read_text().split()
    # Between two renames: the first file is the new image's, the program still the old one,
    # and a login finds everything it needs.
    uid = Path(where).parent.name
    assert in_current_image(jails, uid, first) and not in_current_image(jails, uid, program)
    assert run_in(jails, uid, str(tool)).returncode == 0
    with DaemonProcess(jails) as daemon:
        wait_until(lambda: all(in_current_image(jails, u, program) for u in UIDS), "every jail moved")
        wait_until(lambda: not old.exists(), "the old image removed")
    for u in UIDS:
        assert "rsync" in run_in(jails, u, str(tool), "--version").stdout
        assert not list(jail(jails, u).rglob("*.jail-new"))


# ------------------------------------------------------------- over CLISSH

def test_the_job_runs_on_the_gateways_helper(jails, directory, sshd, tool):
    jails.set("Service", TRANSPORTAPI="CLISSH")
    jails.set("Gateway", **sshd)
    program = str(tool).lstrip("/")
    with DaemonProcess(jails) as daemon:
        provision(directory, UIDS[:2])
        daemon.wait_for(r"gateway: call jail job: look \(on 127\.0\.0\.1\)")
        old = content(jails)
        upgrade(tool)
        wait_until(lambda: content(jails) != old, "a new image", timeout=60)
        wait_until(lambda: all(in_current_image(jails, uid, program) for uid in UIDS[:2]), "every jail moved",
                   timeout=120)
    assert run_in(jails, UIDS[0], str(tool)).returncode == 1


@pytest.mark.parametrize("answer, counts", [
    ({"state": "none", "top": "/b"}, {"stale": 0, "without_programs": 1, "current": 0}),
    ({"state": "nostore", "top": "/b"}, {"stale": 1, "without_programs": 0, "current": 0}),
])
def test_a_move_that_finds_nothing_to_move_is_counted_not_a_crash(answer, counts):
    """A jail the survey found stale may answer "nothing of an image here" or "no image here any more"
    when it is moved: the job counts it and goes on (it once fell over that answer, every 0.5 s)."""
    class Transport:
        def call(self, modules, function, *args, shown=""):
            return answer
    job = jailjob.JailJob(types.SimpleNamespace(backup_root="/b", jail_link_limit=10), Transport(), lambda uid: None)
    job.figures.buckets["1"] = {"stale": 1, "without_programs": 0, "current": 0}
    assert job._move("1", "/b/1/dir", "/b/1/dir/chroot", "uuid", {"old-image": 3}) == 0
    assert job.figures.buckets["1"] == counts and job.figures.images_in_use == {"old-image"}


# ------------------------------------------------------------ status

def test_status_warns_of_a_jail_stale_for_more_than_a_day():
    from provisioning_backup_rsnapshot import jailstatus

    now = time.time()
    figures_ = {"stale": 2, "stale_since": now - 86400 - 60, "current": 5, "jails": 7, "left_alone": 0,
                "refused": 0, "without_programs": 0, "stores": {}, "programs": ["sh", "rsync"], "written": now}
    assert jailstatus.warnings(figures_, now) == [
        f"2 jail(s) on an old jail image or with copied programs since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(figures_['stale_since']))} (more than a day)"]
    assert jailstatus.warnings({**figures_, "stale_since": now - 3600}, now) == []
    assert jailstatus.warnings({**figures_, "stale": 0}, now) == []
