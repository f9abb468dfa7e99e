"""The two CREATE_CHROOT_CMD programs, called as ``CMD JAIL HOME UID UIDNUMBER GIDNUMBER``.

prov-backup-create-home: the jail folder and the home in it, nothing else::

    JAIL/                         root 0755 (sshd's ChrootDirectory: root's, no group/other write)
      HOME/                       root 0755 (and the folders above it in the jail)
        incoming/                 UIDNUMBER:GIDNUMBER 0700 (backups are uploaded here)

prov-backup-create-chroot: the whole jail the original wiki promised::

    JAIL/
      bin/sh, usr/bin/rsync, ...  what ``rsync --server`` needs when sshd runs it in the jail,
      lib*/...                    with the shared libraries ldd reports: in the daemon, hard
                                  links to the jail image (jailimage.py, relink.py); run by
                                  hand, copies (the daemon's jail job links them later)
      dev/null                    character device 1,3, 0666
      etc/passwd, etc/group       the account alone, so programs can name it
      HOME/                       root 0755
        incoming/                 UIDNUMBER:GIDNUMBER 0700
        .ssh/                     UIDNUMBER:GIDNUMBER 0700
          authorized_keys         UIDNUMBER:GIDNUMBER 0600 (empty)

The home is root's: the customer owns only what is made for them in it, so
they cannot rename or replace anything root works with (snapshots live
outside the jail; see the plugin's account.Layout). sftp needs nothing in
the jail with sshd's "ForceCommand internal-sftp".

Nothing is made through a link: see jailfs. A folder in the jail that is a
link or is not root's is refused; a file, device or link root puts in the
jail replaces what was there (a link is replaced, never written through).
The home is built under a temporary name and renamed last, so a home that
exists is complete; one that exists is left as it is. Every step may run again.

The daemon does not start these programs: when CREATE_CHROOT_CMD names one
of them (or is left out), it calls ``build`` in its own process, or in
CLISSH's helper on the gateway (see builder.py and jailcalls.py).

Exit 0 on success, 2 for bad arguments, 1 for anything else (a refusal included).
"""
from __future__ import annotations

# Imports are few and cheap on purpose: this runs once per new account, and
# the bin/ wrappers start it without site-packages (python -S) to start fast.
import os
import posixpath
import stat
import string
import sys

try:
    from provisioning_backup_rsnapshot.jailfs import Folder, Refused, walk
except ImportError:        # run as a file next to jailfs.py (bin/ wrappers), or in the gateway's helper
    from jailfs import Folder, Refused, walk  # type: ignore[no-redef]

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._/-")
MAX_ID = 4_294_967_294
# Host folders that merged-/usr systems make links (/bin -> usr/bin): the jail mirrors them.
MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class BadArguments(Exception):
    pass


class Account:
    """The arguments, checked."""

    def __init__(self, jail: str, home: str, uid: str, uid_number: int, gid_number: int) -> None:
        self.jail, self.home, self.uid = jail, home, uid
        self.uid_number, self.gid_number = uid_number, gid_number

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid_number, self.gid_number


def _digits(value: str) -> bool:
    return 1 <= len(value) <= 10 and value.isascii() and value.isdigit()


def parse_args(argv: list[str]) -> Account:
    if len(argv) != 5:
        raise BadArguments("expected 5 arguments")
    jail, home, uid, uid_number, gid_number = argv
    for name, path in (("JAIL", jail), ("HOME", home)):
        if not path.startswith("/") or not SAFE_CHARACTERS.issuperset(path):
            raise BadArguments(f"{name} must be an absolute path of letters, digits, . _ - /: {path!r}")
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise BadArguments(f"refusing a path with . or ..: {path}")
        if not parts:
            raise BadArguments(f"{name} must not be /")
    if not all(_digits(v) for v in (uid, uid_number, gid_number)):
        raise BadArguments("UID, UIDNUMBER and GIDNUMBER must be digits")
    if int(uid_number) > MAX_ID or int(gid_number) > MAX_ID:
        raise BadArguments(f"UIDNUMBER and GIDNUMBER must be at most {MAX_ID}")
    return Account(posixpath.normpath(jail), posixpath.normpath(home), uid, int(uid_number), int(gid_number))


def open_jail(account: Account) -> Folder:
    """The jail, made if absent: the way to it is checked by walk, the jail itself is root's."""
    with walk(posixpath.dirname(account.jail)) as parent:
        return parent.sub(posixpath.basename(account.jail))


def make_home(jail: Folder, account: Account, *, ssh: bool) -> None:
    """The home in the jail unless it exists: built as ``.NAME.partial``, renamed last."""
    with jail.subpath(posixpath.dirname(account.home)) as parent:
        name = posixpath.basename(account.home)
        found = parent.entry(name)
        if found is not None:
            if not stat.S_ISDIR(found.st_mode):
                raise Refused(f"{parent.name(name)} exists and is not a folder: not using it")
            return
        stage = f".{name}.partial"
        parent.remove(stage)                          # a half-built home from a crash
        with parent.sub(stage) as home:
            home.sub("incoming", 0o700, account.owner).close()
            if ssh:
                with home.sub(".ssh", 0o700, account.owner) as dot_ssh:
                    dot_ssh.put_file("authorized_keys", b"", mode=0o600, owner=account.owner)
        parent.rename(stage, name)


def create_home(account: Account) -> None:
    with open_jail(account) as jail:
        make_home(jail, account, ssh=False)


def create_chroot(account: Account, programs: list[str], link=None) -> dict:
    """The whole jail; its programs from ``link(jail)`` (the image), or copied from the host.

    Returns what ``link`` returned ({} for copies).
    """
    linked = {}
    with open_jail(account) as jail:
        jail.sub("dev").close()
        jail.sub("etc").close()
        for name in MERGED:
            host = f"/{name}"
            if os.path.islink(host):
                target = os.readlink(host)
                jail.subpath(target.lstrip("/") if target.startswith("/") else target).close()
                jail.put_link(name, target)
        if link is not None:
            linked = link(jail)
        else:
            copy_programs(jail, programs)
        with jail.subpath("dev") as dev:
            dev.put_device("null", 1, 3, 0o666)
        with jail.subpath("etc") as etc:
            etc.put_file("passwd", f"{account.uid}:x:{account.uid_number}:{account.gid_number}::"
                                   f"{account.home}:/bin/sh\n".encode(), mode=0o644)
            etc.put_file("group", f"{account.uid}:x:{account.gid_number}:\n".encode(), mode=0o644)
        make_home(jail, account, ssh=True)
    return linked


def copy_programs(jail: Folder, programs: list[str]) -> None:
    """The programs (a script with its interpreters) and their libraries copied into the jail (run
    by hand: no image to link to). The files are the ones an image would hold (jailimage.origins)."""
    try:            # imported here: prov-backup-create-home starts faster without
        from provisioning_backup_rsnapshot.jailimage import origins
    except ImportError:     # run as a file next to jailimage.py (bin/ wrappers)
        from jailimage import origins  # type: ignore[no-redef]
    try:
        found = origins(programs)
    except Refused as err:
        # The daemon's key says JAIL_PROGRAMS; run by hand, the programs come from CHROOT_PROGRAMS.
        raise Refused(str(err).replace("JAIL_PROGRAMS", "CHROOT_PROGRAMS", 1)) from None
    for origin in found:
        copy_in(jail, origin.named)


def copy_in(jail: Folder, source: str) -> None:
    """Copy the host file ``source`` (links followed: it is the host's) to the same place in the jail.

    The folder is the host folder with its links resolved (/bin/sh goes to
    usr/bin/sh when /bin is a link to usr/bin), so the copy is made in real
    folders of the jail, never through the jail's own mirror links.
    """
    folder = os.path.realpath(os.path.dirname(source))
    mode = os.stat(source).st_mode & 0o755
    with jail.subpath(folder) as inside:
        inside.put_file(os.path.basename(source), source=source, mode=mode)


def build_jail(kind: str, argv: list[str], link=None) -> dict:
    """Build the jail (``kind`` chroot) or the home alone (home) in this process; what was linked.

    BadArguments, Refused or OSError when it cannot. The programs come from
    ``link`` (see create_chroot): nothing is copied and no ldd runs.
    """
    account = parse_args(argv)
    if kind == "home":
        create_home(account)
        return {}
    return create_chroot(account, [], link)


def run(prog: str, argv: list[str], build) -> int:
    try:
        account = parse_args(argv)
    except BadArguments as err:
        print(f"{prog}: {err}\nusage: {prog} JAIL HOME UID UIDNUMBER GIDNUMBER", file=sys.stderr)
        return 2
    os.umask(0o022)
    try:
        build(account)
    except Refused as err:
        print(f"{prog}: refused: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    return 0


def main_home(argv: list[str] | None = None) -> int:
    """prov-backup-create-home JAIL HOME UID UIDNUMBER GIDNUMBER"""
    return run("prov-backup-create-home", sys.argv[1:] if argv is None else argv, create_home)


def main_chroot(argv: list[str] | None = None) -> int:
    """prov-backup-create-chroot JAIL HOME UID UIDNUMBER GIDNUMBER (programs: $CHROOT_PROGRAMS, default "sh rsync")"""
    programs = os.environ.get("CHROOT_PROGRAMS", "sh rsync").split()
    return run("prov-backup-create-chroot", sys.argv[1:] if argv is None else argv,
               lambda account: create_chroot(account, programs))


if __name__ == "__main__":
    # python -S .../chroot.py home|chroot ARGS... (bin/ wrappers)
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    mains = {"home": main_home, "chroot": main_chroot}
    if which not in mains:
        print("usage: chroot.py home|chroot JAIL HOME UID UIDNUMBER GIDNUMBER", file=sys.stderr)
        sys.exit(2)
    sys.exit(mains[which](sys.argv[2:]))
