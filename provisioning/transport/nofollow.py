"""File operations for root that never go through a symbolic link a customer could have planted.

Root works in folders customers own. A path such as ``<home>/incoming`` names
what root means only as long as nobody swapped ``incoming`` (or a folder above
it) for a symbolic link; ``mkdir -p``, ``chmod`` or ``open`` by path would
follow such a link and act wherever it points. So every operation here walks
its path one component at a time from ``/``, holding a descriptor of each
folder (``O_PATH|O_DIRECTORY|O_NOFOLLOW``), and acts relative to the folder's
descriptor (``mkdir``/``open``/``rename``/``unlink`` with ``dir_fd``,
``fchmod``/``fchown`` on an opened descriptor). A component swapped after it
was checked cannot redirect the operation: the descriptor is already held.

The rule for links on the way (folders, never the last component of a file
operation): a symbolic link is followed only when **only root could have put
it there** — the link belongs to root, and every folder walked from ``/`` to
it belongs to root and is writable by nobody else (no group or other write
bit, sticky or not). That admits what administrators do — a merged ``/bin ->
usr/bin``, ``/var -> /srv/var``, ``/var/backup -> /data/backup`` — and refuses
every link in or below a folder a customer owns or can write (a home,
``incoming/``, ``/tmp``). Once a walk has passed such a folder, no link below
it is followed, whoever owns it. "Root" means uid 0 and the user this code
runs as (the same when the daemon runs as root). A refused link ends the
operation with ``OSError(ELOOP)`` naming the link and the path asked for;
nothing has been changed by then.

What each operation does with the last component:

- ``exists``: looks at the entry itself (a dangling link exists).
- ``write_file``: writes a new file next to it and renames it over the entry,
  so a link there is replaced, not written through.
- ``makedirs``: the last component is a folder on the way like the others.
- ``rename``/``remove``: move or unlink the entry itself, never its target.
- ``remove_tree``: refuses a link; below it, links are unlinked, never
  followed, and folders are entered with ``O_NOFOLLOW`` (a folder swapped for
  a link mid-way is unlinked as the link it became).
- ``realpath`` is the exception on purpose: it changes nothing and reports
  where a path leads with every link resolved, like ``os.path.realpath``
  (non-strict), so that callers can refuse a path that leads somewhere else.

Paths must be absolute; ``..`` is refused (root acts on the path it can name,
not on one it would first have to resolve).

This module is self-contained (standard library, Python 3.7+): LocalCLI calls
its functions, and CLISSH runs this very source on the gateway as
``python3 -I -S -c SOURCE serve NONCE``, a helper that answers one operation
after another over one ssh session (see serve).
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import posixpath
import select
import signal
import stat
import subprocess
import sys
import threading
import time

O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_WALK = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40            # as the kernel's limit for one path lookup
TRUSTED_KEPT = 64         # folders remembered as root's alone all the way from /


_ROOT_UIDS = frozenset((0, os.geteuid()))
# How long a remembered folder's ancestors count as checked (see _trusted).
TRUSTED_RECHECK = 1.0


def _root_uids() -> frozenset:
    return _ROOT_UIDS


def _root_only(info: os.stat_result) -> bool:
    """A folder only root can change: root's, no group or other write bit."""
    return info.st_uid in _ROOT_UIDS and not info.st_mode & 0o022


def _error(code: int, message: str, path: str) -> OSError:
    """An OSError of the right subclass whose text names ``path``."""
    return OSError(code, message, path)


def _naming(err: OSError, path: str, doing: str = "") -> OSError:
    """``err`` as it should reach the caller: naming ``path``, not a bare name inside a walk."""
    if err.filename == path:
        return err
    return _error(err.errno, f"{doing}{err.strerror}", path)


def _components(path: str) -> list:
    if not isinstance(path, str) or not path.startswith("/"):
        raise _error(errno.EINVAL, "not an absolute path", str(path))
    if "\0" in path:
        raise _error(errno.EINVAL, "a path cannot contain NUL", path.replace("\0", "\\0"))
    names = [name for name in path.split("/") if name not in ("", ".")]
    if ".." in names:
        raise _error(errno.EINVAL, "'..' in a path is refused; name the path without it", path)
    return names


# Folders that are root's alone all the way from "/" (BACKUP_ROOT and the
# folders above the accounts), by path: a walk starts from the deepest one
# it knows instead of opening every folder from "/" again (a backup account
# is a dozen levels deep and a request walks a dozen times). Nobody but root
# can change such a folder; an entry is still used only while its
# descriptor and its path name the same folder, and it and every folder
# above it are still root's alone and no link (a few stat calls in C
# instead of an open per level).
_trusted: dict[str, list] = {}         # path -> [descriptor, when its ancestors were checked]
_trusted_lock = threading.Lock()       # workers walk at the same time
_trusted_pid = os.getpid()             # the process whose descriptors _trusted holds


def _trusted_here() -> None:
    """Forget, without closing, descriptors remembered before a fork: --daemon's detaching closes
    them, and their numbers may name the daemon's own files (its store) by now. Closing one would
    close that file under SQLite. Called with _trusted_lock held."""
    global _trusted_pid
    if _trusted_pid != os.getpid():
        _trusted.clear()
        _trusted_pid = os.getpid()


def _trusted_start(names: list) -> tuple[int, str, int] | None:
    """(descriptor copy, path, how many names it covers) of the deepest known trusted folder."""
    with _trusted_lock:
        _trusted_here()
        for count in range(len(names), 0, -1):
            path = "/" + "/".join(names[:count])
            held = _trusted.get(path)
            if held is None:
                continue
            if not _still_trusted(held, names[:count]):
                os.close(_trusted.pop(path)[0])
                continue
            # The least recently used goes first when the list is full: every new account folder
            # is remembered, and without this they pushed out BACKUP_ROOT and the configuration
            # folder, whose walks then started at "/" again.
            _trusted[path] = _trusted.pop(path)
            return os.dup(held[0]), path, count
    return None


def _still_trusted(held: list, names: list) -> bool:
    """The descriptor still names the folder at the path (always checked: an account folder
    archived by a rename must not be walked into), the folder is still root's alone, and so
    is every folder above (checked again at most every TRUSTED_RECHECK seconds: only root
    can change them)."""
    try:
        info = os.fstat(held[0])
        there = os.stat("/" + "/".join(names), follow_symlinks=False)
    except OSError:
        return False
    if (info.st_dev, info.st_ino) != (there.st_dev, there.st_ino) or not _root_only(info):
        return False
    now = time.monotonic()
    if now - held[1] < TRUSTED_RECHECK:
        return True
    try:
        above = [os.stat("/" + "/".join(names[:n]), follow_symlinks=False) for n in range(len(names))]
    except OSError:
        return False
    if not all(stat.S_ISDIR(a.st_mode) and _root_only(a) for a in above):
        return False
    held[1] = now
    return True


def _remember_trusted(path: str, fd: int) -> None:
    with _trusted_lock:
        _trusted_here()
        if path in _trusted:
            return
        if len(_trusted) >= TRUSTED_KEPT:
            os.close(_trusted.pop(next(iter(_trusted)))[0])
        _trusted[path] = [os.dup(fd), time.monotonic()]


class _Walk:
    """Descriptors of the folders from ``/`` to where the walk has got.

    ``frames`` holds (descriptor, path, root_only) per level; root_only is
    true while every folder from ``/`` down to this one is root's alone. A
    walk may start at a trusted folder (see _trusted) instead of ``/``: its
    one frame then stands for the root-only folders above it.
    """

    def __init__(self, asked: str) -> None:
        self.asked = asked
        self.frames = []
        self.links = 0
        # "/" is opened by the first enter() only if no trusted folder lets it
        # start deeper: most walks do, and skip three system calls.

    def __enter__(self) -> "_Walk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self.frames:
            os.close(self.frames.pop()[0])

    def _restart(self) -> None:
        self.close()
        fd = os.open("/", _WALK)
        self.frames.append((fd, "/", _root_only(os.fstat(fd))))

    @property
    def fd(self) -> int:
        if not self.frames:
            self._restart()
        return self.frames[-1][0]

    @property
    def where(self) -> str:
        return self.frames[-1][1] if self.frames else "/"

    def here(self, name: str) -> str:
        return posixpath.join(self.where, name)

    def enter(self, names: list, create: int | None = None) -> "_Walk":
        """Walk into ``names`` (folders), creating missing ones with mode ``create``."""
        todo = list(names)
        if not self.frames or (len(self.frames) == 1 and self.where == "/"):
            start = _trusted_start(todo)
            if start is not None:
                fd, path, count = start
                self.close()
                self.frames.append((fd, path, True))
                todo = todo[count:]
            elif not self.frames:
                self._restart()
        while todo:
            name = todo.pop(0)
            if name == "..":                      # only ever from a link root made
                if len(self.frames) > 1:
                    os.close(self.frames.pop()[0])
                elif self.where != "/":           # above a trusted start: walk to its parent from /
                    parent = [n for n in posixpath.dirname(self.where).split("/") if n]
                    self._restart()
                    todo[0:0] = parent
                continue
            target = self._step(name, create)
            if target is not None:
                if target.startswith("/"):
                    self._restart()
                todo[0:0] = [n for n in target.split("/") if n not in ("", ".")]
        return self

    def _step(self, name: str, create: int | None) -> str | None:
        """Enter folder ``name``; return a link's target to walk instead."""
        for _attempt in range(3):
            try:
                fd = os.open(name, _WALK, dir_fd=self.fd)
            except FileNotFoundError:
                if create is None:
                    raise _error(errno.ENOENT, f"{self.here(name)}: {os.strerror(errno.ENOENT)}", self.asked) from None
                self._mkdir(name, create)
                continue                          # open what is there now, by the same rules
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise _error(err.errno, f"{self.here(name)}: {err.strerror}", self.asked) from None
                try:
                    return self._link(name)
                except FileNotFoundError:         # gone meanwhile: look again
                    continue
            try:
                root_only = self.frames[-1][2] and _root_only(os.fstat(fd))
                if root_only and self.links == 0:
                    _remember_trusted(self.here(name), fd)
            except BaseException:
                os.close(fd)
                raise
            self.frames.append((fd, self.here(name), root_only))
            return None
        raise _error(errno.EAGAIN, f"{self.here(name)} keeps changing", self.asked)

    def _mkdir(self, name: str, mode: int) -> None:
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise _error(err.errno, f"cannot create {self.here(name)}: {err.strerror}", self.asked) from None

    def _link(self, name: str) -> str:
        """The target of the link ``name`` if root may follow it; OSError otherwise."""
        where = self.here(name)
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise _error(err.errno, f"{where}: {err.strerror}", self.asked) from None
        if not stat.S_ISLNK(info.st_mode):
            raise _error(errno.ENOTDIR, f"{where}: {os.strerror(errno.ENOTDIR)}", self.asked)
        why = self._distrust(info)
        if why:
            raise _error(errno.ELOOP, f"{where} is a symbolic link; not followed because {why}", self.asked)
        self.links += 1
        if self.links > MAX_LINKS:
            raise _error(errno.ELOOP, f"more than {MAX_LINKS} symbolic links on the way", self.asked)
        return os.readlink(name, dir_fd=self.fd)

    def _distrust(self, link: os.stat_result) -> str:
        """Why a customer could have planted this link ('' if only root could have)."""
        if link.st_uid not in _root_uids():
            return f"it belongs to uid {link.st_uid}"
        for fd, where, root_only in self.frames:
            if not root_only:
                info = os.fstat(fd)
                return (f"{where} (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}) "
                        "is not root's alone")
        return ""


def _split(path: str) -> tuple:
    names = _components(path)
    if not names:
        raise _error(errno.EINVAL, "an operation on / itself is refused", path)
    return names[:-1], names[-1]


def _opened(walk: _Walk) -> int:
    """A real (not O_PATH) descriptor of the folder the walk stands in."""
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=walk.fd)


def exists(path: str) -> bool:
    """Whether ``path`` exists (a link counts, dangling or not); OSError unless simply absent."""
    names = _components(path)
    if not names:
        return True
    try:
        with _Walk(path) as walk:
            walk.enter(names[:-1])
            os.stat(names[-1], dir_fd=walk.fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise _naming(err, path) from None
    return True


def lstat(paths: list) -> dict:
    """For each path: {"kind", "uid", "gid", "mode"} of what is there, the link itself for a
    link (never followed), or None when nothing is there. Changes nothing."""
    found = {}
    for path in paths:
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            found[path] = None
            continue
        found[path] = {"kind": _kind(info.st_mode), "uid": info.st_uid, "gid": info.st_gid,
                       "mode": stat.S_IMODE(info.st_mode)}
    return found


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"),
                       (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "special file"


def read_small(path: str, limit: int = 4096) -> str:
    """The first ``limit`` bytes of the regular file ``path`` (as text), read without following a link."""
    names = _components(path)
    with _Walk(path) as walk:
        walk.enter(names[:-1])
        fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=walk.fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _error(errno.EINVAL, "not a regular file", path)
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def realpath(path: str) -> str:
    """``path`` with every link and ``..`` resolved; it need not exist. Changes nothing."""
    return os.path.realpath(path)


def realpaths(paths: list) -> list:
    """``realpath`` of each path; a folder the paths share is looked at once, not once per path.

    A prefix seen to be a real folder (not a link) in this call is not looked
    at again; a path with a link, ``..`` or ``.`` in it is left to os.path.realpath.
    """
    plain: set = {"/"}
    return [_realpath_plain(path, plain) for path in paths]


def _realpath_plain(path: str, plain: set) -> str:
    if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
        return os.path.realpath(path)
    prefix = ""
    for part in path.split("/")[1:]:
        prefix += "/" + part
        if prefix in plain:
            continue
        try:
            mode = os.lstat(prefix).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return path                  # the rest does not exist: nothing left to resolve
        if stat.S_ISLNK(mode):
            return os.path.realpath(path)
        if stat.S_ISDIR(mode):
            plain.add(prefix)
    return path


def write_file(path: str, data: bytes, mode: int = 0o644, owner: tuple | None = None) -> None:
    """Replace ``path`` atomically with ``data``: a new file renamed over the old entry.

    The temporary file is created exclusively in the folder's descriptor;
    mode and owner are set on its descriptor, and its data reaches the disk
    (fdatasync), before the rename: a crash leaves the old file or the new
    one, whole. Which of the two is left after a power loss the folder's
    next sync decides; the folder is not synced for every file (an fsync
    costs as much as the rest of a request, and the old file is a
    consistent state too: the next request writes the file again).
    """
    parents, name = _split(path)
    with _Walk(path) as walk:
        walk.enter(parents)
        temp = f".{name[:180]}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=walk.fd)
        except OSError as err:
            raise _error(err.errno, f"cannot create a file in {walk.where}: {err.strerror}", path) from None
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    if owner is not None:
                        os.fchown(handle.fileno(), *owner)
                    os.fchmod(handle.fileno(), mode)
                    os.fdatasync(handle.fileno())
                os.replace(temp, name, src_dir_fd=walk.fd, dst_dir_fd=walk.fd)
            except BaseException:
                _unlink_if_there(temp, walk.fd)
                raise
        except OSError as err:
            raise _error(err.errno, f"cannot write: {err.strerror}", path) from None


def makedirs(path: str, mode: int = 0o755, owner: tuple | None = None) -> None:
    """Create ``path`` and missing parents; set mode and owner on ``path`` itself.

    Missing parents are created root's (mode 755 less the umask); ``path`` is
    created 700 and then given ``mode`` and ``owner`` through its descriptor.
    """
    parents, name = _split(path)
    with _Walk(path) as walk:
        walk.enter(parents, create=0o755).enter([name], create=0o700)
        fd = _opened(walk)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        except OSError as err:
            raise _error(err.errno, f"cannot set mode or owner: {err.strerror}", path) from None
        finally:
            os.close(fd)


def rename(src: str, dst: str) -> None:
    """Move the entry ``src`` (never what it links to) to ``dst``, replacing what is there."""
    src_parents, src_name = _split(src)
    dst_parents, dst_name = _split(dst)
    with _Walk(src) as source, _Walk(dst) as target:
        source.enter(src_parents)
        target.enter(dst_parents)
        try:
            os.rename(src_name, dst_name, src_dir_fd=source.fd, dst_dir_fd=target.fd)
        except OSError as err:
            raise _error(err.errno, f"cannot move {src} to {dst}: {err.strerror}", src) from None


def remove(path: str) -> None:
    """Unlink the entry ``path`` (a link itself, not its target); absent is fine."""
    parents, name = _split(path)
    try:
        with _Walk(path) as walk:
            walk.enter(parents)
            os.unlink(name, dir_fd=walk.fd)
    except FileNotFoundError:
        return
    except OSError as err:
        raise _naming(err, path, "cannot remove: ") from None


def remove_tree(path: str) -> None:
    """Remove the folder ``path`` and everything in it; absent is fine.

    Iterative and one descriptor at a time (see _empty): no depth is too deep.
    """
    parents, name = _split(path)
    with _Walk(path) as walk:
        try:
            walk.enter(parents)
            info = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise _error(errno.ELOOP, "is a symbolic link, not a folder; not removed", path)
        if not stat.S_ISDIR(info.st_mode):
            raise _error(errno.ENOTDIR, "is not a folder; not removed", path)
        try:
            top = os.open(name, _READ_DIR, dir_fd=walk.fd)
            _empty(top, path)
            os.rmdir(name, dir_fd=walk.fd)
        except FileNotFoundError:
            return
        except OSError as err:
            raise _naming(err, path, "cannot remove: ") from None


def _empty(top: int, path: str) -> None:
    """Remove everything inside the folder open as ``top`` (closed on return).

    One descriptor at a time, whatever the depth: a customer's tree may be
    deeper than the descriptor limit (and its full path longer than any
    string worth keeping per level). Going back up goes through ``..`` of the
    folder held, which must be the very folder (device, inode) the walk came
    down from; if someone moved things meanwhile, the removal stops there.
    """
    fd = top
    try:
        info = os.fstat(fd)
        # per level: [name in its parent, (device, inode), names still to remove]
        levels = [["", (info.st_dev, info.st_ino), os.listdir(fd)]]
        while True:
            _check_given_up(path)        # a large tree the daemon gave up on stops here
            if levels[-1][2]:
                fd = _replace(fd, _remove_entry(fd, levels, path))
                continue
            if len(levels) == 1:
                return
            name = levels.pop()[0]
            fd = _replace(fd, _up(fd, levels, path))
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise _error(err.errno, f"cannot remove {_below(path, levels, name)}: {err.strerror}", path) from None
    finally:
        os.close(fd)


def _replace(old: int, new: int) -> int:
    """Move from descriptor ``old`` to ``new`` (closing ``old`` unless they are the same)."""
    if new != old:
        os.close(old)
    return new


def _below(path: str, levels: list, name: str = "") -> str:
    """The path of ``name`` in the deepest level, for messages only."""
    return posixpath.join(path, *[level[0] for level in levels[1:]], name)


def _remove_entry(fd: int, levels: list, path: str) -> int:
    """Unlink the next entry of the deepest level (returning ``fd``), or step into it (returning its descriptor)."""
    entry = levels[-1][2].pop()
    try:
        info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(entry, dir_fd=fd)
            return fd
        try:
            sub = os.open(entry, _READ_DIR, dir_fd=fd)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(entry, dir_fd=fd)       # swapped for a link or a file meanwhile
            return fd
        try:
            sub_info = os.fstat(sub)
            levels.append([entry, (sub_info.st_dev, sub_info.st_ino), os.listdir(sub)])
        except BaseException:
            os.close(sub)
            raise
    except FileNotFoundError:
        return fd
    except OSError as err:
        raise _error(err.errno, f"cannot remove {_below(path, levels, entry)}: {err.strerror}", path) from None
    return sub


def _up(fd: int, levels: list, path: str) -> int:
    """A new descriptor of ``..`` of ``fd``, checked to be the deepest level's folder."""
    up = os.open("..", _READ_DIR, dir_fd=fd)
    info = os.fstat(up)
    if (info.st_dev, info.st_ino) != levels[-1][1]:
        os.close(up)
        raise _error(errno.EAGAIN, f"{_below(path, levels)} was moved while it was being removed; stopped", path)
    return up


def _unlink_if_there(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


# ------------------------------------------------------- commands' output

# What is kept of a command's stdout, and of its stderr: their end, for the log.
OUTPUT_KEPT = 64 * 1024


class Tail:
    """The last ``size`` bytes of a stream, and how many came before them (``dropped``).

    A command may print without end (a loop, a verbose rsync): keeping all
    of it took the daemon from 38 MB to 918 MB for 300 MB of output, and a
    helper on the gateway from 13 MiB to 799 MiB for 2 x 100 MB. What
    explains a failure is at the end; the rest is read and dropped, so the
    command never blocks on a full pipe. Here, not in spawn, because the
    gateway gets this file alone.
    """

    def __init__(self, size: int = OUTPUT_KEPT) -> None:
        self.size = size
        self.kept = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.kept += chunk
        excess = len(self.kept) - self.size
        if excess > 0:
            del self.kept[:excess]
            self.dropped += excess

    def text(self) -> str:
        """What was kept, as text (a character cut at the start of the tail reads as U+FFFD)."""
        return self.kept.decode("utf-8", "replace")


# ------------------------------------------------------- what a command leaves behind

# Every command the helper runs carries COMMAND_VARIABLE=<a marker of its own>
# in its environment, and so does everything it starts: the environment is
# inherited, whether a process stays in the command's process group or not
# (setsid, a daemon's double fork). At a timeout, or when the daemon goes away,
# the processes carrying it are killed with the group. The same as
# provisioning.transport.commandguard does for LocalCLI; a copy, because the gateway
# gets this file alone.
COMMAND_VARIABLE = "PROVISIONING_COMMAND"
# New processes can appear while they are killed (a command forking): scan again.
KILL_ROUNDS = 5
_RANDOM = os.urandom(6).hex()
_commands = itertools.count(1)


def _command_marker() -> str:
    """A value of COMMAND_VARIABLE no other command on this host carries."""
    return "%d-%s-%d" % (os.getpid(), _RANDOM, next(_commands))


def _marked(wanted: bytes) -> list:
    """Pids of the other processes whose initial environment holds ``wanted`` (NUL-framed)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                environ = f.read()
        except OSError:                 # gone meanwhile, or not ours to read (nor to kill)
            continue
        if wanted in b"\0" + environ + b"\0":
            found.append(int(name))
    return found


def _kill_marked(marker: str) -> None:
    """SIGKILL every process carrying COMMAND_VARIABLE=``marker``, scanning until none is left."""
    wanted = ("\0%s=%s\0" % (COMMAND_VARIABLE, marker)).encode()
    for _ in range(KILL_ROUNDS):
        pids = _marked(wanted)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_command(proc, marker: str) -> None:
    """SIGKILL the command's process group, then what left it but carries its ``marker``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    _kill_marked(marker)


# ------------------------------------------------------- the remote helper

def _owner(text: str) -> tuple | None:
    if text == "-":
        return None
    uid, gid = text.split(":")
    return int(uid), int(gid)


def load(name: str, source: str) -> None:
    """Run ``source`` as the module ``name`` (importable by that name from then on): Transport.call."""
    import types

    module = types.ModuleType(name)
    module.__file__ = "<gateway:%s>" % name
    sys.modules[name] = module
    try:
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    except BaseException as err:
        del sys.modules[name]
        if isinstance(err, Exception) and not isinstance(err, OSError):
            raise OSError(errno.EIO, "loading %s: %s: %s" % (name, type(err).__name__, err)) from None
        raise


def call(module: str, function: str, arguments: list):
    """``function(*arguments)`` of a loaded module; any error but an OSError becomes one."""
    try:
        return getattr(sys.modules[module], function)(*arguments)
    except OSError:
        raise
    except Exception as err:        # the helper must answer, not die: the daemon reads it as OSError
        raise OSError(errno.EIO, "%s.%s raised %s: %s" % (module, function, type(err).__name__, err)) from None


def _dispatch(request: dict, data: bytes):
    operation, args = request["operation"], request["args"]
    if operation == "load":
        return load(args[0], data.decode("utf-8"))
    if operation == "call":
        return call(args[0], args[1], json.loads(data.decode("utf-8")))
    if operation == "run":
        return run_command(args, request.get("env"), data if request.get("stdin") else None,
                           request["timeout"])
    if operation == "exists":
        return exists(args[0])
    if operation == "realpath":
        return realpath(args[0])
    if operation == "realpaths":
        return realpaths(args)
    if operation == "lstat":
        return lstat(args)
    if operation == "read_small":
        return read_small(args[0], int(args[1]))
    if operation == "write_file":
        return write_file(args[0], data, int(args[1], 8), _owner(args[2]))
    if operation == "makedirs":
        return makedirs(args[0], int(args[1], 8), _owner(args[2]))
    if operation == "rename":
        return rename(args[0], args[1])
    if operation == "remove":
        return remove(args[0])
    if operation == "remove_tree":
        return remove_tree(args[0])
    raise ValueError("unknown operation %r" % (operation,))


def answer(request: dict, data: bytes = b"") -> dict:
    """One request's answer: {"value": ...}, or the OSError as {"errno", "strerror", "filename"}."""
    try:
        return {"value": _dispatch(request, data)}
    except OSError as err:
        return {"errno": err.errno, "strerror": err.strerror, "filename": err.filename}


def run_command(argv: list, env: dict | None, data: bytes | None, timeout: float) -> dict:
    """Run ``argv`` (no shell) in a session of its own.

    Returns {"returncode", "timed_out", "stdout", "stdout_dropped", "stderr",
    "stderr_dropped"}: the tail of each stream and how many bytes before it
    were dropped (see Tail). At ``timeout`` seconds the command is killed
    with its process group and whatever carries its marker, in the group or
    not (returncode 124). So is it when the daemon gives up on it or goes
    away meanwhile (see serve and _give_up). A program that
    cannot be started is 127 (not found) or 126, as a shell says.
    """
    marker = _command_marker()
    env = dict(os.environ if env is None else env)
    env[COMMAND_VARIABLE] = marker
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        return {"returncode": 127 if err.errno == errno.ENOENT else 126, "timed_out": False,
                "stdout": "", "stdout_dropped": 0, "stderr": "%s: %s" % (argv[0], err.strerror),
                "stderr_dropped": 0}
    stop_r, stop_w = os.pipe()
    watcher = threading.Thread(target=_kill_when_abandoned, args=(proc, marker, stop_r), daemon=True)
    watcher.start()
    out, err = Tail(), Tail()
    timed_out = False
    try:
        _exchange(proc, data, out, err, time.monotonic() + timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_command(proc, marker)
        try:
            _exchange(proc, None, out, err, time.monotonic() + 5)
        except subprocess.TimeoutExpired:       # a process that left the group holds the output
            proc.wait()
    finally:
        os.write(stop_w, b"x")
        watcher.join()
        os.close(stop_r)
        os.close(stop_w)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return {"returncode": 124 if timed_out else proc.returncode, "timed_out": timed_out,
            "stdout": out.text(), "stdout_dropped": out.dropped,
            "stderr": err.text(), "stderr_dropped": err.dropped}


def _exchange(proc, data: bytes | None, out: Tail, err: Tail, deadline: float) -> None:
    """Send ``data``, read stdout into ``out`` and stderr into ``err`` to their end, and collect
    the command; subprocess.TimeoutExpired at ``deadline`` (the command is left running).

    Popen.communicate would keep all of the output. A stream already read to
    its end (closed) is skipped, so this can be called again after a kill.
    """
    reading = {pipe.fileno(): (pipe, tail) for pipe, tail in ((proc.stdout, out), (proc.stderr, err))
               if not pipe.closed}
    waiting = select.poll()
    for fd in reading:
        waiting.register(fd, select.POLLIN)
    unsent = _start_sending(proc, data, waiting)
    while reading or unsent:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        for fd, _ in waiting.poll(left * 1000 + 1):
            if fd in reading:
                _read_into(fd, reading, waiting)
            else:
                unsent = _send(proc, unsent, waiting)
    proc.wait(max(deadline - time.monotonic(), 0))


def _start_sending(proc, data: bytes | None, waiting) -> memoryview:
    """What is left to send to the command's stdin (closed at once when there is nothing)."""
    if proc.stdin is None or proc.stdin.closed:
        return memoryview(b"")
    if not data:
        proc.stdin.close()
        return memoryview(b"")
    os.set_blocking(proc.stdin.fileno(), False)
    waiting.register(proc.stdin.fileno(), select.POLLOUT)
    return memoryview(data)


def _send(proc, unsent: memoryview, waiting) -> memoryview:
    try:
        unsent = unsent[os.write(proc.stdin.fileno(), unsent[:65536]):]
    except BlockingIOError:
        return unsent
    except BrokenPipeError:          # the command does not read it all: as Popen.communicate, not an error
        unsent = unsent[:0]
    if not unsent:
        waiting.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return unsent


def _read_into(fd: int, reading: dict, waiting) -> None:
    pipe, tail = reading[fd]
    chunk = os.read(fd, 65536)
    if chunk:
        tail.add(chunk)
        return
    waiting.unregister(fd)
    del reading[fd]
    pipe.close()


def _kill_when_abandoned(proc, marker: str, stop: int) -> None:
    """Kill the command (see _kill_command) if the daemon gives up on it (see _give_up) before ``stop``."""
    watched = [stop] + ([_given_up_pipe[0]] if _given_up_pipe else [])
    readable, _, _ = select.select(watched, [], [])
    if stop not in readable:
        _kill_command(proc, marker)


# While an operation runs, the helper says it is still at work this often: the
# daemon tells a slow operation from a dead connection by it, in seconds.
HEARTBEAT = 1.0
# How long an operation the daemon gave up on gets to stop before the helper exits anyway.
STOP_WAIT = 5.0
# The helper's exit status when the daemon gave up on the operation in hand.
EXIT_GIVEN_UP = 3

# Set when the daemon gave up on the operation in hand or went away (its input
# ended, or it spoke while the operation ran): long operations stop at their
# next step, a command is killed with everything it started.
_given_up = threading.Event()
_given_up_pipe = None                  # (read, write): the same, for select(); made by serve()


def _give_up() -> None:
    _given_up.set()
    if _given_up_pipe is not None:
        os.write(_given_up_pipe[1], b"x")


def _check_given_up(path: str) -> None:
    """OSError(ECANCELED) once the daemon gave up: an operation it no longer waits for stops here."""
    if _given_up.is_set():
        raise _error(errno.ECANCELED, "given up by the daemon; stopped", path)


class _Input:
    """The daemon's requests, read from a descriptor without Python's buffering, so that
    select() on it says whether the daemon spoke (or went away) while an operation ran."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.ended = False

    def line(self) -> bytes:
        while b"\n" not in self.buffer and self._more():
            pass
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size and self._more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _more(self) -> bool:
        chunk = os.read(self.fd, 65536)
        self.buffer += chunk
        self.ended = not chunk
        return bool(chunk)


def _say(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode("utf-8"))


class _Beat:
    """While an operation runs (in the main thread), a thread of its own says every HEARTBEAT
    seconds that the work goes on, and watches the daemon's side: the daemon says nothing while it
    waits, so input or its end then means it gave up or went away (see _give_up).

    It looks every HEARTBEAT / 4 seconds instead of being woken for each operation: waking a
    thread (or starting one) per operation cost more than most operations (0.3 -> 1.2 ms).
    """

    def __init__(self, inp: _Input) -> None:
        self.inp = inp
        self.lock = threading.Lock()         # one writer of stdout at a time
        self.number = None                   # the request at work, None between requests
        self.beaten = 0.0
        self.given_up_at = None
        threading.Thread(target=self._watch, daemon=True).start()

    def start(self, number) -> None:
        with self.lock:
            self.number, self.beaten = number, time.monotonic()

    def answer(self, reply: dict) -> None:
        with self.lock:                      # never a heartbeat after the answer to the same request
            self.number = None
            _say(reply)

    def _watch(self) -> None:
        while True:
            time.sleep(HEARTBEAT / 4)
            with self.lock:
                now = time.monotonic()
                if self.given_up_at is not None:
                    if now - self.given_up_at > STOP_WAIT:
                        os._exit(EXIT_GIVEN_UP)      # an operation that does not stop: the helper does
                    continue
                if self.number is None:
                    continue
                if self.inp.buffer or select.select([self.inp.fd], [], [], 0)[0]:
                    self.given_up_at = now
                    _give_up()
                elif now - self.beaten >= HEARTBEAT:
                    _say({"id": self.number, "alive": True})
                    self.beaten = now


def serve(nonce: str) -> int:
    """Answer requests on stdin until it ends: the gateway's side of CLISSH.

    First prints ``{"ready": NONCE}`` (a login script may have printed before
    it). Each request is one JSON line, ``{"id", "operation", "args", "size",
    ...}``, followed by ``size`` bytes of data (a file's, or a command's
    stdin). Its answer is one JSON line carrying the same ``id``; while the
    operation runs, ``{"id", "alive": true}`` every HEARTBEAT seconds. The
    daemon says nothing while it waits: input during an operation, or its
    end, means the daemon gave up or went away, and the operation is stopped
    (a command killed with what it started, a tree's removal at its next
    entry) and the helper exits EXIT_GIVEN_UP. A request that cannot be read
    ends the helper: the daemon then drops this session and starts another.
    """
    global _given_up_pipe
    _given_up_pipe = os.pipe()
    inp = _Input(0)
    beat = _Beat(inp)
    _say({"ready": nonce})
    while True:
        line = inp.line()
        if not line and inp.ended:
            return 0
        request = json.loads(line.decode("utf-8"))
        data = inp.exactly(request["size"])
        if len(data) != request["size"]:
            return 2
        beat.start(request.get("id"))
        reply = answer(request, data)
        if _given_up.is_set():
            return EXIT_GIVEN_UP
        beat.answer(dict(reply, id=request.get("id")))


if __name__ == "__main__":
    sys.exit(serve(sys.argv[2]) if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3 else 2)
