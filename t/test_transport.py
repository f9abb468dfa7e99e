"""One set of transport tests, run against LocalCLI and against CLISSH on a real sshd.

The file operations are attacked as a customer would: links planted at the
target, at a folder on the way, dangling, pointing out of the backup root;
each attack asserts that the operation failed with an OSError naming the
path and that nothing outside changed (modes, owners, contents). The scene
lives in a folder only root can write (under /run), so that the rule "links
are followed only where only root could have put them" is tested on both
sides, not hidden behind /tmp's sticky, world-writable folder.
"""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning.transport import (
    CLISSH, DryRun, Interrupted, LocalCLI, build, request_deadline, within_deadline,
)
from provisioning.transport import base, nofollow, spawn
from provisioning.transport.base import PAST_DEADLINE
from provisioning.transport import commandguard

from helpers import gone, process, processes, wait_until

CUSTOMER = (1234, 1234)


@pytest.fixture(params=["LocalCLI", "CLISSH"])
def make(request):
    """Makes the transport under test: ``make(stopping=None)``; closed after the test."""
    made = []

    def transport(stopping=None):
        if request.param == "LocalCLI":
            made.append(LocalCLI(timeout=30, stopping=stopping))
        else:
            sshd = request.getfixturevalue("sshd")
            made.append(CLISSH(host=sshd["HOST"], user=sshd["USER"], key_file=sshd["DSA_FILE"],
                               port=sshd["PORT"], known_hosts=sshd["KNOWN_HOSTS"], timeout=30,
                               stopping=stopping))
        return made[-1]
    yield transport
    for each in made:
        each.close()


@pytest.fixture
def transport(make):
    return make()


@dataclass
class Scene:
    base: Path      # root's alone: /run/<temp>
    root: Path      # the backup root
    home: Path      # a customer's home inside it (the customer's, like today's homes)
    victim: Path    # outside the backup root: root must never touch it

    def plant(self, link: Path, target: str | Path, owner: tuple[int, int] = CUSTOMER) -> Path:
        """A symbolic link as the customer (or ``owner``) would make it."""
        os.symlink(target, link)
        os.lchown(link, *owner)
        return link


@pytest.fixture
def scene():
    if os.geteuid() != 0:
        pytest.skip("plays a customer: chowns to another uid and writes under /run (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="transport-", dir="/run"))
    root = base / "backup"
    home = root / "7" / "3723707" / "home"
    home.mkdir(parents=True)
    for folder in (base, root, root / "7", root / "7" / "3723707"):
        os.chmod(folder, 0o755)
    os.chown(home, *CUSTOMER)
    victim = base / "victim"
    (victim / "folder" / "deep").mkdir(parents=True)
    (victim / "secret").write_text("precious")
    (victim / "folder" / "deep" / "file").write_text("kept")
    os.chmod(victim / "folder", 0o750)
    os.chmod(victim / "secret", 0o600)
    yield Scene(base, root, home, victim)
    shutil.rmtree(base)


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` (and itself): type, mode, owner, content or link target."""
    seen = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            what = path.read_bytes()
        else:
            what = None
        seen[str(path)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, what)
    return seen


def owner_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


# ------------------------------------------------------------ happy paths

def test_makedirs_creates_parents_and_sets_mode_and_owner_of_the_last(transport, scene):
    target = scene.home / "incoming" / "a b" / "c"
    transport.makedirs(str(target), mode=0o750, owner=CUSTOMER)
    assert owner_mode(target) == (*CUSTOMER, 0o750)
    assert owner_mode(target.parent)[:2] == (0, 0)          # parents are root's
    transport.makedirs(str(target), mode=0o700, owner=(0, 0))  # an existing folder is brought in line
    assert owner_mode(target) == (0, 0, 0o700)


def test_write_file_replaces_atomically_with_mode_and_owner(transport, scene):
    target = scene.root / "account.conf"
    target.write_text("old")
    transport.write_file(str(target), b"new\n", mode=0o640, owner=CUSTOMER)
    assert target.read_bytes() == b"new\n" and owner_mode(target) == (*CUSTOMER, 0o640)
    transport.write_file(str(target), b"")
    assert target.read_bytes() == b"" and owner_mode(target) == (0, 0, 0o644)
    assert sorted(p.name for p in scene.root.iterdir()) == ["7", "account.conf"]     # no temp files left


def test_exists_sees_entries_themselves(transport, scene):
    scene.plant(scene.home / "dangling", "/nonexistent")
    assert transport.exists(str(scene.home)) and transport.exists(str(scene.home / "dangling"))
    assert not transport.exists(str(scene.home / "missing"))
    assert not transport.exists(str(scene.home / "missing" / "below"))
    assert transport.exists("/") and transport.exists("/bin/sh")     # /bin -> usr/bin is root's: followed


def test_realpath_resolves_every_link_as_confine_needs(transport, scene):
    scene.plant(scene.home / "incoming", str(scene.victim))
    assert transport.realpath(str(scene.home / "incoming" / "folder")) == str(scene.victim / "folder")
    assert transport.realpath(str(scene.home / ".." / "home" / "not" / "there")) == str(scene.home / "not" / "there")


def test_realpaths_share_folders_and_still_resolve_every_link(transport, scene):
    # The second path's prefix was seen as a real folder for the first; a link
    # below it, a relative link, a link to a link, a file in the middle, ``..``
    # and a missing tail must still come out as os.path.realpath says.
    scene.plant(scene.home / "incoming", str(scene.victim))
    scene.plant(scene.home / "up", "../../7")
    scene.plant(scene.home / "hop", str(scene.home / "incoming"))
    (scene.home / "file").write_text("x")
    paths = [str(scene.root), str(scene.home), str(scene.home / "incoming" / "folder" / "deep"),
             str(scene.home / "up" / "3723707"), str(scene.home / "hop" / "secret"),
             str(scene.home / "file" / "below"), str(scene.home / ".." / "home" / "not" / "there"),
             str(scene.home / "not" / "there"), "/", str(scene.home) + "/"]
    assert transport.realpaths(paths) == [os.path.realpath(path) for path in paths]
    assert transport.realpaths([]) == []


def test_rename_remove_and_remove_tree(transport, scene):
    src, dst = scene.home / "src", scene.home / "dst"
    src.write_text("x")
    dst.write_text("replaced")
    transport.rename(str(src), str(dst))
    assert not src.exists() and dst.read_text() == "x"
    transport.remove(str(dst))
    transport.remove(str(dst))                                   # already gone is fine
    transport.remove(str(scene.home / "no" / "such" / "file"))   # so is a missing folder
    assert not dst.exists()
    tree = scene.home / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("f")
    (tree / "g").write_text("g")
    transport.remove_tree(str(tree))
    transport.remove_tree(str(tree))                             # already gone is fine
    assert not tree.exists() and scene.home.is_dir()


def test_remove_tree_takes_a_tree_deeper_than_the_descriptor_limit(transport, scene, monkeypatch):
    # A customer can nest folders deeper than root may open descriptors (and than Python may recurse).
    tree = scene.home / "deep"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))     # binds LocalCLI; CLISSH runs the same code
    try:
        transport.remove_tree(str(tree))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not tree.exists()


def test_remove_tree_stops_when_a_folder_was_moved_under_it(tmp_path):
    # Going back up through '..' must land in the folder the walk came down from.
    (tmp_path / "a" / "b").mkdir(parents=True)
    inner = os.open(tmp_path / "a" / "b", os.O_RDONLY)
    try:
        elsewhere = os.stat(tmp_path)                            # not b's parent
        with pytest.raises(OSError, match="was moved while it was being removed") as err:
            nofollow._up(inner, [["", (elsewhere.st_dev, elsewhere.st_ino), []]], str(tmp_path / "a"))
        assert err.value.errno == errno.EAGAIN
        parent = os.stat(tmp_path / "a")
        up = nofollow._up(inner, [["", (parent.st_dev, parent.st_ino), []]], str(tmp_path / "a"))
        os.close(up)
    finally:
        os.close(inner)


@pytest.mark.parametrize("operation, reason", [
    ("exists relative", errno.EINVAL), ("makedirs dotdot", errno.EINVAL),
    ("write_file missing folder", errno.ENOENT), ("remove_tree dotdot", errno.EINVAL),
])
def test_bad_paths_are_refused_naming_them(transport, scene, operation, reason):
    # Every path stays inside the scene: a broken transport must not be able to hurt the host.
    home = scene.home
    call = {
        "exists relative": lambda: transport.exists("relative/path"),
        "makedirs dotdot": lambda: transport.makedirs(f"{home}/../home/x"),
        "write_file missing folder": lambda: transport.write_file(f"{home}/no-such-folder/f", b""),
        "remove_tree dotdot": lambda: transport.remove_tree(f"{home}/sub/.."),
    }[operation]
    (home / "sub").mkdir()
    before = snapshot(scene.base)
    with pytest.raises(OSError) as err:
        call()
    assert err.value.errno == reason
    assert snapshot(scene.base) == before


def test_a_file_on_the_way_is_named(transport, scene):
    (scene.home / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=rf"{scene.home}/file: Not a directory: '{scene.home}/file/sub'"):
        transport.makedirs(str(scene.home / "file" / "sub"))


# ---------------------------------------------------------- planted links

def _operations(below: Path, scene: Scene) -> dict:
    """Every file operation, aimed at ``below`` (a path through the planted link)."""
    (scene.home / "mine").write_text("customer data")
    return {
        "exists": lambda t: t.exists(str(below / "secret")),
        "makedirs existing": lambda t: t.makedirs(str(below / "folder"), mode=0o777, owner=CUSTOMER),
        "makedirs new": lambda t: t.makedirs(str(below / "new" / "deeper"), mode=0o777, owner=CUSTOMER),
        "write_file": lambda t: t.write_file(str(below / "secret"), b"pwned", mode=0o666, owner=CUSTOMER),
        "write_file new": lambda t: t.write_file(str(below / "planted"), b"pwned"),
        "rename from": lambda t: t.rename(str(below / "secret"), str(scene.home / "stolen")),
        "rename to": lambda t: t.rename(str(scene.home / "mine"), str(below / "secret")),
        "remove": lambda t: t.remove(str(below / "secret")),
        "remove_tree": lambda t: t.remove_tree(str(below / "folder")),
    }


OPERATIONS = ["exists", "makedirs existing", "makedirs new", "write_file", "write_file new",
              "rename from", "rename to", "remove", "remove_tree"]


def _refused(transport, call, link: Path, scene: Scene) -> OSError:
    before = snapshot(scene.victim)
    with pytest.raises(OSError) as err:
        call(transport)
    assert err.value.errno == errno.ELOOP, err.value
    assert f"{link} is a symbolic link; not followed" in str(err.value)
    assert snapshot(scene.victim) == before
    assert (scene.home / "mine").read_text() == "customer data"
    return err.value


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("how", ["absolute", "relative", "dangling"])
def test_a_customer_link_on_the_way_is_never_followed(transport, scene, operation, how):
    link = scene.home / "incoming"
    target = {"absolute": str(scene.victim), "relative": "../../../../victim",
              "dangling": str(scene.victim / "new")}[how]
    scene.plant(link, target)
    error = _refused(transport, _operations(link, scene)[operation], link, scene)
    assert "it belongs to uid 1234" in str(error)
    assert not (scene.victim / "new").exists()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_root_link_below_a_customer_folder_is_not_followed_either(transport, scene, operation):
    # Root's own link, but in a folder the customer controls: they may have moved it there.
    folder = scene.home / "rootsfolder"
    folder.mkdir(mode=0o755)
    link = scene.plant(folder / "link", str(scene.victim), owner=(0, 0))
    error = _refused(transport, _operations(link, scene)[operation], link, scene)
    assert f"{scene.home} (owner uid 1234, mode 755) is not root's alone" in str(error)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_root_link_in_a_folder_others_can_write_is_not_followed(transport, scene, mode):
    shared = scene.root / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    os.chown(shared, 0, CUSTOMER[1])
    link = scene.plant(shared / "link", str(scene.victim), owner=(0, 0))
    error = _refused(transport, _operations(link, scene)["makedirs existing"], link, scene)
    assert "is not root's alone" in str(error)


def test_a_root_link_where_only_root_writes_is_followed(transport, scene):
    # What administrators do: BACKUP_ROOT or /var as a link to another disk.
    real = scene.base / "disk"
    real.mkdir()
    os.chmod(real, 0o755)
    link = scene.plant(scene.base / "data", "disk", owner=(0, 0))
    transport.makedirs(str(link / "accounts"), mode=0o750, owner=CUSTOMER)
    transport.write_file(str(link / "accounts" / "f"), b"through root's link")
    assert owner_mode(real / "accounts") == (*CUSTOMER, 0o750)
    assert (real / "accounts" / "f").read_bytes() == b"through root's link"
    assert transport.exists(str(link / "accounts" / "f"))
    os.lchown(link, *CUSTOMER)                                   # the same link, the customer's: refused
    with pytest.raises(OSError, match="it belongs to uid 1234"):
        transport.exists(str(link / "accounts" / "f"))


def test_a_link_at_the_target_is_replaced_moved_or_removed_never_followed(transport, scene):
    before = snapshot(scene.victim)
    link = scene.home / "incoming"
    scene.plant(link, str(scene.victim / "secret"))
    assert transport.exists(str(link))
    transport.rename(str(link), str(scene.home / "moved"))
    assert os.readlink(scene.home / "moved") == str(scene.victim / "secret")
    transport.remove(str(scene.home / "moved"))
    assert not os.path.lexists(scene.home / "moved")
    scene.plant(link, str(scene.victim / "secret"))
    transport.write_file(str(link), b"config", mode=0o600)
    assert not link.is_symlink() and link.read_bytes() == b"config"
    assert snapshot(scene.victim) == before


@pytest.mark.parametrize("target", ["folder", "secret", "missing"])
def test_makedirs_and_remove_tree_refuse_a_link_at_the_target(transport, scene, target):
    link = scene.plant(scene.home / "incoming", str(scene.victim / target))
    before = snapshot(scene.victim)
    with pytest.raises(OSError, match=f"{link} is a symbolic link; not followed") as err:
        transport.makedirs(str(link), mode=0o777, owner=CUSTOMER)
    assert err.value.filename == str(link)
    with pytest.raises(OSError, match=f"is a symbolic link, not a folder; not removed: '{link}'"):
        transport.remove_tree(str(link))
    assert snapshot(scene.victim) == before and link.is_symlink()


def test_remove_tree_unlinks_the_links_inside_and_leaves_their_targets(transport, scene):
    tree = scene.home / "incoming"
    (tree / "sub").mkdir(parents=True)
    scene.plant(tree / "to-folder", str(scene.victim / "folder"))
    scene.plant(tree / "sub" / "to-file", str(scene.victim / "secret"))
    scene.plant(tree / "sub" / "to-victim", str(scene.victim))  # never "/": a broken transport would wipe the host
    before = snapshot(scene.victim)
    transport.remove_tree(str(tree))
    assert not os.path.lexists(tree)
    assert snapshot(scene.victim) == before


# ---------------------------------------------------- commands and groups

def test_results_exit_codes_and_stdin(transport):
    ok = transport.run(["sh", "-c", "echo out; echo err >&2"])
    assert (ok.ok, ok.returncode, ok.stdout, ok.stderr) == (True, 0, "out\n", "err\n")
    assert transport.run(["sh", "-c", "exit 3"]).returncode == 3
    assert transport.run(["cat"], stdin=b"hello").stdout == "hello"
    assert transport.run(["cat"]).stdout == ""                  # no stdin: /dev/null, no hang


def test_more_than_a_pipe_holds_in_every_direction_at_once(transport):
    # stdin, stdout and stderr each far beyond a pipe's 64 KiB: nothing may wait on
    # the other side (the command writes stderr before it has read all of stdin).
    data = os.urandom(600_000).hex().encode()
    script = "head -c 300000 /dev/zero | tr '\\0' e >&2; cat; head -c 300000 /dev/zero | tr '\\0' o >&2"
    result = transport.run(["sh", "-c", script], stdin=data)
    kept = nofollow.OUTPUT_KEPT
    assert result.ok
    assert (result.stdout, result.stdout_dropped) == (data[-kept:].decode(), len(data) - kept)   # all went through
    assert (result.stderr, result.stderr_dropped) == ("o" * kept, 600000 - kept)


# Prints ``size`` bytes of lines (17 bytes each) on stdout, then on stderr; each stream ends with a line of its own.
PRINTS_A_LOT = ("yes 'a line of output' | head -c {size}; echo 'the last line out'; "
                "yes 'a line of errors' | head -c {size} >&2; echo 'the last words' >&2; exit 3")
_PEAK = textwrap.dedent("""
    import json, resource, sys
    from provisioning.transport import LocalCLI

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    cli = LocalCLI(timeout=60)
    cli.run(["true"])
    before = peak()
    result = cli.run(["sh", "-c", sys.argv[1]])
    print(json.dumps({"before": before, "after": peak(), "said": result.describe()[-120:],
                      "stdout": [len(result.stdout), result.stdout[-40:], getattr(result, "stdout_dropped", None)],
                      "stderr": [len(result.stderr), result.stderr[-40:], getattr(result, "stderr_dropped", None)]}))
""")


def test_a_command_printing_hundreds_of_megabytes_keeps_a_bounded_tail(report):
    # All of it was kept: 300 MB of output took the daemon's peak memory from 38 to 918 MB.
    size = 17 * 17_600_000                                        # 299 MB, whole lines
    done = subprocess.run([sys.executable, "-c", _PEAK, PRINTS_A_LOT.format(size=size)],
                          capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(done.stdout)
    mib = 1024 * 1024
    report("LocalCLI, a command printing 2 x 300 MB", peak_before_mib=seen["before"] // mib,
           peak_after_mib=seen["after"] // mib)
    assert seen["after"] - seen["before"] < 16 * mib, seen
    kept = nofollow.OUTPUT_KEPT
    assert seen["stdout"] == [kept, "tput\na line of output\nthe last line out\n", size + 18 - kept]
    assert seen["stderr"] == [kept, " errors\na line of errors\nthe last words\n", size + 15 - kept]
    assert seen["said"].endswith(f"exited 3: the last words ({size + 15 - kept} earlier bytes of stderr dropped)")


def test_a_command_that_ends_but_leaves_its_output_open_is_killed_at_the_timeout(tmp_path):
    # Its background child keeps stdout open: the output has not ended, so the command
    # is not done, as with Popen.communicate; the timeout ends it with its group.
    pidfile = tmp_path / "child"
    started = time.monotonic()
    result = LocalCLI(timeout=10).run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started"], timeout=1)
    assert result.returncode == 124 and time.monotonic() - started < 8
    child = int(pidfile.read_text())
    wait_until(lambda: gone(child), f"the background child {child} to die with its group")


def test_a_missing_program_is_127(tmp_path):
    missing = LocalCLI(timeout=10).run(["/nonexistent/program-xyz"])
    assert missing.returncode == 127 and missing.stderr == "/nonexistent/program-xyz: No such file or directory"
    (tmp_path / "data").write_text("echo hi\n")
    unrunnable = LocalCLI(timeout=10).run([str(tmp_path / "data")])     # there, but not executable
    assert unrunnable.returncode == 127 and unrunnable.stderr.endswith(": Permission denied")


def test_a_timeout_kills_the_command(transport):
    started = time.monotonic()
    result = transport.run(["sleep", "20"], timeout=0.5)
    assert result.returncode == 124 and "killed after 0.5 s" in result.stderr
    assert time.monotonic() - started < 10


def test_commands_run_in_their_own_session_and_group():
    # A terminal's Ctrl-C goes to its foreground group: the daemon's, not the command's.
    fields = LocalCLI(timeout=10).run(["cat", "/proc/self/stat"]).stdout.rsplit(")", 1)[1].split()
    pgrp, session = int(fields[2]), int(fields[3])
    assert pgrp != os.getpgrp() and session != os.getsid(0)
    assert pgrp == session                                       # a session leader: setsid()


def test_commands_get_the_signals_python_ignores_back():
    # Python ignores SIGPIPE, and an ignored signal stays ignored across exec: a pipeline in a
    # command would then see EPIPE errors instead of ending quietly.
    result = LocalCLI(timeout=10).run(["sh", "-c", "kill -PIPE $$; echo survived"])
    assert result.returncode == -signal.SIGPIPE and result.stdout == ""
    status = LocalCLI(timeout=10).run(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]).stdout
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()}
    assert masks["SigBlk"] == 0
    # The two Python ignores are back to their default. (What the daemon's own parent ignored,
    # SIGHUP under nohup, say, stays ignored, as with Popen; and glibc's posix_spawn leaves its
    # internal real-time signals 32 and 33 ignored: every glibc program installs its own.)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not masks["SigIgn"] & (1 << (sig - 1)), sig


GIL_PROBE = """
import os, sys, threading
from provisioning.transport import cspawn
fifo = sys.argv[1]
def writer():                         # runs only if the spawning thread let go of the GIL
    os.close(os.open(fifo, os.O_WRONLY))
threading.Timer(0.2, writer).start()
# The child opens the FIFO before its exec: glibc's posix_spawn returns only once a writer came.
pid = cspawn.spawn("/bin/true", ["true"], {}, file_actions=[(os.POSIX_SPAWN_OPEN, 0, fifo, os.O_RDONLY, 0)])
print(os.waitpid(pid, 0)[1])
"""


def test_starting_a_command_lets_the_other_threads_run(tmp_path):
    # os.posix_spawn held the GIL until the child exec'd: every worker and the main loop
    # waited for every command start. Here the child waits (opening a FIFO) for a writer
    # that only another Python thread of the parent can be: with the GIL held, never.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-c", GIL_PROBE, str(fifo)], capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr
    assert spawn.cspawn.spawn is spawn.cspawn._spawn_released       # glibc: the ctypes route is taken


@pytest.mark.parametrize("path, argv, env", [
    ("/bin/true\0x", ["true"], {}), ("/bin/true", ["true", "a\0b"], {}), ("/bin/true", ["true"], {"A=B": "1"}),
    ("/bin/true", ["true"], {"A": "1\0"}), ("/bin/true", ["true"], {"": "1"}),
], ids=["path", "argv", "name", "value", "empty-name"])
def test_a_nul_or_a_bad_name_is_refused_as_by_os_posix_spawn(path, argv, env):
    # ctypes would pass a char * cut at the NUL: a different program or argument, silently.
    with pytest.raises(ValueError):
        spawn.cspawn.spawn(path, argv, env)
    with pytest.raises(ValueError):
        os.posix_spawn(path, argv, env)


ENV_PROBE = """
import os, sys
from provisioning.transport import cspawn
read, write = os.pipe()
for value in sys.argv[1:]:
    pid = cspawn.spawn("/bin/sh", ["sh", "-c", 'printf "%s|%s;" "$A" "$B"'], {"A": value, b"B": value.encode()},
                       file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)])
    os.waitpid(pid, 0)
os.close(write)
print(os.read(read, 65536).decode())
print(len(cspawn._PAIRS) <= cspawn._PAIRS_KEPT)
"""


def test_each_command_gets_the_environment_it_is_given():
    # The joined "NAME=value" strings are kept per (name, value): a new value is a new pair,
    # and the kept ones stay bounded while a variable takes many values.
    values = ["1", "2", "1", "é"] + [str(n) for n in range(600)]
    done = subprocess.run([sys.executable, "-c", ENV_PROBE, *values], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen, bounded = done.stdout.splitlines()
    assert seen == "".join(f"{v}|{v};" for v in values)
    assert bounded == "True"


def test_a_bad_pair_is_refused_after_a_good_one_with_the_same_name():
    spawn.cspawn.spawn("/bin/true", ["true"], {"A": "1"})
    with pytest.raises(ValueError):
        spawn.cspawn.spawn("/bin/true", ["true"], {"A": "1\0"})


def test_a_program_that_cannot_be_started_is_named():
    with pytest.raises(FileNotFoundError) as caught:
        spawn.cspawn.spawn("/nonexistent/program", ["program"], {})
    assert caught.value.filename == "/nonexistent/program"


def test_a_timeout_kills_what_the_command_started(tmp_path):
    pidfile = tmp_path / "grandchild"
    result = LocalCLI(timeout=10).run(["sh", "-c", f'sleep 60 & echo $! > {pidfile}; wait'], timeout=1)
    assert result.returncode == 124
    grandchild = int(pidfile.read_text())
    wait_until(lambda: gone(grandchild), f"the grandchild {grandchild} to die with its group")


# A process that leaves the command's process group, then sleeps; it writes its pid to {pidfile} first.
LEFTOVER = "echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 40"
LEAVES_THE_GROUP = {
    # the command's child makes a session of its own (its parent is still the command)
    "setsid": "setsid sh -c {leftover} &",
    # a daemon's double fork: a subshell starts it and exits, so its parent is init (or a
    # subreaper), and it makes a session of its own
    "double fork": "(setsid sh -c {leftover} &)",
}


@pytest.mark.parametrize("how", sorted(LEAVES_THE_GROUP))
def test_a_timeout_leaves_nothing_behind_that_left_the_group(make, tmp_path, how):
    # Killing the command's process group missed these: the leftover ran on next to the
    # retry (and, holding the output, made the timeout wait REAP_SECONDS for it).
    pidfile = tmp_path / "leftover"
    starts = LEAVES_THE_GROUP[how].format(leftover=shlex.quote(LEFTOVER.format(pidfile=pidfile)))
    waits = f"until [ -e {pidfile} ]; do sleep 0.01; done"        # then blocks past the timeout
    started = time.monotonic()
    result = make().run(["sh", "-c", f"{starts}\n{waits}; echo waiting; sleep 40"], timeout=2)
    took = time.monotonic() - started
    leftover = int(pidfile.read_text())
    try:
        assert result.returncode == 124, result.describe()
        wait_until(lambda: gone(leftover), f"the leftover {leftover} ({how}) to be killed at the timeout")
        assert took < 2 + spawn.REAP_SECONDS, "nothing should hold the output after the timeout"
    finally:
        found = process(leftover)
        if found is not None and found.comm == "sleep" and found.state != "Z":
            os.kill(leftover, signal.SIGKILL)            # the test's own sleep, left by the fault


def _killed_with_the_daemon(tmp_path, command: str, names: list[str]) -> None:
    """Run ``command`` through LocalCLI in a throwaway daemon, kill -9 it, see the pids in ``names`` die."""
    script = textwrap.dedent(f"""
        from provisioning.transport import LocalCLI
        LocalCLI(timeout=60).run(["sh", "-c", {command!r}])
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        wait_until(lambda: all((tmp_path / name).exists() for name in names), "the command to start")
        pids = [int((tmp_path / name).read_text()) for name in names]
        assert not any(gone(pid) for pid in pids)
        parent.kill()                                            # kill -9 of the daemon
        parent.wait(10)
        for pid in pids:
            wait_until(lambda: gone(pid), f"{pid} to die with the daemon")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_command_dies_with_the_daemon(tmp_path):
    _killed_with_the_daemon(tmp_path, "echo $$ > c.tmp; mv c.tmp command; exec sleep 60", ["command"])


def test_what_a_command_started_in_the_background_dies_with_the_daemon(tmp_path):
    # setsid: even a child that left the command's session and group
    _killed_with_the_daemon(tmp_path, "setsid sh -c 'echo $$ > b.tmp; mv b.tmp background; exec sleep 60' & "
                                      "echo $$ > c.tmp; mv c.tmp command; wait", ["command", "background"])


def test_a_guard_that_died_is_started_again_with_a_warning(caplog):
    guard = commandguard.CommandGuard()
    key = commandguard.VARIABLE.encode()
    first = guard.environment({})[key]
    guard._proc.kill()
    guard._proc.wait()
    second = guard.environment({"A": "1"})
    assert second[b"A"] == b"1" and second[key] != first
    assert "the command guard ended" in caplog.text
    guard.close()


def test_a_command_sees_the_environment_as_it_is_now_and_the_guard_token(monkeypatch):
    cli = LocalCLI()
    monkeypatch.setenv("PROVISIONING_TEST_VALUE", "first")
    assert "PROVISIONING_TEST_VALUE=first\n" in cli.run(["env"]).stdout
    monkeypatch.setenv("PROVISIONING_TEST_VALUE", "zweite ä")           # changed after the first command
    seen = cli.run(["env"]).stdout
    assert "PROVISIONING_TEST_VALUE=zweite ä\n" in seen
    assert f"{commandguard.VARIABLE}={commandguard.GUARD.token}\n" in seen
    assert "PROVISIONING_ONLY=1\n" in cli.run(["env"], env={"PROVISIONING_ONLY": "1"}).stdout


def test_the_guard_kills_only_processes_with_its_token(tmp_path):
    guard = commandguard.CommandGuard()
    mine = subprocess.Popen(["sleep", "60"], env=guard.environment(None))
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, commandguard.VARIABLE: guard.token + "0"})
    try:
        guard.close()                                            # as if the daemon ended
        assert mine.wait(10) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ stopping

def test_interrupted_is_not_an_exception_plugins_catch():
    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)


@pytest.mark.parametrize("command", ["kill -TERM $$", "kill -KILL $$", "exit 130", "exit 143", "exit 137", "exit 129"])
def test_a_command_ended_by_a_signal_while_stopping_is_interrupted(make, command, monkeypatch):
    monkeypatch.setattr(base, "STOP_NOTICE", 0.1)       # how long a signalled command waits for the stop
    stopping = threading.Event()
    transport = make(stopping)
    assert not transport.run(["sh", "-c", command]).ok          # not stopping: a plain result
    stopping.set()
    with pytest.raises(Interrupted, match="because the daemon is stopping"):
        transport.run(["sh", "-c", command])


def test_a_stop_noticed_just_after_the_command_ended_still_interrupts_it(make):
    """systemd's SIGTERM reaches the daemon and its command at once; the worker may see the
    command end before the main thread has run the daemon's handler (seen in a CI run)."""
    stopping = threading.Event()
    transport = make(stopping)
    noticed = threading.Timer(0.3, stopping.set)          # the handler, a moment late
    noticed.start()
    try:
        with pytest.raises(Interrupted, match="because the daemon is stopping"):
            transport.run(["sh", "-c", "kill -TERM $$"])
    finally:
        noticed.cancel()


def test_a_command_that_simply_fails_while_stopping_is_a_result(make):
    stopping = threading.Event()
    transport = make(stopping)
    stopping.set()
    assert transport.run(["sh", "-c", "exit 1"]).returncode == 1
    assert transport.run(["true"]).ok


def test_the_daemon_stopping_its_commands_interrupts_them(make):
    # systemd's stop sends SIGTERM to the whole control group: here, to the command we started
    # (for CLISSH the local ssh, which then ends with 255, not by the signal).
    stopping = threading.Event()
    transport = make(stopping)
    outcome = {}

    def work():
        try:
            outcome["result"] = transport.run(["sleep", "30"])
        except Interrupted as err:
            outcome["interrupted"] = err
    worker = threading.Thread(target=work)
    worker.start()
    child = wait_until(lambda: _children_named(("sleep", "ssh")), "the command to start")
    stopping.set()
    os.kill(child, signal.SIGTERM)
    worker.join(20)
    assert "interrupted" in outcome, outcome


def _children_named(names: tuple[str, ...]) -> int | None:
    return next((p.pid for p in processes() if p.ppid == os.getpid() and p.comm in names), None)


# ------------------------------------------------------------ deadlines

def test_a_command_gets_no_more_than_the_time_left(transport):
    started = time.monotonic()
    with within_deadline(1.0):
        result = transport.run(["sleep", "20"])
    assert result.returncode == 124 and time.monotonic() - started < 10
    assert result.stderr.endswith("(the request's deadline)")


def test_past_the_deadline_nothing_starts(transport, tmp_path):
    marker = tmp_path / "ran"
    with within_deadline(-1):
        result = transport.run(["touch", str(marker)])
    assert (result.returncode, result.stderr) == (124, PAST_DEADLINE)
    assert result.argv == ["touch", str(marker)]
    assert not marker.exists()


def test_the_earlier_of_timeout_and_deadline_holds(transport):
    with within_deadline(60):
        started = time.monotonic()
        assert transport.run(["sleep", "20"], timeout=0.5).returncode == 124
        assert time.monotonic() - started < 10
        assert transport.run(["true"]).ok


def test_deadlines_nest_and_belong_to_their_thread():
    assert request_deadline.get() is None
    with within_deadline(5) as outer:
        with within_deadline(100) as inner:
            assert inner == outer                                # an inner block never extends
        seen = []
        worker = threading.Thread(target=lambda: seen.append(request_deadline.get()))
        worker.start()
        worker.join()
        assert seen == [None]                                    # another thread: its own context
        assert request_deadline.get() == outer
    assert request_deadline.get() is None


# ------------------------------------------------------------ dry run

def test_dry_run_changes_nothing(transport, scene, capsys):
    dry = DryRun(transport)
    existing = scene.home / "existing"
    existing.write_text("keep")
    (scene.home / "tree" / "sub").mkdir(parents=True)
    before = snapshot(scene.base)
    dry.write_file(str(scene.home / "new"), b"data", mode=0o600)
    dry.write_file(str(existing), b"overwrite")
    dry.makedirs(str(scene.home / "newdir"))
    dry.rename(str(existing), str(scene.home / "moved"))
    dry.remove(str(existing))
    dry.remove_tree(str(scene.home / "tree"))
    result = dry.run(["touch", str(scene.home / "touched")])
    assert result.ok
    assert snapshot(scene.base) == before
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and all(line.startswith("DRY-RUN: would ") for line in lines)
    assert dry.exists(str(existing)) and not dry.exists(str(scene.home / "new"))   # reads still happen


def test_build_gives_the_local_transport_its_timeout_and_stopping():
    stopping = threading.Event()
    local = build("LocalCLI", timeout=7, gateway={}, dry_run=False, stopping=stopping)
    assert isinstance(local, LocalCLI) and local.timeout == 7 and local.stopping is stopping
    dry = build("LocalCLI", timeout=7, gateway={}, dry_run=True)
    assert isinstance(dry, DryRun) and dry.inner.stopping is None


# ------------------------------------------------------------ reads

def test_lstat_reports_links_as_links_and_absent_paths_as_none(transport, scene):
    link = scene.plant(scene.home / "link", scene.victim)
    (scene.home / "file").write_text("x")
    seen = transport.lstat([str(scene.home), str(link), str(scene.home / "file"), str(scene.home / "none"),
                            str(scene.home / "file" / "below")])
    assert seen[str(scene.home)] == {"kind": "directory", "uid": CUSTOMER[0], "gid": CUSTOMER[1],
                                     "mode": scene.home.stat().st_mode & 0o7777}
    assert seen[str(link)]["kind"] == "symbolic link" and seen[str(link)]["uid"] == CUSTOMER[0]
    assert seen[str(scene.home / "file")]["kind"] == "regular file"
    assert seen[str(scene.home / "none")] is None and seen[str(scene.home / "file" / "below")] is None


def test_read_small_reads_a_file_and_refuses_a_link_or_a_folder(transport, scene):
    (scene.home / "marker").write_text("abc\n")
    assert transport.read_small(str(scene.home / "marker"), 2) == "ab"
    link = scene.plant(scene.home / "link", scene.victim / "secret")
    with pytest.raises(OSError):
        transport.read_small(str(link))
    with pytest.raises(OSError):
        transport.read_small(str(scene.home))
    with pytest.raises(OSError):
        transport.read_small(str(scene.plant(scene.home / "dir-link", scene.victim) / "secret"))


def test_a_folder_made_writable_for_others_after_a_walk_is_not_trusted_any_more(scene, monkeypatch):
    """The local transport remembers root-only folders; a change of their mode is noticed
    (of the folder itself at once, of the folders above within TRUSTED_RECHECK seconds)."""
    monkeypatch.setattr(nofollow, "TRUSTED_RECHECK", 0.0)
    transport = LocalCLI(timeout=30)
    target = scene.root / "7" / "3723707" / "kept"
    transport.makedirs(str(target))                       # walks (and remembers) root/7/3723707
    os.chmod(scene.root / "7", 0o777)                     # an admin's mistake: others may now swap things
    os.symlink(scene.victim, scene.root / "7" / "3723707" / "to-victim")   # root's own link, below it
    before = snapshot(scene.victim)
    with pytest.raises(OSError) as err:
        transport.makedirs(str(scene.root / "7" / "3723707" / "to-victim" / "new"), mode=0o777)
    assert err.value.errno == errno.ELOOP
    assert snapshot(scene.victim) == before


def test_a_remembered_folder_moved_away_is_not_walked_into(scene):
    """An account folder archived by a rename and made again: the new one is used, not the archive."""
    transport = LocalCLI(timeout=30)
    account = scene.root / "7" / "3723707"
    transport.makedirs(str(account / "first"))            # remembers root/7/3723707
    os.rename(account, scene.root / "7" / "archived")
    transport.makedirs(str(account / "second"))
    assert (account / "second").is_dir() and not (scene.root / "7" / "archived" / "second").exists()


def test_a_folder_walked_into_often_stays_remembered_among_many_new_ones(scene, monkeypatch):
    """Every new account folder is remembered: the least recently used go, not BACKUP_ROOT or the
    configuration folder every request walks into (their walks would start at "/" again)."""
    transport = LocalCLI(timeout=30)
    configs = scene.root / "etc"
    transport.makedirs(str(configs / "rsnapshot"))
    from_the_top = []
    restart = nofollow._Walk._restart
    monkeypatch.setattr(nofollow._Walk, "_restart", lambda walk: from_the_top.append(walk.asked) or restart(walk))
    for n in range(3 * nofollow.TRUSTED_KEPT):
        transport.makedirs(str(scene.root / "7" / f"{3723000 + n}" / "home"))
        transport.makedirs(str(configs / "rsnapshot"))
    assert from_the_top == []
    kept = set(nofollow._trusted)
    assert str(configs / "rsnapshot") in kept and str(scene.root / "7") in kept
    assert str(scene.root / "7" / "3723000") not in kept and len(kept) == nofollow.TRUSTED_KEPT


def test_dry_run_lines_of_workers_printing_at_once_stay_whole(capsys):
    # print() writes a line's text and its newline apart: two workers made "AB\n\n".
    dry = DryRun(LocalCLI(timeout=10))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                     # hand the GIL over as often as possible
    try:
        threads = [threading.Thread(target=lambda n=n: [dry.run(["echo", f"worker{n}", str(i)]) for i in range(2000)])
                   for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    lines = capsys.readouterr().out.split("\n")[:-1]
    assert len(lines) == 8000
    assert all(re.fullmatch(r"DRY-RUN: would run: echo worker\d \d+", line) for line in lines)


def test_a_dry_run_modify_is_written_in_one_piece_as_the_transports_lines_are(monkeypatch):
    # The directory's dry-run line went through print(): its text and its newline apart, so
    # a line the transport printed meanwhile (the jail job's, another worker's) landed between
    # them, two lines on one and an empty line after.
    from provisioning.backend.ldap import Directory, LdapSettings
    from provisioning.base.secret import Secret

    class Writes:
        def __init__(self):
            self.made = []

        def write(self, text):
            self.made.append(text)
            return len(text)

        def flush(self):
            pass
    writes = Writes()
    monkeypatch.setattr(sys, "stdout", writes)
    directory = Directory(LdapSettings(["ldap://127.0.0.1:9"], "cn=nobody", Secret("x")), dry_run=True)
    assert directory.modify("uid=3723707,ou=accounts", {"sstProvisioningMode": ["adding"]}) is None
    DryRun(LocalCLI(timeout=10)).run(["echo", "x\ny"])
    assert writes.made == ["DRY-RUN: would modify uid=3723707,ou=accounts: sstProvisioningMode=adding\n",
                           "DRY-RUN: would run: echo 'x\\ny'\n"]


def test_folders_remembered_before_a_fork_are_forgotten_not_closed(scene):
    """--daemon detaches (fork, then every descriptor closed): a number remembered before may by then
    name one of the daemon's own files (the store under SQLite), which a later walk closed."""
    transport = LocalCLI(timeout=30)
    transport.makedirs(str(scene.root / "7" / "3723707" / "kept"))       # remembers root-only folders
    with nofollow._trusted_lock:
        remembered = [held[0] for held in nofollow._trusted.values()]
    assert remembered
    pid = os.fork()
    if pid == 0:                                         # the detached daemon
        code = 1
        try:
            for fd in remembered:
                os.close(fd)                             # what detaching does
            mine = {fd: os.open(os.devnull, os.O_RDONLY) for fd in remembered}   # the same numbers, reused
            os.rename(scene.root / "7" / "3723707", scene.root / "7" / "moved")  # not the folder any more
            transport.makedirs(str(scene.root / "7" / "3723707" / "again"))
            code = 0 if all(os.fstat(fd) for fd in mine.values()) else 1
        except OSError:
            code = 2                                     # a descriptor of ours was closed under us
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
