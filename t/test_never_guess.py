"""Never act on a guess: removals are judged only against what the store mirrors, and bulk ones wait.

Issue "Never act on a guess", items 1 and 2: a changed SERVICE_SUBTREE (or
filter, or directory) is a fresh mirror, not "every account was removed";
an answer that is not whole is no removal; and removals in bulk are held by
the deletion brake until an operator decides (provisioning-daemon deletions).
"""
from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
from pathlib import Path

import ldap
import pytest

from provisioning.backend.ldap import Directory as LdapDirectory
from provisioning.backend.ldap import DirectoryError, LdapSettings, SubtreeMissing
from provisioning.base.secret import Secret
from provisioning.testing import BACKUP_BASE, make_subtree

from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from helpers import DaemonProcess, Directory, Host

# An account without the selfcare attributes (and so without their object class): MODUS LDAP.
LDAP_ONLY = {"objectClass": ["account", "posixAccount", "shadowAccount", "sstBackup", "sstRelationship"],
             "sstProvisioningMode": None, "sstProvisioningState": None, "sstProvisioningExecutionDate": None}


def _uids(count: int, first: int = 3723701) -> list[str]:
    return [str(first + n) for n in range(count)]


def _provision(host, directory, uids: list[str], log_name: str = "provision.log") -> list[str]:
    """Add the accounts in MODUS LDAP with a daemon that then stops; their DNs."""
    daemon = DaemonProcess(host, log_name=log_name).start()
    dns = [directory.add(uid, **LDAP_ONLY) for uid in uids]
    daemon.wait_for(r": add done in", count=len(uids))
    assert daemon.stop() == 0
    return dns


def _intact(host, uid: str) -> bool:
    """The account was not deleted: home, configuration, no archive."""
    archive = host.layout.backup_root / "archive"
    archived = list(archive.glob(f"{uid}-*")) if archive.exists() else []
    return host.home(uid).is_dir() and host.rsnapshot_config(uid).is_file() and not archived


def _deleted(host, uid: str) -> bool:
    return not host.account_dir(uid).exists() and not host.rsnapshot_config(uid).exists()


def _command(host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", *args, "-c", str(host.config),
                           "-g", str(host.global_config)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def ldap_host(host):
    host.set("Service", MODUS="LDAP")
    return host


# ------------------------------------------------------------------- the mirror

def test_a_changed_subtree_with_the_cookie_removed_deletes_nothing(ldap_host, directory, slapd, subtree):
    """The issue's case: SERVICE_SUBTREE pointed elsewhere and COOKIE_FILE removed, as the README offered."""
    host = ldap_host
    uids = _uids(3)
    _provision(host, directory, uids)
    other = make_subtree(slapd, subtree.split(",")[0].split("=")[1] + "-other", BACKUP_BASE)
    elsewhere = Directory(slapd, other, host.layout.backup_root)
    elsewhere.add("3723799", **LDAP_ONLY)
    host.set("Database", SERVICE_SUBTREE=other)
    Path(host.service["Database"]["COOKIE_FILE"]).unlink()
    daemon = DaemonProcess(host, log_name="moved.log").start()
    daemon.wait_for(r"uid=3723799,.*: add done in")
    assert daemon.stop() == 0
    text = daemon.text()
    assert re.search(r"ERROR .*SERVICE_SUBTREE was ou=.*, is ou=.*-other.*Starting a fresh mirror .*none of the 3 "
                     r"entr\(y/ies\) the store knew is taken as removed", text), text[-3000:]
    assert "delete" not in "".join(line for line in text.splitlines() if "uid=37237" in line)
    for uid in uids:
        assert _intact(host, uid), uid


def test_a_changed_filter_is_a_fresh_mirror_and_deletes_nothing(ldap_host, directory):
    host = ldap_host
    uids = _uids(3)
    _provision(host, directory, uids)
    host.set("Database", SEARCH_FILTER="(&(entryCSN>=%entryCSN%)(objectClass=sstBackup)(uid=3723701))")
    daemon = DaemonProcess(host, log_name="filtered.log").start()
    assert daemon.stop() == 0
    assert "SEARCH_FILTER was (&(entryCSN>=%entryCSN%)(objectClass=*)), is" in daemon.text()
    assert daemon.count(r": delete") == 0
    for uid in uids:
        assert _intact(host, uid)


def test_a_subtree_rebuilt_with_new_entryuuids_is_not_taken_for_removed(ldap_host, directory, subtree):
    """The subtree deleted and loaded again from an LDIF without entryUUIDs while the daemon was down:
    the same accounts, every entryUUID new. Not seven deletions and seven new empty homes: a fresh
    mirror, whose adds the accounts' ownership markers refuse (13) until an operator says they are
    the same accounts."""
    host = ldap_host
    uids = _uids(7)
    dns = _provision(host, directory, uids)
    for uid in uids:
        (host.home(uid) / "keep-me").write_text("customer data\n")
    for dn in dns:
        directory.conn.delete_s(dn)
    directory.conn.delete_s(subtree)
    directory.conn.add_s(subtree, [("objectClass", [b"organizationalUnit"]),
                                   ("ou", [subtree.split(",")[0].split("=")[1].encode()])])
    for uid in uids:
        directory.add(uid, **LDAP_ONLY)
    daemon = DaemonProcess(host, log_name="rebuilt.log").start()
    daemon.wait_for(r": add failed with return value 13", count=len(uids))
    assert daemon.stop() == 0
    assert re.search(r"SERVICE_SUBTREE's entry \(its entryUUID\) was \S+, is \S+", daemon.text())
    assert daemon.count(r": delete") == 0
    for uid in uids:
        assert (host.home(uid) / "keep-me").read_text() == "customer data\n"


def test_a_store_of_an_earlier_version_with_entries_outside_the_subtree_is_a_fresh_mirror(
        ldap_host, directory, slapd, subtree):
    """A store that never recorded its search: the DNs of its entries tell it mirrored another subtree."""
    import sqlite3
    host = ldap_host
    uids = _uids(3)
    _provision(host, directory, uids)
    store = Path(f'{host.service["Database"]["COOKIE_FILE"]}.sqlite')
    db = sqlite3.connect(store)
    db.execute("DELETE FROM meta WHERE key='mirror'")       # as an earlier version left it
    db.commit()
    db.close()
    other = make_subtree(slapd, subtree.split(",")[0].split("=")[1] + "-new", BACKUP_BASE)
    host.set("Database", SERVICE_SUBTREE=other)
    daemon = DaemonProcess(host, log_name="upgraded.log").start()
    assert daemon.stop() == 0
    assert re.search(r"the store knows 3 entr\(y/ies\) outside SERVICE_SUBTREE", daemon.text())
    assert daemon.count(r": delete") == 0
    for uid in uids:
        assert _intact(host, uid)


_LIMITED = itertools.count()


def _size_limited_bind(slapd, size: int) -> tuple[str, str]:
    """A bind DN of this test's own whose searches slapd stops after ``size`` entries (olcLimits)."""
    dn, password = f"cn=limited-{next(_LIMITED)}-{id(slapd)},{slapd.suffix}", "limited-secret"
    conn = slapd.connect()
    try:
        conn.add_s(dn, [("objectClass", [b"organizationalRole", b"simpleSecurityObject"]),
                        ("cn", [dn.split(",")[0][3:].encode()]), ("userPassword", [password.encode()])])
        conn.modify_s("olcDatabase={1}mdb,cn=config",
                      [(ldap.MOD_ADD, "olcLimits", [f'dn.exact="{dn}" size={size}'.encode()])])
    finally:
        conn.unbind_s()
    return dn, password


def _directory(slapd, bind: tuple[str, str] | None = None) -> LdapDirectory:
    dn, password = bind or (slapd.root_dn, slapd.root_pw)
    directory = LdapDirectory(LdapSettings([slapd.ldap_uri], dn, Secret(password)))
    directory.open()
    return directory


def test_a_missing_base_is_no_answer_not_an_empty_one(slapd, subtree):
    """existing_uuids() said "none of them exists" for a base that does not exist."""
    directory = _directory(slapd)
    try:
        with pytest.raises(SubtreeMissing):
            directory.existing_uuids(f"ou=gone,{subtree}", ["6c0ee9a4-3a4c-103f-8f5e-6f1a0b8f2f10"])
    finally:
        directory.close()


def test_a_size_limited_answer_is_no_answer(slapd, directory, subtree):
    """A size limit cut the check short: that is not "the others are gone"."""
    uuids = []
    for uid in _uids(3):
        uuids.append(directory.entry_uuid(directory.add(uid, **LDAP_ONLY)))
    checker = _directory(slapd, _size_limited_bind(slapd, 2))
    try:
        with pytest.raises(DirectoryError, match="Size limit exceeded"):
            checker.existing_uuids(subtree, uuids)
    finally:
        checker.close()


@pytest.mark.slow
def test_a_refresh_cut_by_a_size_limit_deletes_nothing(tmp_path):
    """The daemon's bind may read only 2 entries at a time: the refresh never ends, nothing is judged gone.

    On a slapd of its own: a sync search cut by a size limit has crashed
    OpenLDAP 2.5's syncprov later on (a segfault seen once), which must not
    take the session's slapd with it.
    """
    server = StoneySlapd(rundir=str(tmp_path / "slapd"))
    server.start()
    try:
        host = Host(tmp_path / "host", server, ACCOUNTS_BASE).set("Service", MODUS="LDAP")
        directory = Directory(server, ACCOUNTS_BASE, host.layout.backup_root)
        uids = _uids(5)
        dns = _provision(host, directory, uids)
        directory.conn.delete_s(dns[0])
        Path(host.service["Database"]["COOKIE_FILE"]).unlink()          # a full refresh
        dn, password = _size_limited_bind(server, 2)
        host.set("Database", ADMIN_USER=dn, ADMIN_PASSWORD=password)
        host.set_global("Global", ATTEMPTS="1", SLEEP="0")
        daemon = DaemonProcess(host, log_name="limited.log").start(wait_ready=False)
        daemon.wait_for(r"Size limit exceeded")
        daemon.kill()
        assert daemon.count(r": delete") == 0
        for uid in uids:
            assert _intact(host, uid)
    finally:
        server.stop()


@pytest.mark.parametrize("failure", [DirectoryError("search refused: Referral"),
                                     SubtreeMissing("ou=accounts does not exist")], ids=["referral", "missing"])
def test_an_unanswered_check_of_the_present_phase_removes_nothing(ldap_host, directory, failure, caplog):
    """The check of the entries a refresh did not name fails: none is taken for removed, the daemon goes on."""
    from test_daemon_steps import _service, _steps_until
    from provisioning.cli import build_daemon

    host = ldap_host
    uids = _uids(3)
    dns = _provision(host, directory, uids)
    directory.conn.delete_s(dns[0])
    Path(host.service["Database"]["COOKIE_FILE"]).unlink()          # a full refresh: the present phase

    def refuse(*_):
        raise failure
    config, service = _service(host)
    daemon = build_daemon(config, service)
    daemon.directory.existing_uuids = refuse
    caplog.set_level(logging.INFO)
    try:
        daemon.start()
        _steps_until(daemon, lambda: not daemon.in_refresh, "the refresh")
        _steps_until(daemon, lambda: not daemon.waiting, "the refresh's work")
    finally:
        daemon.shutdown()
    assert "cannot check the 1 entr(y/ies) the refresh did not name" in caplog.text
    assert "delete" not in caplog.text
    assert _intact(host, uids[0])


# ---------------------------------------------------------------- the brake

def test_25_of_30_removed_while_down_are_held_until_approved(ldap_host, directory):
    """The issue's test: nothing deleted, one warning naming 25, approve: 25 deleted once."""
    host = ldap_host
    uids = _uids(30)
    dns = _provision(host, directory, uids)
    for dn in dns[:25]:
        directory.conn.delete_s(dn)
    daemon = DaemonProcess(host, log_name="braked.log").start()
    daemon.wait_for(r"WARNING .*the deletion brake holds 25 removal\(s\)")
    assert daemon.count(r"deletion brake holds") == 1
    for uid in uids:
        assert _intact(host, uid), uid

    status = _command(host, "status")
    assert status.returncode == 2, status.stdout
    assert "25 removal(s) held by the deletion brake" in status.stdout
    listed = _command(host, "deletions", "--list")
    assert listed.returncode == 0 and listed.stdout.count("uid=37237") == 25, listed.stdout

    approved = _command(host, "deletions", "--approve", "--all")
    assert approved.returncode == 0, approved.stderr
    assert "25 removal(s) approved for deletion; the daemon (process" in approved.stdout
    daemon.wait_for(r"delete done for the removed entry", count=25)
    assert daemon.stop() == 0
    for uid in uids[:25]:
        assert _deleted(host, uid), uid
    for uid in uids[25:]:
        assert _intact(host, uid), uid
    again = DaemonProcess(host, log_name="again.log").start()     # once: nothing at the next start
    assert again.stop() == 0
    assert again.count(r"delete") == 0
    assert "no removal is held" in _command(host, "deletions").stdout


def test_removals_in_a_burst_while_running_are_held_and_kept_on_request(ldap_host, directory):
    """An ldapdelete of many accounts while the daemon runs: held within the window; --keep keeps the data."""
    host = ldap_host
    host.set("Service", DELETION_BRAKE_WINDOW="2")
    uids = _uids(20)
    dns = _provision(host, directory, uids)
    daemon = DaemonProcess(host, log_name="burst.log").start()
    for dn in dns[:8]:
        directory.conn.delete_s(dn)
    daemon.wait_for(r"the deletion brake holds 8 removal\(s\)")
    directory.conn.delete_s(dns[8])                   # while others are held, it joins them
    daemon.wait_for(r"the deletion brake holds 1 removal\(s\) .*; 9 held in all")
    kept = _command(host, "deletions", "--keep", dns[0], "--all")
    assert kept.returncode == 0, kept.stderr
    daemon.wait_for(r"removal kept by an operator", count=9)
    assert "no removal is held" in _command(host, "deletions").stdout
    directory.conn.delete_s(dns[9])                   # one alone, nothing held: not braked
    daemon.wait_for(rf"uid={uids[9]},.*: delete done for the removed entry")
    assert daemon.stop() == 0
    for uid in uids[:9]:
        assert _intact(host, uid), uid
    assert _deleted(host, uids[9])


def test_a_few_removals_are_not_braked(ldap_host, directory):
    host = ldap_host
    uids = _uids(10)
    dns = _provision(host, directory, uids)
    for dn in dns[:5]:                                # five: not more than DELETION_BRAKE_COUNT
        directory.conn.delete_s(dn)
    daemon = DaemonProcess(host, log_name="few.log").start()
    daemon.wait_for(r"delete done for the removed entry", count=5)
    assert daemon.stop() == 0
    assert daemon.count(r"deletion brake holds") == 0


def test_selfcare_delete_requests_are_never_held(host, directory):
    """Removed with their delete requests open while the daemon was down: the customer asked."""
    uids = _uids(8)
    daemon = DaemonProcess(host, log_name="selfcare.log").start()
    dns = [directory.add(uid) for uid in uids]
    for dn in dns:
        directory.wait_mode(dn, "added")
    host.fail_quota(6)                                # the daemon sees the delete requests; they fail
    for dn in dns:
        directory.request(dn, "delete", sstIsActive="FALSE")
    for dn in dns:
        directory.wait_return_value(dn, 6)
    assert daemon.stop() == 0
    Path(f"{host.layout.setquota_log}.exit").unlink()
    for dn in dns:
        directory.conn.delete_s(dn)
    again = DaemonProcess(host, log_name="again.log").start()
    again.wait_for(r"delete done for the removed entry", count=8)
    assert again.stop() == 0
    assert again.count(r"deletion brake") == 0


def test_deletions_refuses_what_is_not_held(ldap_host, directory):
    host = ldap_host
    _provision(host, directory, _uids(1))
    answer = _command(host, "deletions", "--approve", "uid=nobody,ou=nowhere")
    assert answer.returncode == 6
    assert "uid=nobody,ou=nowhere: not held by the deletion brake" in answer.stderr
    usage = _command(host, "deletions", "--approve")
    assert usage.returncode == 2 and "--all" in usage.stderr


def test_a_removal_while_running_of_an_entry_older_than_the_session_is_seen(ldap_host, directory):
    """SEARCH_FILTER's %entryCSN% cut at the cookie kept syncprov from sending this removal at all."""
    host = ldap_host
    dn = _provision(host, directory, ["3723707"])[0]
    daemon = DaemonProcess(host, log_name="running.log").start()
    directory.conn.delete_s(dn)
    daemon.wait_for(r"uid=3723707,.*: delete done for the removed entry")
    assert daemon.stop() == 0
    assert _deleted(host, "3723707")
