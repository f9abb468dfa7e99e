"""Drift between the directory and the host: audit finds it, --repair fixes what is safe, retire, explain, resync.

Issue 21. Every kind of drift is made for real (a real slapd, the daemon,
real files): a configuration deleted, one edited by hand, a quota that is
not sstQuota (a stand-in kernel: QUOTA_REPORT_CMD prints what the recording
setquota was last told, by the daemon or by hand), an entry removed while
the daemon was down, an orphan folder made by hand, an entry of another
host, a request the daemon would refuse. The audit must find exactly those;
--repair fixes the repairable ones and nothing else; retire archives an
orphan; explain names the reason for each.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid as uuids
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning.base.finding import Expect

from helpers import DaemonProcess, Directory, Host, picture, wait_until
from jailtest import in_current_image, jail, jails, provision, tool  # noqa: F401 - jails and tool are fixtures

A, B, C, D, E, F, R = "3723701", "3723702", "3723703", "3723704", "3723705", "3723706", "3723707"
H = "3723790"                                      # an account directory made by hand: no entry at all
OTHER_HOST = "backup-02.example.org"
LDAP_ONLY = {"objectClass": ["account", "posixAccount", "shadowAccount", "sstBackup", "sstRelationship"],
             "sstProvisioningMode": None, "sstProvisioningState": None, "sstProvisioningExecutionDate": None}

# A kernel with quotas for the audit: each user's limits are those the recording setquota was last
# called with, printed as repquota -u -v -n -p does.
QUOTA_REPORT = """#!/usr/bin/python3
import os
LOG = @LOG@
limits = {}
if os.path.exists(LOG):
    for line in open(LOG):
        argv = line.rstrip("\\n").split("\\t")     # setquota -u UID SOFT HARD 0 0 MOUNTPOINT
        limits[argv[2]] = (argv[3], argv[4])
print("*** Report for user quotas on device /dev/stand-in")
print("Block grace time: 7days; Inode grace time: 7days")
print("                        Block limits                File limits")
print("User            used    soft    hard  grace    used  soft  hard  grace")
print("----------------------------------------------------------------------")
print("#0        --      20       0       0      0      2     0     0      0")
for number, (soft, hard) in sorted(limits.items()):
    print("#%-8s --       4 %7s %7s      0      1     0     0      0" % (number, soft, hard))
"""


def _command(host: Host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning", *args, "-c", str(host.config),
                           "-g", str(host.global_config)], capture_output=True, text=True, timeout=120)


def _audit(host: Host, *args: str) -> tuple[int, dict]:
    done = _command(host, "audit", "--json", *args)
    assert done.stdout, done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def _found(data: dict) -> set[tuple[str, str]]:
    return {(f["kind"], f["subject"]) for f in data["findings"]}


def _quota_kernel(host: Host) -> None:
    """Point QUOTA_REPORT_CMD at the stand-in kernel."""
    script = host.root / "bin/repquota"
    script.write_text(QUOTA_REPORT.replace("@LOG@", repr(str(host.layout.setquota_log))))
    script.chmod(0o755)
    host.set("Backup", QUOTA_REPORT_CMD=script)


def _set_quota_by_hand(host: Host, uid: str, blocks: int) -> None:
    """What an administrator's setquota does (recorded like the daemon's: the stand-in kernel's record)."""
    subprocess.run([str(host.layout.setquota), "-u", uid, str(blocks), str(blocks), "0", "0", "/"], check=True)


def _hand_made(host: Host, uid: str, marker: str | None) -> Path:
    """An account directory nobody's request made: root's, an incoming/ of the uid, a marker if given."""
    top = host.account_dir(uid)
    incoming = top / "chroot" / "home" / uid / "incoming"
    incoming.mkdir(parents=True)
    shutil.chown(incoming, int(uid), int(uid))
    incoming.chmod(0o700)
    (top / "snapshots").mkdir(mode=0o700)
    (incoming / "data").write_text("somebody's backup\n")
    if marker is not None:
        (top / ".entryUUID").write_text(marker + "\n")
        (top / ".entryUUID").chmod(0o600)
    return top


@dataclass
class Drifted:
    host: Host
    directory: Directory
    dns: dict[str, str]
    orphan_marker: str


@pytest.fixture
def drifted(host, directory) -> Drifted:
    """Every kind of drift the issue names, made on a real host."""
    _quota_kernel(host)
    daemon = DaemonProcess(host, log_name="provision.log").start()
    dns = {uid: directory.add(uid) for uid in (A, B, C, E, F, R)}
    for dn in dns.values():
        directory.wait_mode(dn, "added")
    dns[D] = directory.add(D, host=OTHER_HOST)                # another host's: left untouched
    daemon.wait_for(rf"uid={D},.*: left untouched: another host's entry")
    assert daemon.stop() == 0
    host.rsnapshot_config(A).unlink()                          # a configuration deleted
    edited = host.rsnapshot_config(B)
    edited.write_text(edited.read_text().replace("retain\tdaily\t7", "retain\tdaily\t70"))   # edited by hand
    _set_quota_by_hand(host, F, 1000)                          # a quota that is not sstQuota
    directory.conn.delete_s(dns.pop(C))                        # removed while the daemon was down
    marker = str(uuids.uuid4())
    _hand_made(host, H, marker)                                # an orphan folder nobody's entry explains
    directory.request(dns[R], "delete")                        # still active: the daemon would refuse it
    return Drifted(host, directory, dns, marker)


def _expected(d: Drifted) -> set[tuple[str, str]]:
    host = d.host
    return {("config-missing", d.dns[A]), ("config-differs", d.dns[B]), ("quota-differs", d.dns[F]),
            ("orphan-home", str(host.account_dir(C))), ("orphan-config", str(host.rsnapshot_config(C))),
            ("orphan-quota", f"quota of uidNumber {C} on /"), ("orphan-home", str(host.account_dir(H)))}


# ------------------------------------------------------------------ audit

def test_the_audit_finds_exactly_the_drift_made(drifted):
    code, data = _audit(drifted.host)
    assert code == 1, data["summary"]
    assert _found(data) == _expected(drifted)
    assert data["summary"].startswith("AUDIT DRIFT - Backup/Rsnapshot: 7 finding(s)")
    assert {f["kind"] for f in data["findings"] if f["repairable"]} == {"config-missing", "config-differs",
                                                                        "quota-differs"}
    assert data["entries"] == {"compared": 4, "present": 4, "absent": 0, "open": 1, "other_hosts": 1}
    assert data["other_hosts"] == [{"dn": drifted.dns[D], "why": f"its host is '{OTHER_HOST}', this daemon's "
                                                                 f"[Global] ENVIRONMENT is 'sandbox'"}]
    differs = next(f for f in data["findings"] if f["kind"] == "config-differs")
    assert "'retain\\tdaily\\t70', the template renders 'retain\\tdaily\\t7'" in differs["detail"]
    orphans = {f["subject"]: f for f in data["findings"] if f["kind"] == "orphan-home"}
    assert orphans[str(drifted.host.account_dir(H))]["entryUUID"] == drifted.orphan_marker
    assert all(f["retire"].endswith(f" {C}") for f in data["findings"] if f["subject"].endswith(C)
               or f["subject"].endswith(f"uidNumber {C} on /"))


def test_the_text_has_a_summary_and_one_line_per_finding(drifted):
    done = _command(drifted.host, "audit")
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and lines[0].startswith("AUDIT DRIFT - ")
    assert sum(1 for line in lines if re.match(r"^(config|quota|orphan)-\w+ ", line)) == 7
    assert f"retire it with: provisioning-daemon retire -c {drifted.host.config} {H}" in done.stdout


def test_where_quotas_cannot_be_read_the_audit_says_not_checked(host, directory):
    with DaemonProcess(host):
        directory.wait_mode(directory.add(A), "added")
    code, data = _audit(host)                       # the real repquota: this kernel has no quotas
    assert code == 0 and data["findings"] == []
    assert data["notes"] and data["notes"][0].startswith("quota not checked: ")


# ------------------------------------------------------------------ repair

def test_repair_fixes_the_repairable_and_touches_nothing_else(drifted):
    host = drifted.host
    orphans = {uid: picture(host.account_dir(uid)) for uid in (C, H)}
    orphan_config = host.rsnapshot_config(C).read_text()
    clean = {uid: picture(host.account_dir(uid)) for uid in (E, R)}
    calls = len(host.quota_calls())
    code, data = _audit(host, "--repair")
    assert code == 1                                 # the orphans are left: retire is an operator's call
    assert _found(data) == {f for f in _expected(drifted) if f[0].startswith("orphan")}
    repaired = {r["dn"]: r for r in data["repairs"]}
    assert set(repaired) == {drifted.dns[A], drifted.dns[B], drifted.dns[F]}
    assert all(r["done"] and not r["failed"] and not r["skipped"] for r in repaired.values())
    assert f"snapshot_root\t{host.account_dir(A)}/snapshots/\n" in host.rsnapshot_config(A).read_text()
    assert "retain\tdaily\t7\n" in host.rsnapshot_config(B).read_text()
    assert host.quota_calls()[calls:] == [["-u", F, "1048576", "1048576", "0", "0", "/"]]
    assert {uid: picture(host.account_dir(uid)) for uid in (C, H)} == orphans
    assert host.rsnapshot_config(C).read_text() == orphan_config
    assert {uid: picture(host.account_dir(uid)) for uid in (E, R)} == clean
    assert not host.account_dir(D).exists()          # another host's entry: nothing made for it


def test_repair_waits_for_a_request_in_hand(host, directory):
    """While a process of this host holds the entry's lock (a request of the daemon in hand), the repair
    waits for it; it then audits the entry again and repairs what is still there."""
    from provisioning.config.loader import load

    with DaemonProcess(host):
        dn = directory.add(A)
        directory.wait_mode(dn, "added")
    host.rsnapshot_config(A).unlink()
    folder = load(host.config, host.global_config).entry_lock_dir
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys
from provisioning.engine.entrylock import EntryLocks
with EntryLocks({str(folder)!r}).hold({directory.entry_uuid(dn)!r}, "a request in hand"):
    print("held", flush=True)
    sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        repair = subprocess.Popen([sys.executable, "-m", "provisioning", "audit", "--json", "--repair", "-c",
                                   str(host.config), "-g", str(host.global_config)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            repair.wait(3)                           # an audit of one account takes about a second
        assert not host.rsnapshot_config(A).exists()  # nothing repaired beside the request
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(20)
    out, _ = repair.communicate(timeout=60)
    data = json.loads(out)
    assert [r["dn"] for r in data["repairs"]] == [dn] and data["exit_code"] == 0
    assert host.rsnapshot_config(A).is_file()


# ------------------------------------------------------------------ retire

def test_retire_archives_an_orphan_and_refuses_an_active_entry(drifted):
    host = drifted.host
    refused = _command(host, "retire", E)
    assert refused.returncode == 1 and "the directory holds an active entry with uid 3723705" in refused.stderr
    assert host.account_dir(E).is_dir()
    calls = len(host.quota_calls())
    for uid in (C, H):
        done = _command(host, "retire", uid)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"the audit finds nothing of {uid} left on this host" in done.stdout
        assert not host.account_dir(uid).exists()
        (archived,) = (host.layout.backup_root / "archive").glob(f"{uid}-*")
        assert archived.is_dir() and (archived / ".entryUUID").is_file()
    assert (host.layout.backup_root / "archive").glob(f"{H}-*").__next__().joinpath(
        "chroot/home", H, "incoming/data").read_text() == "somebody's backup\n"
    assert not host.rsnapshot_config(C).exists()
    assert [c[1] for c in host.quota_calls()[calls:]] == [C, H]          # each quota lifted once
    nothing = _command(host, "retire", C)
    assert nothing.returncode == 1 and "the audit finds nothing to retire for it" in nothing.stderr


def test_an_orphan_folder_whose_marker_names_another_entry_is_not_retired(host, directory):
    """A folder at uid H's place, its owner marker copied from A's: A's data, not an orphan's."""
    with DaemonProcess(host):
        dn = directory.add(A)
        directory.wait_mode(dn, "added")
    folder = _hand_made(host, H, directory.entry_uuid(dn))
    before = picture(folder)
    code, data = _audit(host)
    assert code == 1 and [(f["kind"], f["subject"], f["name"]) for f in data["findings"]] == [
        ("home-foreign", str(folder), None)]
    assert f"its owner marker names {dn}" in data["findings"][0]["detail"]
    done = _command(host, "retire", H)
    assert done.returncode == 1 and "home-foreign" in done.stderr and f"its owner marker names {dn}" in done.stderr
    assert "home-foreign" in _command(host, "explain", H).stdout
    assert picture(folder) == before and host.account_dir(A).is_dir()


def test_an_orphan_whose_marker_names_an_entry_of_another_host_is_not_retired(host, directory):
    """The marker names an active entry the plugin never saw (another host's, another uid): refused."""
    other = directory.add(D, host=OTHER_HOST)
    folder = _hand_made(host, H, directory.entry_uuid(other))
    before = picture(folder)
    done = _command(host, "retire", H)
    assert done.returncode == 1 and f"active entry with entryUUID {directory.entry_uuid(other)}" in done.stderr
    assert picture(folder) == before


# ------------------------------------------------------------------ explain

def test_explain_names_the_reason_for_each(drifted):
    host, dns = drifted.host, drifted.dns
    said = {name: _command(host, "explain", name) for name in (dns[A], dns[B], C, dns[D], dns[E], dns[R])}
    assert "config-missing" in said[dns[A]].stdout and "[repairable: audit --repair]" in said[dns[A]].stdout
    assert "config-differs" in said[dns[B]].stdout and "line " in said[dns[B]].stdout
    assert said[C].returncode == 1 and f"{C}: no entry of that name below" in said[C].stdout
    assert re.search(rf"the store: uid={C},\S+ \(entryUUID \S+\): known; the directory no longer has it",
                     said[C].stdout)
    assert f"orphan-home {host.account_dir(C)}" in said[C].stdout
    assert f"this host's: no: its host is '{OTHER_HOST}', this daemon's [Global] ENVIRONMENT is 'sandbox'" \
        in said[dns[D]].stdout
    assert "the daemon now: nothing: it is another host's, left untouched" in said[dns[D]].stdout
    assert "audit: nothing on this host differs from the directory for it" in said[dns[E]].stdout
    assert "the store: knows the version the directory holds" in said[dns[E]].stdout
    assert "the daemon now: would refuse it with return value 101 (DELETE_WHILE_ACTIVE" in said[dns[R]].stdout
    assert all(s.returncode == 0 for name, s in said.items() if name != C)


def test_an_entry_of_another_host_is_said_once_at_info_with_both_values(host, directory):
    daemon = DaemonProcess(host).start()
    dn = directory.add(A, host="sandbox1")           # one letter more than ENVIRONMENT
    daemon.wait_for(rf"INFO {re.escape(dn)}: left untouched: another host's entry \(its host is 'sandbox1', "
                    rf"this daemon's \[Global\] ENVIRONMENT is 'sandbox'\)")
    directory.modify(dn, sstQuota="2097152")         # a change: still another host's, not said again
    daemon.wait_for(rf"DEBUG {re.escape(dn)}: another host's, left untouched")
    directory.modify(dn, host="backup-03")            # another host value: said again
    daemon.wait_for(r"its host is 'backup-03'")
    assert daemon.stop() == 0
    assert daemon.count(rf"INFO {re.escape(dn)}: left untouched") == 2


# ------------------------------------------------------------------ attacks

def test_a_planted_link_is_reported_never_followed_or_repaired(host, directory, tmp_path):
    """Where the audit and the repair look, a link to elsewhere: reported, and nothing behind it touched."""
    with DaemonProcess(host):
        for uid in (A, B):
            directory.wait_mode(directory.add(uid), "added")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    home = host.home(A)
    shutil.rmtree(home)
    home.symlink_to(victim)                           # the home: a link to another folder
    config = host.rsnapshot_config(B)
    config.unlink()
    config.symlink_to(victim / "passwd")              # the configuration: a link to a file
    before = picture(victim)
    code, data = _audit(host, "--repair")
    found = {(f["kind"], f["subject"]): f for f in data["findings"]}
    assert set(found) == {("home-unsafe", directory.dn(A))}, data["findings"]
    assert "is a symbolic link" in found[("home-unsafe", directory.dn(A))]["detail"]
    assert picture(victim) == before                  # nothing behind the links was read into or written
    assert config.is_file() and not config.is_symlink()          # the link itself replaced by the file
    assert "retain\tdaily\t7" in config.read_text()
    assert home.is_symlink() and code == 1


def test_hostile_values_are_escaped_in_the_output(host, directory):
    forged = "x\nAUDIT OK - Backup/Rsnapshot: no drift\x1b[2K"
    dn = directory.add(A, host=forged)
    lines = _command(host, "audit").stdout.splitlines()
    assert lines[0].startswith("AUDIT OK - ") and len([l for l in lines if l.startswith("AUDIT")]) == 1
    assert any("\\nAUDIT OK - Backup/Rsnapshot: no drift\\x1b[2K" in line for line in lines)
    said = _command(host, "explain", dn).stdout
    assert "\x1b" not in said and "\\x1b[2K" in said


def test_an_incomplete_directory_is_no_audit(host, directory):
    """A SERVICE_SUBTREE that does not exist is not "no entries": nothing is an orphan, exit 2."""
    with DaemonProcess(host):
        directory.wait_mode(directory.add(A), "added")
    host.set("Database", SERVICE_SUBTREE=f"ou=gone,{directory.subtree}")
    code, data = _audit(host)
    assert code == 2 and data["state"] == "unknown" and "does not exist" in data["summary"]
    assert "findings" not in data


# ------------------------------------------------------------------ exit codes, other plugins

def test_usage_is_3_and_a_plugin_that_cannot_audit_is_2(host, provisioning_service):
    assert _command(host, "audit", "--no-such-option").returncode == 3
    assert _command(host, "explain").returncode == 3
    files = provisioning_service("Generic/Exec", {"Exec": {"ADD_CMD": "/bin/true"}})
    done = subprocess.run([sys.executable, "-m", "provisioning", "audit", "-c", str(files.config), "-g",
                           str(files.global_config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout.startswith("AUDIT UNKNOWN - Generic/Exec: Generic/Exec cannot audit"), done.stdout


# ------------------------------------------------------------------ resync

def test_resync_refreshes_in_full_and_redoes_nothing(host, directory):
    host.set("Service", MODUS="LDAP")
    daemon = DaemonProcess(host).start()
    for uid in (A, B, E):
        directory.add(uid, **LDAP_ONLY)
    daemon.wait_for(r": add done in", count=3)
    calls = len(host.quota_calls())
    asked = _command(host, "resync")
    assert asked.returncode == 0 and f"the daemon (process {daemon.proc.pid}) starts it" in asked.stdout
    daemon.wait_for(r"the full refresh asked for with provisioning-daemon resync is done")
    daemon.wait_for(r"synchronising .* \(full refresh\)")
    one = _command(host, "resync", "--entry", directory.dn(A))
    assert one.returncode == 0
    daemon.wait_for(rf"uid={A},.*: judged again against the store \(provisioning-daemon resync\)")
    assert daemon.stop() == 0
    assert len(host.quota_calls()) == calls and daemon.count(r": add done in") == 3
    assert daemon.count(r": modify \(MODUS LDAP") == 0
    outside = _command(host, "resync", "--entry", "uid=1,ou=elsewhere,dc=example")
    assert outside.returncode == 3 and "not below SERVICE_SUBTREE" in outside.stderr


def test_resync_goes_through_the_deletion_brake(host, directory):
    """A full refresh asked for while the daemon was down, after most entries went: nothing is deleted."""
    host.set("Service", MODUS="LDAP")
    uids = [str(3723710 + n) for n in range(8)]
    daemon = DaemonProcess(host, log_name="provision.log").start()
    dns = [directory.add(uid, **LDAP_ONLY) for uid in uids]
    daemon.wait_for(r": add done in", count=len(uids))
    assert daemon.stop() == 0
    for dn in dns[:7]:
        directory.conn.delete_s(dn)
    assert _command(host, "resync").returncode == 0
    again = DaemonProcess(host, log_name="again.log").start()
    again.wait_for(r"a full refresh was asked for \(provisioning-daemon resync\)")
    again.wait_for(r"the deletion brake holds 7 removal\(s\)")
    assert again.stop() == 0
    assert all(host.account_dir(uid).is_dir() and host.rsnapshot_config(uid).is_file() for uid in uids)
    assert again.count(r": add done in") == 0


# ------------------------------------------------------------------ the daemon's own audit

def test_the_daemon_audits_itself_and_serves_the_drift(host, directory):
    from test_mail import free_port
    import urllib.request

    port = free_port()
    host.set("Service", AUDIT_INTERVAL=0.5, METRICS_PORT=port)
    daemon = DaemonProcess(host).start()
    directory.wait_mode(directory.add(A), "added")
    host.rsnapshot_config(A).unlink()

    def drift() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r'^provisioning_drift\{kind="([^"]+)"\} (\S+)$', text, re.M)}
    wait_until(lambda: drift() == {"config-missing": 1.0}, "the drift in the metrics")
    daemon.wait_for(r"WARNING audit: AUDIT DRIFT - Backup/Rsnapshot: 1 finding\(s\) \(1 config-missing\)")
    assert daemon.stop() == 0
    assert host.rsnapshot_config(A).exists() is False            # it never repairs


def test_the_digest_is_mailed_when_the_drift_changes(host, directory):
    from provisioning.config.loader import load
    from provisioning.runtime.auditjob import AuditJob

    class Mails:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str]] = []

        def warning(self, subject: str, text: str, dn: str | None = None) -> None:
            self.sent.append((subject, text))

    with DaemonProcess(host):
        directory.wait_mode(directory.add(A), "added")
    mails = Mails()
    job = AuditJob(load(host.config, host.global_config), 3600, alerts=mails)
    assert job.once().state == 0 and mails.sent == []                 # clean: nothing to say
    host.rsnapshot_config(A).unlink()
    assert job.once().counts == {"config-missing": 1}
    job.once()                                                          # the same drift: not again
    assert [subject for subject, _ in mails.sent] == ["audit: 1 finding(s) of drift"]
    assert f"config-missing {directory.dn(A)}" in mails.sent[0][1]
    assert _command(host, "audit", "--repair").returncode == 0
    assert job.once().counts == {}
    assert [subject for subject, _ in mails.sent][-1] == "audit: no drift any more"


def test_what_a_done_delete_left_is_found_and_retired(host, directory):
    with DaemonProcess(host):
        dn = directory.add(A)
        directory.wait_mode(dn, "added")
        kept = host.rsnapshot_config(A).read_text()
        directory.request(dn, "delete", sstIsActive="FALSE")
        directory.wait_mode(dn, "deleted")
    host.rsnapshot_config(A).write_text(kept)        # put back by hand
    code, data = _audit(host)
    assert code == 1 and _found(data) == {("left-after-delete", str(host.rsnapshot_config(A)))}
    assert "its delete request was done, yet its rsnapshot configuration is here" in data["findings"][0]["detail"]
    done = _command(host, "retire", A)                # the entry is inactive: retire may act
    assert done.returncode == 0, done.stderr
    assert not host.rsnapshot_config(A).exists() and _audit(host)[0] == 0


# ------------------------------------------------------------------ jails

@pytest.mark.skipif(os.geteuid() != 0, reason="builds jails: needs root")
def test_a_stale_jail_is_found_and_moved_to_the_current_image(jails, directory, tool):
    with DaemonProcess(jails):
        provision(directory, [A, B])
    program = str(tool).lstrip("/")
    copy = jail(jails, A) / (program + ".copy")
    shutil.copy2("/usr/bin/false", copy)
    os.replace(copy, jail(jails, A) / program)       # a copy where the image's file belongs: stale
    assert not in_current_image(jails, A, program)
    code, data = _audit(jails)
    assert code == 1 and _found(data) == {("jail-stale", directory.dn(A))}, data["findings"]
    other = picture(jail(jails, B))
    done = _command(jails, "audit", "--repair")
    assert done.returncode == 0, done.stdout
    assert in_current_image(jails, A, program) and picture(jail(jails, B)) == other


# ------------------------------------------------------------------ the parts, without servers

REPQUOTA = """*** Report for user quotas on device /dev/vdb1
Block grace time: 7days; Inode grace time: 7days
                        Block limits                File limits
User            used    soft    hard  grace    used  soft  hard  grace
----------------------------------------------------------------------
#0        --      20       0       0      0      2     0     0      0
#3723707  +-  1048577 1048576 1048576 1700000000      5     0     0      0
#3723708  --       0       0       0      0      0     0     0      0
"""


def test_the_quota_report_is_read_as_repquota_prints_it():
    from provisioning_backup_rsnapshot.quotareport import Limit, parse, report_argv, run

    assert parse(REPQUOTA) == {0: Limit(0, 0), 3723707: Limit(1048576, 1048576), 3723708: Limit(0, 0)}
    assert report_argv("/usr/sbin/repquota", "/srv") == ["/usr/sbin/repquota", "-u", "-v", "-n", "-p", "/srv"]
    assert run("/nonexistent/repquota", "/")["why"].startswith("/nonexistent/repquota cannot be run")


def test_a_quota_report_of_100000_users_is_read_whole(tmp_path):
    """More than the transport keeps of a command's output (a bounded tail): read where it runs."""
    from provisioning_backup_rsnapshot.quotareport import of, run

    report = tmp_path / "report"
    report.write_text("".join(f"#{4_100_000 + n:<8} --       4 1048576 1048576      0      1     0     0      0\n"
                              for n in range(100_000)))
    script = tmp_path / "repquota"
    script.write_text(f"#!/bin/sh\nexec cat {report}\n")
    script.chmod(0o755)
    limits = of(run(str(script), "/")).limits
    assert len(limits) == 100_000 and limits[4_100_000].hard == 1048576 and limits[4_199_999].soft == 1048576


def test_the_host_pass_reports_a_link_and_never_looks_behind_it(tmp_path):
    from provisioning_backup_rsnapshot import auditcalls

    root = tmp_path / "backup"
    account = root / "7" / "707" / "723" / "3723707"
    (account / "chroot").mkdir(parents=True)
    behind = tmp_path / "behind"
    (behind / "3723707" / "incoming").mkdir(parents=True)
    (account / "chroot" / "home").symlink_to(behind)
    (account / ".entryUUID").write_text("f9b99f86-8654-1041-909a-47df364ee9f6\n")
    found = auditcalls.accounts(str(root), "7")
    (record,) = found["accounts"]
    assert record["marker"] == "f9b99f86-8654-1041-909a-47df364ee9f6"
    assert record["nodes"]["chroot/home"][0] == "symbolic link"
    assert record["nodes"]["chroot/home/3723707"] is None            # behind the link: not looked at
    assert record["nodes"]["chroot/home/3723707/incoming"] is None
    assert auditcalls.accounts(str(root), "7", "3723707")["accounts"][0]["uid"] == "3723707"
    assert auditcalls.accounts(str(root), "7", "../x")["accounts"] == []


def test_a_config_that_is_a_link_is_not_read(tmp_path):
    from provisioning_backup_rsnapshot import auditcalls

    (tmp_path / "secret").write_text("not a configuration\n")
    (tmp_path / "rsnapshot.conf.3723707").symlink_to(tmp_path / "secret")
    (tmp_path / "rsnapshot.conf.3723708").write_text("x")
    assert auditcalls.configs(str(tmp_path), "rsnapshot.conf.", "") == {
        "3723707": ["symbolic link", None],
        "3723708": ["regular file", "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"]}


def test_what_an_entry_expects_and_how_a_name_is_searched():
    from provisioning.base.entry import Entry
    from provisioning.engine.audit import expectation, name_of, search_filter

    def entry(**values):
        return Entry.from_values("uid=1,ou=x", {k: [v] for k, v in values.items()})

    done = entry(sstProvisioningMode="added", sstProvisioningState="20261207T064129Z",
                 sstProvisioningExecutionDate="0")
    assert expectation(done, "selfcare") is Expect.PRESENT
    assert expectation(entry(sstProvisioningMode="deleted", sstProvisioningState="20261207T064129Z",
                             sstProvisioningExecutionDate="0"), "combined") is Expect.ABSENT
    assert expectation(entry(sstProvisioningMode="add", sstProvisioningState="0",
                             sstProvisioningExecutionDate="0"), "selfcare") is Expect.OPEN
    assert expectation(entry(uid="1"), "combined") is Expect.PRESENT          # no request: MODUS LDAP's rule
    assert name_of("uid=3723707,ou=accounts,dc=x") == ("uid", "3723707")
    assert name_of("3723707") == ("uid", "3723707")
    assert search_filter("(objectClass=*)", "*)(|(cn") == r"(&(objectClass=*)(uid=\2a\29\28|\28cn))"
    with pytest.raises(ValueError):
        name_of("uid=1+cn=2,ou=x")


def test_a_host_account_keeps_its_nodes_packed():
    from provisioning_backup_rsnapshot.hostpicture import _account

    record = {"uid": "3723707", "path": "/b/7/707/723/3723707", "dir": ["directory", 0, 0, 0o755],
              "nodes": {"chroot": ["directory", 0, 0, 0o755], "snapshots": ["symbolic link", 1000, 1000, 0o777]},
              "marker": None}
    account = _account(record)
    assert account.node("").describe() == "a directory owned by 0:0, mode 0755"
    assert account.node("snapshots").is_link and account.node("snapshots").uid == 1000
    assert account.node("chroot/home") is None and account.knows("chroot/home/3723707/incoming")
    assert not account.knows("elsewhere")
