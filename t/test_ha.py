"""Two daemons on one subtree (an HA pair): each request done exactly once, none left claimed.

A daemon is killed (-9) while it holds a claim; its command dies with it.
Restarted on the same host, it resumes its own claim at once; when it does
not come back, the other daemon takes the claim over once the lease ran out.
"""
from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections import Counter

import pytest

import ldap
import ldap.modlist

from provisioning.engine.entrylock import Done, EntryLocks
from provisioning.engine.protocol import RECHECK
from provisioning.sandbox.layout import REPO

from faults import PauseAt
from helpers import DaemonProcess, Host, account_attrs, wait_until

pytestmark = pytest.mark.with_workers

REQUESTS = 200


def _twin(host: Host, name: str) -> Host:
    """A second daemon for the same subtree and the same backup host, with its own state files."""
    twin = Host(host.layout.root.parent / name, host.slapd, host.subtree)
    twin.service = {section: dict(keys) for section, keys in host.service.items()}
    twin.set("Database", COOKIE_FILE=twin.layout.cookie)
    twin.global_ = {section: dict(keys) for section, keys in host.global_.items()}
    twin.write()
    return twin


def _add(directory, uids) -> None:
    for uid in uids:
        directory.conn.add_s(directory.dn(uid), ldap.modlist.addModlist(account_attrs(uid, directory.backup_root)))


def _states(directory) -> Counter:
    found = directory.conn.search_s(directory.subtree, ldap.SCOPE_ONELEVEL, "(uid=*)",
                                    ["sstProvisioningMode", "sstProvisioningReturnValue"])
    return Counter((a["sstProvisioningMode"][0].decode(), a.get("sstProvisioningReturnValue", [b"-"])[0].decode())
                   for _, a in found)


def _holder(directory, dn: str, daemons: list[DaemonProcess]) -> DaemonProcess:
    """The daemon whose claim is on ``dn`` (by the pid in sstProvisioningExecutionTime)."""
    values = [v for v in directory.get_all(dn).get("sstProvisioningExecutionTime", []) if v.startswith("claim: ")]
    pid = int(values[0].split()[2])
    return next(d for d in daemons if d.proc.pid == pid)


def _claimed_by(directory, pid: int, open_only: bool = True) -> set[str]:
    """uids claimed by process ``pid`` that have no outcome (``open_only``), or whose claim it was."""
    wanted = "(&(sstProvisioningState=0)(!(sstProvisioningReturnValue=*)))" if open_only else "(uid=*)"
    found = directory.conn.search_s(directory.subtree, ldap.SCOPE_ONELEVEL, wanted,
                                    ["uid", "sstProvisioningExecutionTime"])
    return {a["uid"][0].decode() for _, a in found
            if any(v.decode().startswith("claim: ") and v.decode().split()[2] == str(pid)
                   for v in a.get("sstProvisioningExecutionTime", []))}


def _paused_chroot(host: Host, uid: str) -> PauseAt:
    (host.layout.root / "stand-ins").mkdir(exist_ok=True)
    pause = PauseAt(host.layout.root / "stand-ins", "create-chroot", when=uid,
                    then=str(REPO / "bin/prov-backup-create-home"))
    host.set("Backup", CREATE_CHROOT_CMD=pause.command)
    return pause


def test_one_of_two_daemons_killed_and_restarted_mid_burst(host, directory, report):
    uids = [str(3750000 + i) for i in range(REQUESTS)]
    victim = uids[REQUESTS // 2]
    pause = _paused_chroot(host, victim)
    twin = _twin(host, "twin")
    daemons = [DaemonProcess(host).start(), DaemonProcess(twin).start()]
    _add(directory, uids)
    pause.wait_paused(60)                          # one daemon is inside the victim's command
    killed = _holder(directory, directory.dn(victim), daemons)
    in_flight = REQUESTS - len(host.quota_calls())
    killed.kill()                                  # kill -9 of the daemon; its commands die with it
    # What it had in hand: claimed by it, no outcome. Nothing changes them until
    # it restarts (the other daemon waits for the lease of a claim it saw live).
    in_hand = _claimed_by(directory, killed.proc.pid)
    assert victim in in_hand and len(in_hand) <= max(1, Host.default_workers or 1)
    pause.release()
    survivor = daemons[1 - daemons.index(killed)]
    again = DaemonProcess(killed.host, log_name="restarted.log").start()
    wait_until(lambda: _states(directory).get(("added", "0"), 0) == REQUESTS, f"all {REQUESTS} done", 120)
    assert survivor.stop() == 0 and again.stop() == 0
    quota = Counter(c[1] for c in host.quota_calls())
    assert set(quota) == set(uids)
    # Each request done once; only work in hand at the kill may have run a command again.
    assert all(n == 1 for uid, n in quota.items() if uid not in in_hand), quota
    assert all(quota[uid] <= 2 for uid in in_hand)
    assert _states(directory) == Counter({("added", "0"): REQUESTS})     # none left claimed, none failed
    # Each taken over once, by one daemon or the other (both may try: the claim decides).
    taken = r"uid={},.*: add request claimed \(sstProvisioningMode: adding -> adding\)"
    # An outcome the killed daemon had sent before the kill may reach slapd after in_hand was read:
    # its entry still carries that daemon's claim, and nobody had to take it over.
    answered_by_the_killed = _claimed_by(directory, killed.proc.pid, open_only=False)
    for uid in in_hand:
        times = again.count(taken.format(uid)) + survivor.count(taken.format(uid))
        assert times == 1 or (times == 0 and uid in answered_by_the_killed), (uid, times)
    report(f"HA pair, one daemon killed -9 and restarted in 200 requests (WORKERS {Host.default_workers})",
           in_flight=in_flight, in_hand_at_kill=len(in_hand), lost=0, done_twice=0,
           commands_run_again=sum(quota[uid] - 1 for uid in in_hand), left_claimed=0)


def test_a_claim_of_a_daemon_that_does_not_come_back_is_taken_over_after_the_lease(host, directory):
    uid = "3723707"
    pause = _paused_chroot(host, uid)
    # The paused command is killed at COMMAND_TIMEOUT: the second daemon must start and see the claim
    # before that (1 s was too short for a loaded machine: the request had failed by then).
    host.set("Service", NODE_NAME="backup-a", COMMAND_TIMEOUT=5, CLAIM_LEASE=7)
    twin = _twin(host, "twin")
    twin.set("Service", NODE_NAME="backup-b")
    first = DaemonProcess(host).start()
    directory.add(uid)
    pause.wait_paused()
    second = DaemonProcess(twin).start()
    second.wait_for(rf"uid={uid},.*: adding: claimed by backup-a process {first.proc.pid} at \d+T\d+Z; "
                    rf"taken over if still open at \d+T\d+Z")
    wait_until(lambda: host.quota_calls(), "backup-a's setquota beside the paused script")
    first.kill()                                   # backup-a never comes back
    pause.release()
    second.wait_for(rf"uid={uid},.*: resuming add: adding without an outcome, claimed by backup-a .*; "
                    rf"its lease ran out", timeout=30)
    directory.wait_mode(directory.dn(uid), "added")
    assert second.stop() == 0
    assert [c[1] for c in host.quota_calls()] == [uid, uid]     # backup-a's, and the takeover's
    assert not re.search("resuming", first.text())


def _live_claim(directory, uid: str, node: str) -> tuple[str, subprocess.Popen]:
    """An add request claimed by ``node`` process <a sleep of ours, alive>, no outcome: its DN and the sleep."""
    sleeper = subprocess.Popen(["sleep", "600"])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dn = directory.add(uid, sstProvisioningMode="adding",
                       sstProvisioningExecutionTime=f"claim: {node} {sleeper.pid} {stamp}")
    return dn, sleeper


def test_a_claim_of_another_daemon_of_this_host_that_dies_is_resumed_without_waiting_for_the_lease(
        host, directory):
    """A live claim of another process of this host is looked at again every RECHECK seconds: once that
    process is gone, the request is resumed (before: only when the lease of an hour ran out)."""
    host.set("Service", NODE_NAME="backup-a")
    dn, sleeper = _live_claim(directory, "3723801", "backup-a")
    try:
        with DaemonProcess(host) as daemon:
            daemon.wait_for(rf"uid=3723801,.*: adding: claimed by backup-a process {sleeper.pid} at \d+T\d+Z; "
                            r"taken over if still open at \d+T\d+Z")
            assert not host.quota_calls()                # alive: waited for
            sleeper.kill()
            sleeper.wait()
            daemon.wait_for(rf"uid=3723801,.*: resuming add: adding without an outcome, claimed by backup-a process "
                            rf"{sleeper.pid} at \d+T\d+Z, which no longer runs", timeout=3 * RECHECK)
            directory.wait_mode(dn, "added")
    finally:
        sleeper.kill()
    assert [c[1] for c in host.quota_calls()] == ["3723801"]


def test_a_claim_whose_work_this_host_recorded_as_done_gets_its_outcome_without_the_work(host, directory, tmp_path):
    """Another daemon of this host did the work under its claim and its outcome never landed (two
    crossed claims, each outcome refused): the host's record of the request done answers it. A
    record for another version of the entry answers nothing."""
    locks = tmp_path / "locks"
    host.set("Service", NODE_NAME="backup-a", ENTRY_LOCK_DIR=locks)
    done_dn, done_sleeper = _live_claim(directory, "3723802", "backup-a")
    other_dn, other_sleeper = _live_claim(directory, "3723803", "backup-a")
    folder = EntryLocks(locks)
    folder.prepare()
    for dn, csn in ((done_dn, directory.get(done_dn)["entryCSN"]), (other_dn, "20200101000000.000000Z#000000#001#000000")):
        with folder.hold(directory.entry_uuid(dn), dn) as held:
            held.record(Done(None, csn, "add", 0, "claim: backup-a 1 20200101T000000Z"))
    try:
        with DaemonProcess(host) as daemon:
            entry = directory.wait_mode(done_dn, "added", timeout=3 * RECHECK)     # at the first look again
            assert entry["sstProvisioningReturnValue"] == "0"
            daemon.wait_for(r"uid=3723802,.*: this add was done on this host \(return value 0, claim: backup-a 1 "
                            r"20200101T000000Z\) and its outcome did not reach the directory; writing it")
            claimed = r"uid=3723803,.*: adding: claimed by backup-a process \d+ at \d+T\d+Z; taken over if still open"
            daemon.wait_for(claimed, count=2, timeout=3 * RECHECK)      # looked at again, and still waited for
            assert directory.get(other_dn)["sstProvisioningMode"] == "adding"
    finally:
        done_sleeper.kill()
        other_sleeper.kill()
    assert not host.quota_calls()                        # no work done: the record said it was
