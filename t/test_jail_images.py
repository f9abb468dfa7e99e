"""The jail image and the jails linked to it, on real folders (as root, like the daemon).

The daemon calls these functions in its process (jailcalls through
LocalCLI.call); here they are called directly, on a backup root the test
makes. The daemon's side (the job, its rate, a kill -9) is t/test_jail_job.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provisioning_backup_rsnapshot import jailcalls, jailimage, relink
from provisioning_backup_rsnapshot.jailfs import walk

from helpers import picture
from jailtest import tool, upgrade  # noqa: F401 - tool is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds jails and chroots into them: needs root")
FIRST = 3_723_700


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "backup"
    root.mkdir()
    return root


def account_dir(root: Path, n: int) -> Path:
    uid = str(FIRST + n)
    return root / uid[-1] / uid[-3:] / uid[1:4] / uid


def build_answer(root: Path, n: int, programs: list[str], limit: int = 64000) -> dict:
    """What the shipped builder answers for jail ``n`` linked from ``root``'s image."""
    uid = str(FIRST + n)
    jail = account_dir(root, n) / "chroot"
    images = {"backup_root": str(root), "programs": programs, "limit": limit}
    return jailcalls.build("chroot", [str(jail), f"/home/{uid}", uid, uid, uid], images)


def build(root: Path, n: int, programs: list[str], limit: int = 64000) -> dict:
    answer = build_answer(root, n, programs, limit)
    assert "refused" not in answer, answer
    return answer["linked"]


def refusal(root: Path, programs: list[str]) -> str:
    """Why the builder refuses jail 0 with ``programs``."""
    answer = build_answer(root, 0, programs)
    assert "linked" not in answer, answer
    return answer["refused"]


def store(root: Path) -> Path:
    return root / jailimage.STORE_NAME


def images(root: Path) -> list[Path]:
    return sorted(p for p in store(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def current(root: Path) -> dict:
    return json.loads((store(root) / "current").read_text())


def inode(path: Path) -> tuple[int, int]:
    info = path.lstat()
    return info.st_dev, info.st_ino


def in_jail(root: Path, n: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(account_dir(root, n) / "chroot"), *argv], capture_output=True,
                          text=True, timeout=30)


def relink_all(root: Path, count: int, limit: int = 64000) -> list[dict]:
    with jailimage.Store.open(str(root)) as opened:
        found = []
        for n in range(count):
            with walk(str(account_dir(root, n) / "chroot")) as jail:
                found.append(relink.move(opened, jail, limit, 0.0))
        return found


# ------------------------------------------------------------------ the image

def test_new_jails_are_hard_links_to_one_read_only_image(root):
    for n in range(3):
        assert build(root, n, ["sh", "rsync"])["how"] == {"hard link": 11}
    (image,) = images(root)
    manifest = json.loads((image / "manifest.json").read_text())
    for entry in manifest["files"]:
        shared = image / "root" / entry["path"]
        info = shared.lstat()
        assert info.st_uid == 0 and not info.st_mode & 0o222 and info.st_nlink == 4      # image + 3 jails
        for n in range(3):
            assert inode(account_dir(root, n) / "chroot" / entry["path"]) == inode(shared)
        # Where it came from: the host file, as it was
        host = Path(entry["real"])
        assert (entry["size"], entry["mtime"]) == (host.stat().st_size, host.stat().st_mtime_ns)
        assert entry["sha256"] == hashlib.sha256(host.read_bytes()).hexdigest()
        assert Path(entry["origin"]).resolve() == host
    assert {e["path"] for e in manifest["files"]} >= {"usr/bin/sh", "usr/bin/rsync", "usr/lib64/ld-linux-x86-64.so.2"}
    assert stat.S_IMODE(store(root).stat().st_mode) == 0o700 and store(root).stat().st_uid == 0
    assert current(root)["programs"] == ["sh", "rsync"]
    inside = in_jail(root, 1, "/bin/sh", "-c", "rsync --version > /dev/null && echo ok")
    assert inside.stdout == "ok\n", inside.stderr


def test_building_a_jail_again_changes_nothing(root):
    build(root, 0, ["sh", "rsync"])
    before = picture(account_dir(root, 0))
    assert build(root, 0, ["sh", "rsync"])["state"] == relink.CURRENT
    assert picture(account_dir(root, 0)) == before


def test_the_link_limit_starts_a_new_image_of_the_same_files(root):
    for n in range(120):
        build(root, n, ["sh"], limit=50)
    found = images(root)
    assert len(found) == 3                                     # 49 + 49 + 22 jails
    contents = {json.loads((i / "manifest.json").read_text())["content"] for i in found}
    assert len(contents) == 1
    links = [f.lstat().st_nlink for i in found for f in (i / "root").rglob("*") if f.is_file()]
    assert max(links) == 50 and sum(links) == 120 * 3 + 3 * 3   # 3 files: sh, libc, the loader
    for n in (0, 60, 119):
        assert in_jail(root, n, "/bin/sh", "-c", "echo ok").stdout == "ok\n"


def test_a_thousand_jails_cost_at_most_100_kb_each(root, capsys):
    """Disk per jail, measured on 1,000 jails: folders, passwd, group, dev/null; no programs of their own."""
    for n in range(1000):
        build(root, n, ["sh", "rsync"])
    image_inodes = {inode(f) for f in store(root).rglob("*")}
    seen, used = set(), 0
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if (info.st_dev, info.st_ino) in seen or (info.st_dev, info.st_ino) in image_inodes:
            continue
        if store(root) in path.parents or path == store(root):
            continue
        seen.add((info.st_dev, info.st_ino))
        used += info.st_blocks * 512
    image = sum(f.lstat().st_blocks * 512 for f in store(root).rglob("*") if f.is_file())
    per_jail = used / 1000
    with capsys.disabled():
        print(f"\n1,000 jails: {per_jail / 1024:.1f} KiB per jail; the image {image / 2**20:.1f} MiB once")
    assert per_jail <= 100 * 1024


# -------------------------------------------------------------- an upgrade

def test_an_upgrade_makes_a_new_image_and_moves_each_jail_file_by_file(root, tool):
    for n in range(3):
        build(root, n, ["sh", str(tool)])
    assert in_jail(root, 0, str(tool)).returncode == 0
    (old,) = images(root)
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is False
        upgrade(tool)
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is True
    new = [i for i in images(root) if i != old]
    assert len(new) == 1 and current(root)["content"] != json.loads((old / "manifest.json").read_text())["content"]
    moved = relink_all(root, 3)
    # Only the program changed: one file per jail, sh and the libraries stay as they are.
    assert [m["moved"] for m in moved] == [1, 1, 1]
    for n in range(3):
        assert inode(account_dir(root, n) / "chroot" / str(tool).lstrip("/")) == \
            inode(new[0] / "root" / str(tool).lstrip("/"))
        assert in_jail(root, n, str(tool)).returncode == 1          # false, now
    with jailimage.Store.open(str(root)) as opened, opened.lock():
        assert opened.prune(set()) == [old.name]
    assert images(root) == new


def test_the_old_image_stays_while_a_jail_links_to_it(root, tool):
    for n in range(2):
        build(root, n, ["sh", str(tool)])
    (old,) = images(root)
    upgrade(tool)
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
        with walk(str(account_dir(root, 0) / "chroot")) as jail:
            relink.move(opened, jail, 64000, 0.0)
        with opened.lock():
            assert opened.prune(set()) == []                       # jail 1 still links to it
    assert old in images(root)


def test_a_change_waits_until_its_files_are_left_alone(root, tool):
    build(root, 0, ["sh", str(tool)])
    upgrade(tool)
    with jailimage.Store.open(str(root)) as opened:
        waiting = jailimage.look(opened, ["sh", str(tool)], 3600, 64000)
        assert not waiting["made"] and str(tool) in waiting["waiting"]
        assert len(images(root)) == 1
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"]


def test_an_upgrade_while_a_look_reads_the_files_is_seen_by_the_next_look(root, tool, monkeypatch):
    # The worst moment: the look has stat'd the files (they are the image's) and decides
    # nothing changed; the upgrade lands before it notes what it saw for the quick look.
    # What it notes must be what it decided on, or every later quick look agrees with it.
    build(root, 0, ["sh", str(tool)])
    matches = jailimage.Store.matches

    def upgraded_meanwhile(store, *args):
        answer = matches(store, *args)
        upgrade(tool)
        monkeypatch.setattr(jailimage.Store, "matches", matches)
        return answer

    monkeypatch.setattr(jailimage.Store, "matches", upgraded_meanwhile)
    monkeypatch.setattr(jailimage, "_looked", {})           # as in a new process: a whole look first
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is False
        assert jailimage.Store.matches is matches                   # the upgrade happened in it
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is True
    assert len(images(root)) == 2


def test_a_link_pointed_at_a_new_file_is_an_upgrade_even_with_the_old_file_left(root, tool):
    # update-alternatives, or a library's soname link moved to a new version: the old file stays.
    named = tool.with_name("chosen")
    named.symlink_to(tool.name)
    build(root, 0, [str(named)])
    other = tool.with_name("other")
    shutil.copy("/usr/bin/false", other)
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, [str(named)], 0, 64000)["made"] is False     # the quick look, from now on
        tool.with_name("chosen.new").symlink_to(other.name)
        os.replace(tool.with_name("chosen.new"), named)
        assert tool.exists()
        assert jailimage.look(opened, [str(named)], 0, 64000)["made"] is True
    relink_all(root, 1)
    assert in_jail(root, 0, str(named)).returncode == 1


def test_a_new_loader_cache_makes_the_next_look_a_whole_one(root, tool, tmp_path, monkeypatch):
    # ldconfig after a library was installed where the loader looks first: no file the image
    # holds changed, but ldd may now find another one. Only a whole look (ldd) can tell.
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(b"one")
    monkeypatch.setattr(jailimage, "LD_CACHE", str(cache))
    build(root, 0, ["sh", str(tool)])
    whole = []
    origins = jailimage.origins
    monkeypatch.setattr(jailimage, "origins", lambda programs: whole.append(1) or origins(programs))
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is False
        quick = len(whole)                                         # the building made the whole look
        new = tmp_path / "ld.so.cache.new"
        new.write_bytes(b"two")
        os.replace(new, cache)
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is False    # the same files
        assert len(whole) == quick + 1
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"] is False and len(whole) == quick + 1


def test_a_library_the_new_program_needs_comes_first_and_one_it_dropped_goes(root, tool):
    build(root, 0, ["sh", str(tool)])
    upgrade(tool, "/usr/bin/rsync")                             # needs seven more libraries
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
        with walk(str(account_dir(root, 0) / "chroot")) as jail:
            steps = []
            relink.between_renames = lambda jail_path, path: steps.append(path)
            try:
                relink.move(opened, jail, 64000, 0.0)
            finally:
                relink.between_renames = None
    assert steps[-1] == str(tool).lstrip("/") and len(steps) == 8     # 7 libraries, then the program
    assert "version" in in_jail(root, 0, str(tool), "--version").stdout
    upgrade(tool, "/usr/bin/true")
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
        with walk(str(account_dir(root, 0) / "chroot")) as jail:
            assert relink.move(opened, jail, 64000, 0.0)["removed"] == 7
    assert not (account_dir(root, 0) / "chroot/usr/lib/x86_64-linux-gnu/libpopt.so.0").exists()


def script(folder: Path, name: str, first_line: str, body: str = "echo from the jail\n") -> Path:
    path = folder / name
    path.write_text(f"{first_line}\n{body}")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("first_line", ["#!/bin/sh", "#! /usr/bin/env -S sh -e"])
def test_a_script_brings_the_interpreter_it_names_and_runs_in_the_jail(root, tool, first_line):
    # JAIL_PROGRAMS names the script alone: without its interpreter the jail could not run it.
    wrapper = script(tool.parent, "wrapper", first_line)
    build(root, 0, [str(wrapper)])
    assert in_jail(root, 0, str(wrapper)).stdout == "from the jail\n"
    files = json.loads((images(root)[0] / "manifest.json").read_text())["files"]
    expected = {str(wrapper).lstrip("/"), "usr/bin/sh"} | ({"usr/bin/env"} if "env" in first_line else set())
    assert expected <= {entry["path"] for entry in files}


def test_an_upgraded_interpreter_is_a_new_image_every_jail_moves_to(root, tool):
    wrapper = script(tool.parent, "wrapper", f"#!{tool}")          # tool: a program of the test's own
    upgrade(tool, "/usr/bin/dash")
    for n in range(2):
        build(root, n, [str(wrapper)])
    assert in_jail(root, 0, str(wrapper)).stdout == "from the jail\n"
    (old,) = images(root)
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, [str(wrapper)], 0, 64000)["made"] is False
        upgrade(tool, "/usr/bin/bash")                             # the interpreter, not the script
        assert jailimage.look(opened, [str(wrapper)], 0, 64000)["made"] is True
    assert [m["moved"] for m in relink_all(root, 2)] == [2, 2]           # bash: libtinfo, then itself
    (new,) = [i for i in images(root) if i != old]
    assert (new / "root" / str(tool).lstrip("/")).read_bytes() == Path("/usr/bin/bash").read_bytes()
    for n in range(2):
        assert inode(account_dir(root, n) / "chroot" / str(tool).lstrip("/")) == \
            inode(new / "root" / str(tool).lstrip("/"))
        assert in_jail(root, n, str(wrapper)).stdout == "from the jail\n"


@pytest.mark.parametrize("first_line, why", [
    ("#!/opt/nowhere/interpreter", "is a script for /opt/nowhere/interpreter, which is not installed"),
    ("#!/usr/bin/env no-such-interpreter", "is a script for no-such-interpreter, which is not installed"),
    ("#!interpreter", "names no interpreter by its absolute path"),
    ("#!", "names no interpreter by its absolute path"),
])
def test_a_script_whose_interpreter_cannot_be_found_is_refused_by_name(root, tmp_path, first_line, why):
    wrapper = script(tmp_path, "wrapper", first_line)
    refused = refusal(root, ["sh", str(wrapper)])
    assert refused.startswith(f"JAIL_PROGRAMS: {wrapper}") and why in refused
    assert not (account_dir(root, 0) / "chroot/home").exists()
    assert jailcalls.programs(["sh", str(wrapper)])[str(wrapper)] == {"refused": refused}


def test_a_script_others_can_change_is_not_followed_to_a_file_every_customer_could_read(root, tmp_path):
    # Whoever writes the script's first line chooses a host file for every jail, readable by all.
    wrapper = script(tmp_path, "wrapper", "#!/etc/shadow")
    with pytest.raises(jailimage.Refused, match="which is not a program"):
        jailimage.chain(str(wrapper))
    wrapper.write_text("#!/usr/bin/true\n")
    for owner, mode in [(FIRST, 0o755), (0, 0o775), (0, 0o757)]:
        os.chown(wrapper, owner, 0)
        wrapper.chmod(mode)
        with pytest.raises(jailimage.Refused, match=f"{wrapper} is not root's alone"):
            jailimage.origins(["sh", str(wrapper)])
    os.chown(wrapper, 0, 0)
    wrapper.chmod(0o755)
    assert jailimage.chain(str(wrapper)) == [str(wrapper), "/usr/bin/true"]


@pytest.mark.parametrize("owner, mode", [(FIRST, 0o755), (0, 0o775), (0, 0o777)])
def test_a_program_others_can_change_is_refused_before_it_is_read(root, tool, monkeypatch, owner, mode):
    # Every jail holds it: whoever may write it would change what every customer runs.
    os.chown(tool, owner, 0)
    tool.chmod(mode)
    monkeypatch.setattr(jailimage, "libraries", lambda program: pytest.fail(f"ldd ran on {program}"))
    refused = refusal(root, [str(tool)])
    assert refused == (f"JAIL_PROGRAMS: {tool} is not root's alone (owner {owner}, mode {mode:o}): "
                       f"every jail would hold it")
    assert jailcalls.programs([str(tool)]) == {str(tool): {"refused": refused}}


def test_scripts_that_name_each_other_are_refused_not_followed_for_ever(root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    script(tmp_path, "one", f"#!{two}")
    script(tmp_path, "two", f"#!{one}")
    with pytest.raises(jailimage.Refused, match="nested more than 4 deep"):
        jailimage.chain(str(one))
    assert jailcalls.programs([str(one), "sh", "no-such-program"]) == {
        str(one): {"refused": f"JAIL_PROGRAMS: {one}: its interpreters are scripts nested more than 4 deep "
                              f"(or in a loop): the kernel would not run it"},
        "sh": {"paths": [jailimage.resolve("sh")]}, "no-such-program": {"missing": True}}


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    """A program of the test's own and the shared library it needs (found by its rpath): what an
    apt upgrade of libc or librsync is to rsync, with a library the test may replace."""
    folder = tmp_path / "linked"
    (folder / "lib").mkdir(parents=True)
    (folder / "main.c").write_text("int answer(void);\nint main(void) { return answer(); }\n")
    program, library = folder / "program", folder / "lib/libanswer.so.1"
    _library(library, 3)
    subprocess.run(["gcc", "-o", program, folder / "main.c", f"-L{library.parent}", "-l:libanswer.so.1",
                    f"-Wl,-rpath,{library.parent}"], check=True)
    return program, library


def _library(library: Path, answer: int) -> None:
    """Build libanswer returning ``answer`` and rename it over ``library``, as dpkg does."""
    source = library.with_name(f"answer{answer}.c")
    source.write_text(f"int answer(void) {{ return {answer}; }}\n")
    new = library.with_name(library.name + ".dpkg-new")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libanswer.so.1", "-o", new, source], check=True)
    os.replace(new, library)


def test_an_upgraded_library_is_a_new_image_and_every_jail_moves_to_it(root, linked):
    program, library = linked
    for n in range(2):
        build(root, n, [str(program)])
    assert [in_jail(root, n, str(program)).returncode for n in range(2)] == [3, 3]
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, [str(program)], 0, 64000)["made"] is False
        _library(library, 4)                                    # the library alone, not the program
        assert jailimage.look(opened, [str(program)], 0, 64000)["made"] is True
    assert [m["moved"] for m in relink_all(root, 2)] == [1, 1]
    assert [in_jail(root, n, str(program)).returncode for n in range(2)] == [4, 4]


def test_a_program_whose_library_ldd_does_not_find_is_refused_by_name(root, linked):
    program, library = linked
    library.unlink()
    refused = refusal(root, ["sh", str(program)])
    assert refused == f"JAIL_PROGRAMS: {program} needs libanswer.so.1, which ldd does not find"
    assert jailcalls.programs([str(program)]) == {str(program): {"refused": refused}}


def test_a_crash_while_an_image_was_made_leaves_nothing_behind(root, tool):
    build(root, 0, ["sh", str(tool)])
    half = store(root) / ".new-0123456789ab"
    (half / "root").mkdir(parents=True)
    (half / "root/half").write_text("")
    upgrade(tool)
    with jailimage.Store.open(str(root)) as opened:
        assert jailimage.look(opened, ["sh", str(tool)], 0, 64000)["made"]
    assert not half.exists() and len(images(root)) == 2


def test_copied_jails_are_converted_to_links(root):
    build(root, 0, ["sh", "rsync"])
    jail = account_dir(root, 0) / "chroot"
    # What the old builder left: a copy of every program and library, link count 1.
    for path in [p for p in jail.rglob("*") if p.is_file() and p.lstat().st_nlink > 1]:
        copy = path.with_name(path.name + ".copy")
        shutil.copy2(path, copy)
        os.utime(copy)
        os.replace(copy, path)
    with jailimage.Store.open(str(root)) as opened:
        with walk(str(jail)) as folder:
            assert relink.plan(relink.index_of(opened), folder).copied == 11
        assert relink_all(root, 1)[0]["moved"] == 11
    assert all(p.lstat().st_nlink == 2 for p in jail.rglob("*") if p.is_file() and "home" not in p.parts
               and p.name not in ("passwd", "group"))


def test_a_home_only_jail_gets_no_programs(root):
    uid = str(FIRST)
    jail = account_dir(root, 0) / "chroot"
    assert jailcalls.build("home", [str(jail), f"/home/{uid}", uid, uid, uid], None) == {"linked": {}}
    build(root, 1, ["sh"])
    before = picture(jail)
    assert relink_all(root, 1)[0]["state"] == relink.NONE
    assert picture(jail) == before


def test_a_jail_without_programs_is_answered_without_a_walk_to_the_store(root, monkeypatch):
    """An operator's CREATE_CHROOT_CMD that makes only folders: the job is told of every such jail,
    and answering each must not cost a walk to a store there may not even be."""
    uid = str(FIRST)
    jail = account_dir(root, 0) / "chroot"
    (jail / "home" / uid).mkdir(parents=True)
    (jail / "dev").mkdir()                                      # an sftp jail's /dev/log
    (jail / "etc").mkdir()
    monkeypatch.setattr(jailcalls, "_store", lambda *a, **k: pytest.fail("the store was looked for"))
    answer = jailcalls.relink(str(root), str(account_dir(root, 0)), str(jail), 64000, "the-entry")
    assert answer == {"state": relink.NONE, "top": str(root)}


# ------------------------------------------------------------ planted links

@pytest.fixture
def outside(tmp_path) -> Path:
    top = tmp_path / "outside"
    (top / "lib").mkdir(parents=True)
    (top / "lib/libc.so.6").write_text("not a library")
    (top / "secret").write_text("precious")
    return top


def test_a_planted_file_link_in_a_jail_is_replaced_not_written_through(root, tool, outside):
    build(root, 0, ["sh", str(tool)])
    upgrade(tool)
    planted = account_dir(root, 0) / "chroot" / str(tool).lstrip("/")
    planted.unlink()
    planted.symlink_to(outside / "secret")
    before = picture(outside)
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
    assert relink_all(root, 1)[0]["moved"] == 1
    assert picture(outside) == before
    assert not planted.is_symlink() and planted.lstat().st_nlink == 2


def test_a_planted_folder_link_in_a_jail_during_a_move_is_refused(root, tool, outside):
    """Between two renames, the jail's library folder becomes a link to a folder outside."""
    build(root, 0, ["sh", str(tool)])
    upgrade(tool, "/usr/bin/rsync")
    libdir = account_dir(root, 0) / "chroot/usr/lib/x86_64-linux-gnu"
    before = picture(outside)

    def plant(jail_path: str, path: str) -> None:
        if not libdir.is_symlink():
            libdir.rename(libdir.with_name("moved-away"))
            libdir.symlink_to(outside / "lib")
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
        relink.between_renames = plant
        try:
            answer = jailcalls.relink(str(root), str(account_dir(root, 0)), str(account_dir(root, 0) / "chroot"),
                                      64000, None)
        finally:
            relink.between_renames = None
    assert picture(outside) == before
    # The folder was held open when the link came: the files went into the real folder, not outside.
    assert answer.get("refused") is None or "not going through it" in answer["refused"]
    assert libdir.is_symlink() and (libdir.with_name("moved-away") / "libpopt.so.0").exists()
    # The next move refuses the jail instead of going through the link.
    again = jailcalls.relink(str(root), str(account_dir(root, 0)), str(account_dir(root, 0) / "chroot"), 64000, None)
    assert "not going through it" in again["refused"] and picture(outside) == before


def test_a_jail_folder_that_is_not_roots_is_refused(root, tool, outside):
    build(root, 0, ["sh", str(tool)])
    upgrade(tool)
    os.chown((account_dir(root, 0) / "chroot" / str(tool).lstrip("/")).parent, FIRST, FIRST)
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
    answer = jailcalls.relink(str(root), str(account_dir(root, 0)), str(account_dir(root, 0) / "chroot"), 64000, None)
    assert "not 0's" in answer["refused"]


def test_a_jail_whose_marker_changed_since_the_survey_is_not_moved(root, tool):
    build(root, 0, ["sh", str(tool)])
    (account_dir(root, 0) / ".entryUUID").write_text("someone-else\n")
    upgrade(tool)
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
    answer = jailcalls.relink(str(root), str(account_dir(root, 0)), str(account_dir(root, 0) / "chroot"), 64000,
                              "the-one-judged")
    assert answer == {"refused": "its owner marker changed since it was looked at"}


# ------------------------------------------------------ another filesystem

@pytest.fixture
def mounted(root):
    """BACKUP_ROOT/5 on a tmpfs of its own, and BACKUP_ROOT/3 a bind mount (same device, no links across)."""
    made = []
    for digit, argv in (("5", ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs"]),):
        (root / digit).mkdir()
        subprocess.run([*argv, str(root / digit)], check=True)
        made.append(root / digit)
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (root / "3").mkdir()
    subprocess.run(["mount", "--bind", str(elsewhere), str(root / "3")], check=True)
    made.append(root / "3")
    yield made
    for folder in reversed(made):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_each_filesystem_has_its_own_image_and_copies_are_made_where_links_cannot_be(root, mounted):
    build(root, 0, ["sh"])                                     # uid ...700: BACKUP_ROOT's filesystem
    assert build(root, 5, ["sh"])["how"] == {"hard link": 3}   # ...705: the tmpfs, its own store
    assert (root / "5" / jailimage.STORE_NAME / "current").is_file()
    assert build(root, 3, ["sh"])["how"] == {"copy": 3}        # ...703: a bind mount, link() says EXDEV
    assert in_jail(root, 3, "/bin/sh", "-c", "echo ok").stdout == "ok\n"
    survey = jailcalls.survey(str(root), "3")["jails"]
    assert [row[4] for row in survey] == ["current"]            # the copies count as the image's


def test_a_jail_archived_after_the_survey_is_not_made_again(root, tool):
    """Delete archives the account directory (a rename): a move that comes after must not recreate it."""
    build(root, 0, ["sh", str(tool)])
    upgrade(tool)
    with jailimage.Store.open(str(root)) as opened:
        jailimage.look(opened, ["sh", str(tool)], 0, 64000)
    marker = (account_dir(root, 0) / ".entryUUID")
    marker.write_text("the-entry\n")
    assert [row[4] for row in jailcalls.survey(str(root), "0")["jails"]] == ["stale"]
    account_dir(root, 0).rename(root / "archived")
    with pytest.raises(FileNotFoundError):
        jailcalls.relink(str(root), str(account_dir(root, 0)), str(account_dir(root, 0) / "chroot"), 64000,
                         "the-entry")
    assert not account_dir(root, 0).exists()


def test_the_walk_of_the_job_makes_nothing(root):
    """The survey and the moves open jails without making what is missing (the builder does make it)."""
    with pytest.raises(FileNotFoundError):
        walk(str(root / "7/707/723/3723707/chroot"), make=False)
    assert list(root.iterdir()) == []
    assert jailcalls.survey(str(root), "7") == {"jails": [], "without": 0}
    assert list(root.iterdir()) == []
