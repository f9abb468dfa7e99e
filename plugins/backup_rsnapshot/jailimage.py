"""The jail image: the programs and libraries every jail links to, one store per backup filesystem.

A jail holds ``rsync``, ``sh``, the loader and the libraries they need.
Copied into every jail they cost 8.5 MB each and never got a security
update. Instead each backup filesystem has one store, root's and 0700, so no
customer can reach it (a jail's hard link to an image file is the only way
to that file)::

    <top>/.jail-images/           root 0700; <top>: the highest folder from BACKUP_ROOT down
                                  to the jail that lies on the jail's filesystem (see top_for)
      lock                        flock'ed by whoever makes an image, links a jail or removes one
      current                     {"content", "since", "programs"}: what jails are moved to
      <content[:12]>-<n>/         one image, never changed once made
        manifest.json             where each file came from: path, size, mtime, sha256 (and mode)
        root/usr/bin/rsync ...    the files at their places in a jail, root's, no write bits

An image is made from the host's files (``make``) when there is none, when
JAIL_PROGRAMS names other programs, or when ``look`` finds that a program or
a library it needs changed (an apt upgrade). Images with the same content
are siblings: a new one is started from an existing sibling (``sibling``)
when one of its files reaches the hard-link limit (ext4: 65,000 links).
An image whose content is no longer current goes once nothing links to it
(``prune``).

Runs as root, in the daemon or in CLISSH's helper on the gateway (which gets
this source alone, with jailfs.py): standard library, Python 3.7+.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import time

try:
    from provisioning_backup_rsnapshot.jailfs import O_READ_FILE, Folder, Refused, walk
except ImportError:             # in the gateway's helper: jailfs was loaded under its own name
    from jailfs import O_READ_FILE, Folder, Refused, walk  # type: ignore[no-redef]

STORE_NAME = ".jail-images"
CURRENT = "current"
LOCK = "lock"
MANIFEST = "manifest.json"
TREE = "root"
NEW_PREFIX = ".new-"
# Where a program named without a slash is looked for: always this PATH, never the daemon's
# or the gateway session's, so that one name means one file wherever the lookup runs.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LDD_SECONDS = 30
CHUNK = 1 << 20
# What the kernel reads of a script's first line (BINPRM_BUF_SIZE), and how many interpreters
# that are scripts themselves it follows (BINPRM_MAX_RECURSION) before it refuses to run one.
SHEBANG_MAX = 256
SHEBANG_DEPTH = 4
LD_CACHE = "/etc/ld.so.cache"


class Changed(Exception):
    """A host file changed while the image was made from it: try again later."""


# --------------------------------------------------------------- the host's files

def file_key(path: str, info: os.stat_result) -> list:
    """What says the file at ``path`` is still the one ``info`` was taken of."""
    return [path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class Origin:
    """One host file an image holds: where it goes in a jail, where it comes from, as it is now."""

    def __init__(self, path: str, named: str, real: str, info: os.stat_result) -> None:
        self.path = path            # in the jail, relative: usr/bin/rsync
        self.named = named          # as the program or ldd names it: /lib/x86_64-linux-gnu/libacl.so.1
        self.real = real            # the file that is: /usr/lib/x86_64-linux-gnu/libacl.so.1.1.2301
        self.info = info

    @property
    def seen(self) -> list:
        """What says the file is still the same one (for the quick look)."""
        return file_key(self.real, self.info)

    @property
    def mode(self) -> int:
        # Readable and runnable for the customer, writable by nobody: the same inode is in every jail.
        return stat.S_IMODE(self.info.st_mode) & 0o555 | 0o444


def resolve(program: str) -> str:
    """The host path of a JAIL_PROGRAMS word: an absolute path as it is, a name found in SEARCH_PATH."""
    if program.startswith("/"):
        path = program
    else:
        path = shutil.which(program, path=SEARCH_PATH) or ""
    if not path or not os.path.isfile(path):
        raise Refused("JAIL_PROGRAMS: %s is not installed (looked for in %s)" % (
            program, program if program.startswith("/") else SEARCH_PATH))
    return path


def chain(program: str) -> list:
    """The host files a JAIL_PROGRAMS word runs: its path and, for a script, its interpreters.

    A script ("#!" first line) runs only with the interpreter it names, so
    that is in the jail too, with its libraries, and is watched for upgrades
    like the program: "#!/bin/sh" brings /bin/sh, "#!/usr/bin/env bash"
    brings env and bash (found in SEARCH_PATH). An interpreter that needs
    more than its shared libraries (python3's standard library, perl's
    modules) gets only those; its other files are not the jail's. Refused
    when a file is not root's alone (see trusted), an interpreter is
    missing, or they nest deeper than the kernel goes.
    """
    paths = [trusted(resolve(program))]
    scripts = [(paths[0], 0)]             # each file to read, and how many interpreters led to it
    while scripts:
        script, depth = scripts.pop()
        names = interpreter(script)
        if names and depth == SHEBANG_DEPTH:
            raise Refused("JAIL_PROGRAMS: %s: its interpreters are scripts nested more than %d deep "
                          "(or in a loop): the kernel would not run it" % (program, SHEBANG_DEPTH))
        for name in names:
            try:
                path = resolve(name)
            except Refused:
                raise Refused("JAIL_PROGRAMS: %s is a script for %s, which is not installed (looked for in %s)"
                              % (script, name, name if name.startswith("/") else SEARCH_PATH)) from None
            if not os.access(path, os.X_OK):
                raise Refused("JAIL_PROGRAMS: %s is a script for %s, which is not a program (no x bit)"
                              % (script, path))
            trusted(path)
            if path not in paths:
                paths.append(path)
            scripts.append((path, depth + 1))
    return paths


def trusted(path: str) -> str:
    """``path`` when it (links followed) is root's and no one else may write it; else Refused.

    Every jail holds it and every customer's session runs it, so whoever may
    write it would change what all of them run; a script's first line
    chooses another host file for every jail (its writer could name
    /etc/shadow); and root has ldd read it at every look.
    """
    info = os.stat(path)
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise Refused("JAIL_PROGRAMS: %s is not root's alone (owner %d, mode %o): every jail would hold it"
                      % (path, info.st_uid, stat.S_IMODE(info.st_mode)))
    return path


def interpreter(path: str) -> list:
    """What the kernel runs for the file ``path``: [] for a program that is no script, else the
    interpreter its "#!" line names (and NAME of ``#!/usr/bin/env NAME``, which env finds on PATH)."""
    with open(path, "rb") as opened:
        head = opened.read(SHEBANG_MAX)
    if not head.startswith(b"#!"):
        return []
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace")
    words = line.split(None, 1)             # the kernel: the interpreter, then one argument
    if not words or not words[0].startswith("/"):
        raise Refused("JAIL_PROGRAMS: %s is a script whose first line names no interpreter by its "
                      "absolute path (%r)" % (path, line.strip()))
    names = [words[0]]
    if posixpath.basename(words[0]) == "env" and len(words) > 1:
        # env's options (-S, -i, -u NAME...) and NAME=value come before the program it runs.
        wanted = [w for w in words[1].split() if not w.startswith("-") and "=" not in w]
        names += wanted[:1]
    return names


def libraries(program: str) -> list:
    """The shared libraries and the loader ``ldd`` reports for ``program`` (none for a static one)."""
    done = subprocess.run(["ldd", program], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          env={"PATH": SEARCH_PATH, "LC_ALL": "C"}, timeout=LDD_SECONDS, check=False)
    if done.returncode != 0:
        return []
    text = done.stdout.decode("utf-8", "replace")
    # ldd says so and exits 0: without the library the program would not start in a jail.
    missing = [line.split("=>")[0].strip() for line in text.splitlines() if line.rstrip().endswith("=> not found")]
    if missing:
        raise Refused("JAIL_PROGRAMS: %s needs %s, which ldd does not find" % (program, ", ".join(missing)))
    return [word.rstrip(":") for word in text.split() if word.startswith("/")]


def origins(programs: list) -> list:
    """Every file the programs need, each once: each program (a script's interpreters after it),
    then what ldd names for it."""
    found = {}
    runs = [path for program in programs for path in chain(program)]
    for path in runs:
        for named in [path] + libraries(path):
            # The folder with its links resolved (/lib/x86_64-linux-gnu is usr/lib/... on a merged
            # /usr): the jail mirrors /bin, /lib... as links, and files go to the real folders.
            where = posixpath.join(os.path.realpath(posixpath.dirname(named)), posixpath.basename(named))
            relative = where.lstrip("/")
            if relative not in found:
                real = os.path.realpath(named)
                found[relative] = Origin(relative, named, real, os.stat(real))
    return list(found.values())


def sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def content_key(files: list) -> str:
    """What an image holds, as one hash: each file's place, mode and sha256."""
    listed = sorted((f["path"], f["mode"], f["sha256"]) for f in files)
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


# ------------------------------------------------------------------- the store

def top_for(backup_root: str, path: str) -> str:
    """The highest folder from ``backup_root`` down to ``path`` on ``path``'s filesystem."""
    device = os.stat(path).st_dev
    folder = backup_root.rstrip("/") or "/"
    rest = [p for p in path[len(folder):].split("/") if p] if path.startswith(folder) else []
    while os.stat(folder).st_dev != device and rest:
        folder = posixpath.join(folder, rest.pop(0))
    return folder


class Image:
    """One image of the store: its name and manifest."""

    def __init__(self, name: str, manifest: dict) -> None:
        self.name = name
        self.manifest = manifest
        self.files = {f["path"]: f for f in manifest["files"]}

    @property
    def content(self) -> str:
        return self.manifest["content"]

    @property
    def number(self) -> int:
        return int(self.name.rsplit("-", 1)[1])

    def tree(self, path: str) -> str:
        """Where a file of the image lies, relative to the store."""
        return posixpath.join(self.name, TREE, path)


class Store:
    """An open store (its folder held as a descriptor), made if absent."""

    def __init__(self, folder: Folder, top: str) -> None:
        self.folder = folder
        self.top = top
        self._manifests = {}            # name -> manifest: an image never changes once made
        self._current = None            # (the current file's inode, mtime, size; its record)

    @classmethod
    def open(cls, top: str, *, make: bool = True) -> "Store":
        """The store of ``top``, made if absent (FileNotFoundError instead unless ``make``)."""
        with walk(top, make=False) as folder:
            if not make and folder.entry(STORE_NAME) is None:
                raise FileNotFoundError(2, "no jail image store", posixpath.join(top, STORE_NAME))
            return cls(folder.sub(STORE_NAME, 0o700), top)

    def close(self) -> None:
        self.folder.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def path(self) -> str:
        return self.folder.path

    @contextlib.contextmanager
    def lock(self):
        """The store's lock, across processes (the daemon, gateway helpers, a builder run by hand)."""
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.folder.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------- reading

    def current(self) -> dict | None:
        """{"content", "since", "programs"} of the current image, None before the first."""
        try:
            info = os.stat(CURRENT, dir_fd=self.folder.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._current is None or self._current[0] != seen:
            text = self._read(CURRENT)
            self._current = (seen, None if text is None else json.loads(text))
        return self._current[1]

    def images(self) -> list:
        """Every finished image, oldest content first, siblings in their order."""
        found = []
        for name in self.names():
            manifest = self._manifests.get(name)
            if manifest is None:
                text = self._read(posixpath.join(name, MANIFEST))
                if text is None:
                    continue
                manifest = self._manifests[name] = json.loads(text)
            found.append(Image(name, manifest))
        return sorted(found, key=lambda i: (i.manifest["made"], i.number))

    def of_content(self, content: str) -> list:
        return [image for image in self.images() if image.content == content]

    def matches(self, current: dict | None, programs: list, found: list) -> bool:
        """Whether the current image holds ``found`` as the host has it now (by stat, not by reading)."""
        if current is None or current["programs"] != programs:
            return False
        images = self.of_content(current["content"])
        if not images:
            return False
        files = images[0].files
        return len(files) == len(found) and all(
            o.path in files and files[o.path].get("seen") == o.seen for o in found)

    def file(self, image: Image, path: str) -> os.stat_result:
        return os.stat(image.tree(path), dir_fd=self.folder.fd, follow_symlinks=False)

    def tree_folder(self, image: Image, folder: str) -> Folder:
        """The folder ``folder`` (relative, in a jail's terms) of ``image``'s tree, opened."""
        return self.folder.opened(posixpath.join(image.name, TREE, folder))

    def names(self) -> list:
        """The names of the store's images, as listed."""
        return [n for n in os.listdir(self.folder.fd) if not n.startswith(".") and "-" in n]

    def _read(self, name: str) -> str | None:
        try:
            fd = os.open(name, O_READ_FILE, dir_fd=self.folder.fd)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            data = b""
            while len(data) < size:
                chunk = os.read(fd, size - len(data))
                if not chunk:
                    break
                data += chunk
            return data.decode("utf-8")
        finally:
            os.close(fd)

    # ------------------------------------------------- making (under lock())

    def make(self, found: list, programs: list, now: float, limit: int) -> Image:
        """A new image of the host files ``found``; the existing one if its content is the same.

        A file the newest image holds as the host has it now (by stat) is
        linked from it, so jails need not move for it (unless its links are
        at ``limit``); the others are copied and hashed in one read. A file
        whose stat changed meanwhile raises Changed (an upgrade under way).
        """
        self.clear_unfinished()
        kept = self._kept(limit)
        stage = NEW_PREFIX + os.urandom(6).hex()
        files = []
        with self.folder.sub(stage, 0o755) as folder:
            with folder.sub(TREE, 0o755) as tree:
                for origin in found:
                    same = kept.get(origin.path)
                    if same is not None and same[1].get("seen") == origin.seen:
                        files.append(self._link_from(same[0], origin, same[1], tree))
                    else:
                        files.append(_copy_origin(tree, origin))
        content = content_key(files)
        same_content = self.of_content(content)
        if same_content:
            self.folder.remove(stage)
            return same_content[-1]
        name = "%s-1" % content[:12]
        return self._finish(stage, name, {"content": content, "made": now, "programs": programs,
                                          "files": files})

    def _kept(self, limit: int) -> dict:
        """path -> (image, manifest entry) of the newest image's files that can take one more link."""
        images = self.images()
        if not images:
            return {}
        newest = images[-1]
        return {path: (newest, entry) for path, entry in newest.files.items()
                if self.file(newest, path).st_nlink < limit}

    def _link_from(self, image: Image, origin: Origin, entry: dict, tree: Folder) -> dict:
        folder, name = posixpath.split(origin.path)
        with tree.subpath(folder) as target:
            os.link(image.tree(origin.path), name, src_dir_fd=self.folder.fd, dst_dir_fd=target.fd,
                    follow_symlinks=False)
        return dict(entry, origin=origin.named, real=origin.real, seen=origin.seen)

    def sibling(self, image: Image, now: float) -> Image:
        """A new image with ``image``'s files (copied from it, not from the host): more links to give."""
        self.clear_unfinished()
        stage = NEW_PREFIX + os.urandom(6).hex()
        with self.folder.sub(stage, 0o755) as folder:
            with folder.sub(TREE, 0o755) as tree:
                for path, entry in image.files.items():
                    with self.tree_folder(image, posixpath.dirname(path)) as source, \
                            tree.subpath(posixpath.dirname(path)) as target:
                        _copy_file(source, posixpath.basename(path), target, entry)
        number = max(i.number for i in self.of_content(image.content)) + 1
        return self._finish(stage, "%s-%d" % (image.content[:12], number),
                            dict(image.manifest, made=now, sibling_of=image.name))

    def set_current(self, image: Image, now: float) -> None:
        """Make ``image``'s content the one every jail is moved to."""
        record = {"content": image.content, "since": now, "programs": image.manifest["programs"]}
        self.folder.put_file(CURRENT, json.dumps(record).encode(), mode=0o600)
        os.fsync(self.folder.fd)

    def target(self, paths: list, limit: int, now: float) -> Image:
        """The image of the current content that can give ``paths`` one more link each (a new sibling if none)."""
        content = self.current()["content"]
        images = self.of_content(content)
        for image in images:
            if all(self.file(image, path).st_nlink < limit for path in paths):
                return image
        return self.sibling(images[-1], now)

    def prune(self, in_use: set) -> list:
        """Remove every image of an old content that nothing but the store links to; the names removed.

        An image shares the files that did not change with the newer one:
        jails linking to such a file link to the current image, not to it.
        """
        current = self.current()
        names = {}                      # (device, inode) -> how many of the store's images hold it
        images = self.images()
        for image in images:
            for path in image.files:
                info = self.file(image, path)
                names[(info.st_dev, info.st_ino)] = names.get((info.st_dev, info.st_ino), 0) + 1
        ours = {(info.st_dev, info.st_ino) for image in images if current and image.content == current["content"]
                for info in (self.file(image, path) for path in image.files)}
        removed = []
        for image in images:
            if current is not None and image.content == current["content"] or image.name in in_use:
                continue
            infos = [self.file(image, path) for path in image.files]
            # A file shared with a current image is theirs to keep; any other one must have no link
            # but the store's own.
            if all((info.st_dev, info.st_ino) in ours or info.st_nlink <= names[(info.st_dev, info.st_ino)]
                   for info in infos):
                self.folder.remove(image.name)
                self._manifests.pop(image.name, None)
                removed.append(image.name)
                for info in infos:
                    names[(info.st_dev, info.st_ino)] -= 1
        return removed

    def clear_unfinished(self) -> None:
        """Remove what a crash left of an image being made (only ever called under the lock)."""
        for name in os.listdir(self.folder.fd):
            if name.startswith(NEW_PREFIX):
                self.folder.remove(name)

    def _finish(self, stage: str, name: str, manifest: dict) -> Image:
        with self.folder.opened(stage) as folder:
            folder.put_file(MANIFEST, json.dumps(manifest, indent=1).encode(), mode=0o644)
            os.fsync(folder.fd)
        self.folder.rename(stage, name)
        os.fsync(self.folder.fd)
        return Image(name, manifest)


def _copy_origin(tree: Folder, origin: Origin) -> dict:
    """Copy a host file into the image tree; its manifest entry."""
    src = os.open(origin.real, os.O_RDONLY | os.O_CLOEXEC)      # the host's own file: its links are root's
    try:
        before = os.fstat(src)
        if origin.seen != file_key(origin.real, before):
            raise Changed("%s changed since it was looked at" % origin.real)
        with tree.subpath(posixpath.dirname(origin.path)) as folder:
            digest = folder.put_copy(posixpath.basename(origin.path), src, origin.mode, before.st_mtime_ns)
        if os.fstat(src).st_mtime_ns != before.st_mtime_ns:
            raise Changed("%s changed while it was copied" % origin.real)
    finally:
        os.close(src)
    return {"path": origin.path, "origin": origin.named, "real": origin.real, "size": before.st_size,
            "mtime": before.st_mtime_ns, "sha256": digest, "mode": origin.mode, "seen": origin.seen}


def _copy_file(source: Folder, name: str, target: Folder, entry: dict) -> None:
    src = os.open(name, O_READ_FILE, dir_fd=source.fd)
    try:
        digest = target.put_copy(name, src, entry["mode"], os.fstat(src).st_mtime_ns)
    finally:
        os.close(src)
    if digest != entry["sha256"]:
        raise OSError(errno.EIO, "%s/%s does not hold what the manifest says" % (source.path, name))


# ----------------------------------------------------------------- looking

_looked = {}            # (store path, programs) -> what the last look saw, for the quick look


def resolutions(programs: list) -> list:
    """Each program with the host paths it runs, and the loader's cache (what the quick look
    compares first): ldconfig rewrites the cache when a library is installed, and one in a
    folder the loader prefers changes what ldd finds without any file it found changing."""
    try:
        cache = file_key(LD_CACHE, os.stat(LD_CACHE))
    except OSError:
        cache = [LD_CACHE, None]
    return [[program, *chain(program)] for program in programs] + [cache]


def quick(programs: list, names: list) -> list:
    """What the quick look compares: each program's resolution, and for every file last seen, by
    the name the program or ldd gave it, the file that name leads to now and its stat (a link
    pointed at a new file, its old one left in place, is a change too: update-alternatives)."""
    found = resolutions(programs)
    for named in names:
        real = os.path.realpath(named)
        try:
            found.append(file_key(real, os.stat(real)))
        except OSError:
            found.append([real, None])
    return found


def look(store: Store, programs: list, quiet: float, limit: int, now: float | None = None) -> dict:
    """Whether the host's files still are the current image's, and a new image when not.

    Quick (a stat per file) while nothing changed since the last look; else
    ldd, and a new image when a file's stat differs from what the current
    image recorded (copied and hashed; the content decides whether it is
    new). A change is acted on once every file has been left alone for
    ``quiet`` seconds: an upgrade under way replaces the loader and libc one
    after the other. Returns {"content", "since", "made": bool, "waiting"}.
    """
    now = time.time() if now is None else now
    current = store.current()
    key = (store.path, tuple(programs))
    last = _looked.get(key)
    if current is not None and last is not None and current["content"] == last["content"] \
            and quick(programs, last["files"]) == last["quick"]:
        return {"content": current["content"], "since": current["since"], "made": False, "waiting": ""}
    # What the quick look will compare with is taken from what this look decides on, not
    # read again after it: a file changed in between would then look unchanged for good.
    resolved = resolutions(programs)
    found = origins(programs)
    young = [o.real for o in found if now - o.info.st_ctime < quiet]
    if young:
        return {"content": current and current["content"], "since": current and current["since"],
                "made": False, "waiting": "changed %s ago or less: %s" % (_seconds(quiet), ", ".join(young))}
    made = False
    if not store.matches(current, programs, found):
        with store.lock():
            current = store.current()
            if not store.matches(current, programs, found):
                image = store.make(found, programs, now, limit)
                if current is None or current["content"] != image.content or current["programs"] != programs:
                    store.set_current(image, now)
                    made = True
                current = store.current()
    _looked[key] = {"content": current["content"], "files": [o.named for o in found],
                    "quick": resolved + [o.seen for o in found]}
    return {"content": current["content"], "since": current["since"], "made": made, "waiting": ""}


def ensure(store: Store, programs: list, limit: int, now: float | None = None) -> dict:
    """The current image's record, made now if there is none or it holds other programs."""
    current = store.current()
    if current is not None and current["programs"] == programs:
        return current
    look(store, programs, 0, limit, now)
    return store.current()


def _seconds(value: float) -> str:
    return "%g s" % value
