"""State files root opens (lock, cookie): never through a link, only its own, in a folder only it controls.

The attack on the old lock: a symlink at the lock path made root truncate the
file it pointed to, at start-up and again on release. Here links, hard links,
other users' files, files and folders others can write are planted where the
daemon keeps its state; the file they point to must stay untouched and the
daemon must refuse with a message naming the path and the problem.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile

import pytest

from provisioning.backend.cookie import CookieError, CookieFile
from provisioning.backend.store import Known, Store, StoreError
from provisioning.base.files import UnsafeFile, check_private, open_private, write_atomically
from provisioning.runtime.lock import AlreadyLocked, PidLock

from helpers import DaemonProcess

NOBODY = 65534
VICTIM_TEXT = "root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def victim(tmp_path):
    """A file root cares about, outside the daemon's state folder."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "passwd"
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture
def state(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    return folder


def _refused(call, *problem: str) -> UnsafeFile:
    with pytest.raises(UnsafeFile) as err:
        call()
    assert all(p in str(err.value) for p in problem), str(err.value)
    return err.value


# -------------------------------------------------------------- open_private

def test_open_private_creates_and_opens_the_daemons_own_file(state):
    fd = open_private(state / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x")
        assert os.get_blocking(fd) and os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert stat.S_IMODE((state / "f").stat().st_mode) == 0o600
    fd = open_private(state / "f", os.O_RDONLY)
    assert os.read(fd, 10) == b"x"
    os.close(fd)


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC])
def test_open_private_never_goes_through_a_symlink(state, victim, flags):
    (state / "f").symlink_to(victim)
    error = _refused(lambda: open_private(state / "f", flags), f"{state}/f: is a symbolic link; refusing")
    assert error.path == str(state / "f")
    assert victim.read_text() == VICTIM_TEXT


def test_open_private_does_not_create_through_a_dangling_symlink(state, tmp_path):
    target = tmp_path / "etc-cron.d-evil"
    (state / "f").symlink_to(target)
    _refused(lambda: open_private(state / "f", os.O_RDWR | os.O_CREAT), "symbolic link")
    assert not target.exists()


@pytest.mark.parametrize("setup, problem", [
    (lambda p: os.chown(p, NOBODY, NOBODY), "belongs to uid 65534"),
    (lambda p: p.chmod(0o666), "writable by group or others (mode 666)"),
    (lambda p: p.chmod(0o620), "writable by group or others (mode 620)"),
    (lambda p: os.link(p, p.parent / "second-name"), "has 2 names"),
])
def test_open_private_refuses_files_others_control(state, setup, problem):
    path = state / "f"
    path.write_text("12345\n")
    setup(path)
    _refused(lambda: open_private(path, os.O_RDWR), str(path), problem)
    assert path.read_text() == "12345\n"


def test_open_private_refuses_what_is_not_a_regular_file(state):
    os.mkfifo(state / "fifo")
    (state / "dir").mkdir()
    _refused(lambda: open_private(state / "fifo", os.O_RDONLY), "not a regular file")   # and does not hang
    _refused(lambda: open_private(state / "dir", os.O_RDWR), "is a directory")


@pytest.mark.parametrize("mode, gid, problem", [
    (0o777, 0, "writable by others (mode 777"),
    (0o775, NOBODY, "writable by others (mode 775, gid 65534)"),
])
def test_a_folder_others_can_write_is_refused(state, mode, gid, problem):
    os.chown(state, 0, gid)
    state.chmod(mode)
    _refused(lambda: open_private(state / "f", os.O_RDWR | os.O_CREAT), f"{state}: (the folder)", problem)
    _refused(lambda: check_private(state / "f"), problem)
    _refused(lambda: write_atomically(state / "f", b"x"), problem)
    assert list(state.iterdir()) == []


def test_a_folder_of_another_user_is_refused(state):
    os.chown(state, NOBODY, NOBODY)
    _refused(lambda: open_private(state / "f", os.O_RDWR | os.O_CREAT), "(the folder) belongs to uid 65534")
    _refused(lambda: check_private(state / "f"), "(the folder) belongs to uid 65534")


def test_sticky_and_root_group_folders_are_fine(state):
    state.chmod(0o1777)                   # like /tmp: others cannot replace our files
    os.close(open_private(state / "a", os.O_RDWR | os.O_CREAT))
    state.chmod(0o775)                    # group root
    os.close(open_private(state / "b", os.O_RDWR | os.O_CREAT))


# ------------------------------------------------------------- check_private

def test_check_private_accepts_a_missing_or_own_file(state):
    check_private(state / "store.sqlite")
    (state / "store.sqlite").write_bytes(b"")
    (state / "store.sqlite").chmod(0o600)
    check_private(state / "store.sqlite")


def test_check_private_refuses_links_and_other_users_files(state, victim):
    (state / "link").symlink_to(victim)
    _refused(lambda: check_private(state / "link"), "is a symbolic link")
    (state / "theirs").write_bytes(b"")
    os.chown(state / "theirs", NOBODY, NOBODY)
    _refused(lambda: check_private(state / "theirs"), "belongs to uid 65534")
    (state / "open").write_bytes(b"")
    (state / "open").chmod(0o646)
    _refused(lambda: check_private(state / "open"), "writable by group or others")


# ---------------------------------------------------------- write_atomically

def test_write_atomically_replaces_a_planted_link_not_its_target(state, victim):
    (state / "cookie").symlink_to(victim)
    write_atomically(state / "cookie", b"rid=001\n", mode=0o600)
    assert victim.read_text() == VICTIM_TEXT
    assert not (state / "cookie").is_symlink() and (state / "cookie").read_bytes() == b"rid=001\n"
    assert [p.name for p in state.iterdir()] == ["cookie"]


# ---------------------------------------------------------------- the lock

def test_the_lock_never_truncates_or_writes_through_a_link(state, victim):
    (state / "d.lock").symlink_to(victim)
    lock = PidLock(state / "d.lock")
    _refused(lock.acquire, "d.lock: is a symbolic link")
    lock.release()
    assert victim.read_text() == VICTIM_TEXT


def test_releasing_the_lock_does_not_hurt_a_file_swapped_in_meanwhile(state, victim):
    path = state / "d.lock"
    with PidLock(path):
        assert path.read_text() == f"{os.getpid()}\n"
        os.rename(path, state / "old.lock")
        path.symlink_to(victim)
    assert victim.read_text() == VICTIM_TEXT
    assert (state / "old.lock").read_text() == ""       # the file it locked is the one emptied


@pytest.mark.parametrize("setup, problem", [
    (lambda p: os.chown(p, NOBODY, NOBODY), "belongs to uid 65534"),
    (lambda p: p.chmod(0o666), "writable by group or others"),
])
def test_a_lock_file_others_control_is_refused(state, setup, problem):
    path = state / "d.lock"
    path.write_text("")
    setup(path)
    _refused(PidLock(path).acquire, problem)
    assert path.read_text() == ""


def test_the_cookie_is_not_read_through_a_link(state, victim):
    (state / "cookie").symlink_to(victim)
    with pytest.raises(CookieError, match="cookie: is a symbolic link; refusing to use it"):
        CookieFile(state / "cookie").read()
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_the_store_is_not_opened_through_a_link(state, victim, suffix):
    (state / f"store{suffix}").symlink_to(victim)
    with pytest.raises(StoreError, match=rf"store{suffix}: is a symbolic link; refusing to use it"):
        Store(state / "store").open()
    assert victim.read_text() == VICTIM_TEXT


# ------------------------------------------- a folder full or read-only at start

@pytest.fixture
def small(tmp_path):
    """A state folder on a tmpfs of its own (1 MiB), to fill or make read-only; TMPDIR beside it."""
    folder = tmp_path / "small"
    folder.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def tmpdir(tmp_path, monkeypatch):
    """Where the store's private copy goes (tempfile's folder): checked empty afterwards."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


WRITER = """
import os, signal, sys
from provisioning.backend.store import Store
from provisioning.base.entry import Entry
store = Store(sys.argv[1]); store.open()
store.remember(Entry.from_values("uid=1,ou=x", {"uid": ["1"]}, "uuid-1")); store.set_cookie("rid=001")
store.flush()
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)        # the transaction stays in the -wal alone
store.close()
"""


def _leave_store(path, how: str) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(path), how], check=False)
    assert os.path.exists(f"{path}-wal") == (how == "killed")


def _fill(folder) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'filler'}", "bs=4096"], capture_output=True)
    assert os.statvfs(folder).f_bavail == 0


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_store_that_cannot_be_written_at_start_is_read_whole_and_written_later(small, tmpdir, fault, how):
    path = small / "store"
    _leave_store(path, how)
    if fault == "full":
        _fill(small)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
    store = Store(path)
    store.open()
    assert store.error and store.cookie == "rid=001" and store.lookup("uuid-1") == Known(
        "uuid-1", "uid=1,ou=x", None, {"uid": ["1"]})            # with what only the -wal had
    assert list(tmpdir.iterdir()) == []                         # the private copy is gone already
    store.set_cookie("rid=002")
    assert not store.flush()
    assert store.lookup("uuid-1") is not None                   # a failed retry does not blind the store
    if fault == "full":
        (small / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True)
    assert store.flush() and store.error is None
    store.close()
    again = Store(path)
    again.open()
    assert again.error is None and again.cookie == "rid=002" and again.uuids() == {"uuid-1"}
    again.close()


@pytest.mark.parametrize("content", [b"", None])
def test_a_store_a_full_folder_never_let_be_written_is_a_new_store(small, tmpdir, content):
    path = small / "store"
    if content is None:                 # what SQLite leaves: a header, no table
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchall()
        assert path.stat().st_size > 0
    else:
        path.write_bytes(content)
    _fill(small)
    store = Store(path)
    store.open()
    assert store.error and store.cookie is None and store.uuids() == set()
    store.set_cookie("rid=001")
    assert not store.flush()
    (small / "filler").unlink()
    assert store.flush()


def test_a_lock_file_that_cannot_be_created_locks_its_folder_and_keeps_others_off(small):
    path = small / "d.lock"
    subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
    first = PidLock(path)
    first.acquire()
    with pytest.raises(AlreadyLocked, match="cannot be created, and another daemon locks its folder"):
        PidLock(path).acquire()
    subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True)
    with pytest.raises(AlreadyLocked, match="is locked by a daemon that could not create its lock file"):
        PidLock(path).acquire()                 # it has its file now; the folder's lock keeps it off
    other_service = PidLock(small / "other.lock")   # a daemon of another service beside it waits too
    with pytest.raises(AlreadyLocked):
        other_service.acquire()
    first.release()
    with PidLock(path), PidLock(small / "other.lock"):
        pass                                    # shared folder locks: both run


# ----------------------------------------------------- through the daemon

def _refuses_to_start(host, *expected: str) -> str:
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3, daemon.text()[-2000:]
    text = daemon.text()
    for part in expected:
        assert part in text, text[-2000:]
    assert "Traceback" not in text and "unexpected error" not in text
    return text


def test_the_daemon_refuses_a_symlink_at_the_lock_path_and_leaves_its_target_alone(host, victim):
    lock = host.layout.cookie.with_name(host.layout.cookie.name + ".lock")
    lock.symlink_to(victim)
    _refuses_to_start(host, f"ERROR {lock}: is a symbolic link; refusing to use it")
    assert victim.read_text() == VICTIM_TEXT and lock.is_symlink()


@pytest.mark.parametrize("setup, problem", [
    (lambda p: os.chown(p, NOBODY, NOBODY), "belongs to uid 65534, not to the daemon's uid 0"),
    (lambda p: p.chmod(0o666), "is writable by group or others (mode 666): chmod go-w it"),
])
def test_the_daemon_refuses_a_lock_file_others_control(host, setup, problem):
    lock = host.layout.cookie.with_name(host.layout.cookie.name + ".lock")
    lock.write_text("4242\n")
    setup(lock)
    _refuses_to_start(host, f"ERROR {lock}: {problem}; refusing to use it")
    assert lock.read_text() == "4242\n"


def test_the_daemon_refuses_a_symlink_at_the_store_path(host, victim):
    store = host.layout.cookie.with_name(host.layout.cookie.name + ".sqlite")
    store.symlink_to(victim)
    _refuses_to_start(host, f"ERROR {store}: is a symbolic link; refusing to use it")
    assert victim.read_text() == VICTIM_TEXT


def test_the_daemon_refuses_a_symlink_at_the_cookie_path(host, victim):
    host.layout.cookie.symlink_to(victim)
    _refuses_to_start(host, f"ERROR COOKIE_FILE {host.layout.cookie}: is a symbolic link; refusing to use it")
    assert victim.read_text() == VICTIM_TEXT
