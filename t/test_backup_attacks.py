"""Backup/Rsnapshot attacked, through the running daemon (real slapd) and a real ``rsnapshot daily``.

Each test does what a customer or a second directory entry could do and then
checks that nothing outside the account changed. The customer here is
stronger than a real one: commands run as the account's uid on the host,
not inside the jail sshd would lock them in.
"""
from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import ldap
import ldap.modlist
import pytest

from provisioning.base.clock import Clock, utc_stamp

from helpers import DaemonProcess, account_attrs, as_user, assert_done, picture, wait_until

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="changes owners and acts as a customer uid: needs root"),
              pytest.mark.with_workers]
VICTIM = "3723707"


def fresh_uid(n: int) -> str:
    """A uid no parallel test run uses: rsnapshot's lockfile is /run/rsnapshot-<uid>.pid."""
    return str(3_000_000 + (os.getpid() * 10 + n) % 1_000_000)


@pytest.fixture
def victim_files(tmp_path) -> Path:
    """A folder outside the backup root that links will point at."""
    top = tmp_path / "victim"
    (top / "sub").mkdir(parents=True)
    (top / "precious").write_text("not the customer's")
    (top / "sub/deep").write_text("nor this")
    return top


def rsnapshot_daily(config: Path) -> None:
    done = subprocess.run(["rsnapshot", "-c", str(config), "daily"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def assert_nobody_but_root_steers(path: Path, uid: int) -> None:
    """The rule: no folder from / to ``path`` is a link, the account's, or writable for it.

    A folder anybody may write (like /tmp, above the test's backup root) is
    accepted only with the sticky bit: then nobody can rename root's entries in it.
    """
    folder = Path("/")
    for part in path.parts[1:]:
        folder = folder / part
        info = folder.lstat()
        assert not stat.S_ISLNK(info.st_mode), folder
        assert info.st_uid != uid, f"{folder} belongs to the account"
        writable = info.st_mode & 0o002 or (info.st_gid == uid and info.st_mode & 0o020)
        assert not writable or info.st_mode & stat.S_ISVTX, f"{folder} is writable for the account"


def request_done(directory, dn: str) -> dict:
    """Wait for any outcome (0 or a failure) of the request just written."""
    return wait_until(lambda: (e := directory.get(dn)) and "sstProvisioningReturnValue" in e and e,
                      f"{dn} to get an outcome")


# ------------------------------------------------------------ snapshots

def test_rsnapshot_after_the_customers_attack_writes_only_in_the_snapshot_root(host, directory, daemon,
                                                                               victim_files):
    uid = fresh_uid(1)
    dn = directory.add(uid, sstBackupIntervalDaily="2", sstBackupIntervalWeekly="0", sstBackupIntervalMonthly="0")
    assert_done(directory.wait_mode(dn, "added"), "added")
    home, account, n = host.home(uid), host.account_dir(uid), int(uid)
    snapshots = account / "snapshots"
    outside = {"victim": picture(victim_files), "others": picture(host.layout.backup_root, skip=(account,))}

    # The attack of the issue: rename .snapshots and put a link in its place; and its variants.
    moves = [("mv", home / ".snapshots", home / "mine"), ("ln", "-s", str(victim_files), home / ".snapshots"),
             ("ln", "-s", str(victim_files), account / "snapshots2"),
             ("mv", snapshots, account / "s"), ("touch", snapshots / "daily.0")]
    results = {" ".join(map(str, move)): as_user(n, *move, cwd=home) for move in moves}
    # What the customer owns, incoming/, holds links to the outside and a folder swapped between runs.
    incoming = home / "incoming"
    for move in [("ln", "-s", str(victim_files), incoming / "escape"), ("ln", "-s", "/", incoming / "root"),
                 ("mkdir", incoming / "folder"), ("touch", incoming / "folder/file")]:
        assert as_user(n, *move, cwd=home).returncode == 0, move
    config = host.rsnapshot_config(uid)
    for run in range(3):          # daily 2: the third run deletes the oldest snapshot
        rsnapshot_daily(config)
        if run == 0:
            assert as_user(n, "rm", "-r", incoming / "folder", cwd=home).returncode == 0
            assert as_user(n, "ln", "-s", str(victim_files / "sub"), incoming / "folder", cwd=home).returncode == 0

    assert picture(victim_files) == outside["victim"]
    assert picture(host.layout.backup_root, skip=(account,)) == outside["others"]
    # Refused by the kernel: every folder the customer would have to change is root's.
    assert all(r.returncode != 0 and ("Permission denied" in r.stderr or move.startswith(f"mv {home}/.snapshots"))
               for move, r in results.items()), {m: r.stderr for m, r in results.items()}
    assert sorted(p.name for p in snapshots.iterdir()) == ["daily.0", "daily.1"]
    [copy] = (snapshots / "daily.0/incoming").glob("**/incoming/escape")
    assert copy.is_symlink() and os.readlink(copy) == str(victim_files)       # copied as a link, not followed
    assert_nobody_but_root_steers(snapshots / "daily.0", n)
    assert (snapshots.stat().st_uid, stat.S_IMODE(snapshots.stat().st_mode)) == (0, 0o700)


# ------------------------------------------------------------ migration

def _old_layout(host, uid: str, *, attacked: bool, victim: Path) -> Path:
    """An account as the code before this layout left it, with a day of snapshots."""
    n, home = int(uid), host.home(uid)
    for folder in (home / "incoming", home / ".snapshots/daily.0/incoming"):
        folder.mkdir(parents=True)
    (home / "incoming/backup.tar").write_text("customer data")
    for path, mode in ((home, 0o700), (home / "incoming", 0o700)):
        os.chown(path, n, n)
        path.chmod(mode)
    (home / ".snapshots/daily.0/incoming/backup.tar").write_text("yesterday's data")
    template = (host.layout.root / "old.template")
    shipped = Path(__file__).resolve().parents[1] / "etc/Provisioning/Backup/rsnapshot.account.template"
    text = shipped.read_text()
    for name, value in {"snapshot_root": f"{home}/.snapshots/", "backup_source": f"{home}/incoming/",
                        "retain": "retain\tdaily\t2", "uid": uid}.items():
        text = text.replace(f"%{name}%", value)
    template.write_text(text)
    host.rsnapshot_config(uid).write_text(text)
    if attacked:        # the customer owns the home: rename .snapshots, put a link in its place
        assert as_user(n, "mv", home / ".snapshots", home / "old-snapshots", cwd=home).returncode == 0
        assert as_user(n, "ln", "-s", str(victim), home / ".snapshots", cwd=home).returncode == 0
    return home


@pytest.mark.parametrize("attacked", [False, True], ids=["as-left", "after-the-attack"])
def test_modify_brings_an_old_account_to_the_new_layout(host, directory, daemon, victim_files, attacked):
    uid = fresh_uid(2 + attacked)
    home = _old_layout(host, uid, attacked=attacked, victim=victim_files)
    account, n = host.account_dir(uid), int(uid)
    dn = directory.add(uid, sstBackupIntervalDaily="2", sstBackupIntervalWeekly="0", sstBackupIntervalMonthly="0",
                       sstProvisioningMode="added", sstProvisioningState="20240101T000000Z")
    before = picture(victim_files)
    directory.request(dn, "modify")
    request_done(directory, dn)
    rsnapshot_daily(host.rsnapshot_config(uid))
    assert picture(victim_files) == before
    assert_done(directory.get(dn), "modified")

    snapshots = account / "snapshots"
    assert (home.stat().st_uid, stat.S_IMODE(home.stat().st_mode)) == (0, 0o755)
    assert (home / "incoming").stat().st_uid == n
    assert (home / "incoming/backup.tar").read_text() == "customer data"
    assert (account / ".entryUUID").read_text() == directory.entry_uuid(dn) + "\n"
    assert f"snapshot_root\t{snapshots}/\n" in host.rsnapshot_config(uid).read_text()
    assert_nobody_but_root_steers(snapshots / "daily.0", n)
    if attacked:       # the planted link stays where the customer put it; root no longer looks there
        assert (home / ".snapshots").is_symlink()
        daemon.wait_for(rf"WARNING uid={uid},.*: {home}/.snapshots \(a symbolic link .*\) left where it is")
    else:              # yesterday's snapshot moved along (and was rotated to daily.1 by the run)
        assert not (home / ".snapshots").exists()
        assert (snapshots / "daily.1/incoming/backup.tar").read_text() == "yesterday's data"
    # The home is root's now: the attack no longer works.
    assert as_user(n, "mv", home / "incoming", home / "x", cwd=home).returncode != 0
    assert as_user(n, "ln", "-s", str(victim_files), home / "new-link", cwd=home).returncode != 0
    directory.request(dn, "modify")                             # idempotent: nothing more to move
    daemon.wait_for(rf"uid={uid},.*: modify done", count=2)
    assert_done(directory.get(dn), "modified")


# ------------------------------------------------------------ one account, one identity

def _victim(host, directory) -> tuple[str, dict]:
    dn = directory.add(VICTIM)
    assert_done(directory.wait_mode(dn, "added"), "added")
    (host.home(VICTIM) / "incoming/backup.tar").write_text("the victim's data")
    os.chown(host.home(VICTIM) / "incoming/backup.tar", int(VICTIM), int(VICTIM))
    return dn, _state(host)


def _state(host) -> dict:
    """All that an impostor must not change."""
    return {"account": picture(host.account_dir(VICTIM)), "configs": picture(host.layout.rsnapshot_dir),
            "quota": host.quota_calls(), "chroot": host.chroot_calls(),
            "root": sorted(str(p) for p in host.layout.backup_root.rglob("*"))}


def _others(slapd, subtree: str) -> str:
    ou = f"ou=others,{subtree}"
    conn = slapd.connect()
    try:
        conn.add_s(ou, [("objectClass", [b"organizationalUnit"]), ("ou", [b"others"])])
    except ldap.ALREADY_EXISTS:
        pass
    return ou


@pytest.mark.parametrize("uid_number", [VICTIM, "3723799"], ids=["same-uidNumber", "other-uidNumber"])
@pytest.mark.parametrize("verb", ["add", "modify", "delete"])
def test_a_second_entry_with_the_victims_uid_touches_nothing(host, directory, daemon, slapd, verb, uid_number):
    victim_dn, before = _victim(host, directory)
    dn = f"uid={VICTIM},{_others(slapd, directory.subtree)}"
    attrs = account_attrs(VICTIM, host.layout.backup_root, uidNumber=uid_number, gidNumber=uid_number,
                          sstQuota="10737418240", sstBackupIntervalDaily="1")
    if verb != "add":
        attrs.update(sstProvisioningMode=[b"added"], sstProvisioningState=[b"20240101T000000Z"])
    directory.conn.add_s(dn, ldap.modlist.addModlist(attrs))
    if verb == "modify":
        directory.request(dn, "modify")
    elif verb == "delete":
        directory.request(dn, "delete", sstIsActive="FALSE")
    entry = request_done(directory, dn)
    assert _state(host) == before
    assert entry["sstProvisioningReturnValue"] == "13"
    assert entry["sstProvisioningMode"] == f"{verb[:-1] if verb.endswith('e') else verb}ing"
    daemon.wait_for(rf"ERROR uid={VICTIM},ou=others,.*: {verb}: .*{VICTIM} belongs to the entry with entryUUID "
                    rf"'{directory.entry_uuid(victim_dn)}', not to this one .*\(return value 13, NOT_THIS_ENTRYS_ACCOUNT\)")
    assert (host.home(VICTIM) / "incoming").stat().st_uid == int(VICTIM)
    assert directory.get(victim_dn)["sstProvisioningMode"] == "added"


def test_an_unmarked_account_is_refused_to_an_entry_whose_uidnumber_does_not_own_it(host, directory, daemon, slapd):
    incoming = host.home(VICTIM) / "incoming"
    incoming.mkdir(parents=True)
    os.chown(incoming, int(VICTIM), int(VICTIM))
    (incoming / "backup.tar").write_text("the victim's data")
    before = _state(host)
    dn = directory.add(VICTIM, uidNumber="3723799", gidNumber="3723799")
    assert request_done(directory, dn)["sstProvisioningReturnValue"] == "13"
    daemon.wait_for(rf"{VICTIM} exists without an owner marker and its incoming/ is a directory owned by "
                    rf"{VICTIM}:{VICTIM}.*not a folder of uidNumber 3723799")
    assert _state(host) == before


@pytest.mark.parametrize("verb", ["add", "delete"])
def test_an_unmarked_folder_without_incoming_is_neither_finished_nor_deleted(host, directory, daemon, verb):
    """Issue 18: only the surveyed paths were looked at (root's folders), not what snapshots/ holds."""
    account = host.account_dir(VICTIM)
    (account / "chroot/home" / VICTIM).mkdir(parents=True)           # root's; no incoming/, no marker
    kept = account / "snapshots/daily.0/incoming"
    kept.mkdir(parents=True)
    (kept / "backup.tar").write_text("a customer's backed-up data")
    before = _state(host)
    request = {"sstProvisioningMode": "delete", "sstIsActive": "FALSE"} if verb == "delete" else {}
    dn = directory.add(VICTIM, **request)
    assert request_done(directory, dn)["sstProvisioningReturnValue"] == "13"
    daemon.wait_for(rf"{verb}: .*{VICTIM} exists without an owner marker and its incoming/ is absent.*"
                    rf"\(return value 13, NOT_THIS_ENTRYS_ACCOUNT\)")
    assert _state(host) == before


@pytest.mark.parametrize("shape", ["two-uid-values", "dn-names-another"])
def test_an_entry_that_does_not_name_one_uid_touches_nothing(host, directory, daemon, slapd, shape):
    victim_dn, before = _victim(host, directory)
    attrs = account_attrs(VICTIM, host.layout.backup_root, uidNumber="3723799", gidNumber="3723799")
    if shape == "two-uid-values":
        dn = f"uid=3723799,{directory.subtree}"
        attrs["uid"] = [b"3723799", VICTIM.encode()]
    else:
        dn = f"cn=Evil,{directory.subtree}"
        attrs["cn"] = [b"Evil"]
    directory.conn.add_s(dn, ldap.modlist.addModlist(attrs))
    entry = request_done(directory, dn)
    assert _state(host) == before
    assert entry["sstProvisioningReturnValue"] == "12"
    daemon.wait_for(r"\(return value 12, AMBIGUOUS_IDENTITY\)")


def test_an_account_directory_inside_another_customers_incoming_is_refused(host, directory, daemon):
    victim_dn, before = _victim(host, directory)
    nested = f"{host.home(VICTIM)}/incoming/3723708/chroot/./home/3723708"
    dn = directory.add("3723708", homeDirectory=nested)
    entry = request_done(directory, dn)
    assert _state(host) == before
    assert entry["sstProvisioningReturnValue"] == "14"
    daemon.wait_for(r"puts the account directory at .*/incoming/3723708; uid 3723708's place is .*"
                    r"\(return value 14, ACCOUNT_DIRECTORY_MISPLACED\)")


# ------------------------------------------------------------ delete

def test_deletes_of_one_uid_within_a_second_never_collide(host, directory, daemon):
    archive = host.layout.backup_root / "archive"
    # Earlier archives with the names of the next seconds: every delete here meets a taken name.
    now = Clock().utcnow()
    taken = [f"{VICTIM}-{utc_stamp(now + dt.timedelta(seconds=s))}" for s in range(-1, 30)]
    for name in taken:
        (archive / name / "earlier").mkdir(parents=True)
    archive.chmod(0o700)
    dn = directory.add(VICTIM)
    for round_ in range(2):
        assert_done(directory.wait_mode(dn, "added"), "added")
        (host.home(VICTIM) / f"incoming/round-{round_}").write_text("data")
        directory.request(dn, "delete", sstIsActive="FALSE")
        assert_done(directory.wait_mode(dn, "deleted"), "deleted")
        if round_ == 0:
            directory.request(dn, "add", sstIsActive="TRUE")
    new = sorted(p.name for p in archive.iterdir() if p.name not in taken)
    assert len(new) == 2 and all(name.rsplit("-", 1)[0] in taken for name in new), new
    assert sorted(name for archived in new
                  for name in os.listdir(archive / archived / f"chroot/home/{VICTIM}/incoming")) == ["round-0", "round-1"]
    assert all((archive / name / "earlier").is_dir() for name in taken)
    assert host.quota_calls()[-1] == ["-u", VICTIM, "0", "0", "0", "0", "/"]


def test_delete_with_keep_leaves_the_limit_on_data_that_stays(host, directory):
    host.set("Backup", DELETE_DATA="keep")
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(VICTIM)
        directory.wait_mode(dn, "added")
        directory.request(dn, "delete", sstIsActive="FALSE")
        assert_done(directory.wait_mode(dn, "deleted"), "deleted")
        daemon.wait_for(rf"uid={VICTIM},.*: delete: .* kept .*, quota kept \(the data stays in the jail\)")
    finally:
        assert daemon.stop() == 0
    assert host.quota_calls() == [["-u", VICTIM, "1048576", "1048576", "0", "0", "/"]]
    assert host.home(VICTIM).is_dir() and not host.rsnapshot_config(VICTIM).exists()
