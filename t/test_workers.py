"""Requests worked at the same time: a slow command holds nobody up, one entry's requests keep
their order, and the cookie passes only what is done (a crash redoes nothing that finished)."""
from __future__ import annotations

from collections import Counter

import ldap
import ldap.modlist

from provisioning.sandbox.layout import REPO

from faults import PauseAt
from helpers import DaemonProcess, account_attrs, assert_done, wait_until

SLOW = "3723700"


def _paused_chroot(host) -> PauseAt:
    (host.layout.root / "stand-ins").mkdir(exist_ok=True)
    pause = PauseAt(host.layout.root / "stand-ins", "create-chroot", when=SLOW,
                    then=str(REPO / "bin/prov-backup-create-home"))
    host.set("Backup", CREATE_CHROOT_CMD=pause.command)
    return pause


def _add_all(directory, uids) -> list[str]:
    dns = []
    for uid in uids:
        dn = directory.dn(uid)
        directory.conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, directory.backup_root)))
        dns.append(dn)
    return dns


def test_a_hanging_command_holds_nobody_else_up(host, directory):
    host.set("Service", WORKERS=2)
    pause = _paused_chroot(host)
    daemon = DaemonProcess(host).start()
    slow = directory.add(SLOW)
    pause.wait_paused()
    others = _add_all(directory, [str(3723800 + i) for i in range(100)])
    # All done while the hanging one is held (no wall-clock bound: that is the benchmarks' job;
    # a bound of 30 s failed at 31.9 s on a loaded machine with nothing wrong).
    for dn in others:
        assert_done(directory.wait_mode(dn, "added", timeout=120), "added")
    assert directory.get(slow)["sstProvisioningMode"] == "adding"       # still hanging, in hand
    pause.release()
    assert_done(directory.wait_mode(slow, "added"), "added")
    assert daemon.stop() == 0


def test_requests_for_one_entry_never_run_at_the_same_time_and_the_newest_wins(host, directory):
    host.set("Service", WORKERS=4)
    overlap = host.layout.root / "overlap"
    slow_quota = host.layout.root / "bin/slow-setquota"
    slow_quota.write_text(f"""#!/bin/sh
# Takes a while; notes when a second call for the same account starts before the first ended.
mkdir {host.layout.root}/busy-$2 2>/dev/null || echo "$2" >> {overlap}
sleep 0.2
rmdir {host.layout.root}/busy-$2
exec {host.layout.setquota} "$@"
""")
    slow_quota.chmod(0o755)
    host.set("Backup", SET_QUOTA_CMD=slow_quota)
    daemon = DaemonProcess(host).start()
    uids = [str(3723700 + i) for i in range(8)]
    dns = _add_all(directory, uids)
    for round_, quota in enumerate(("2048", "4096", "8192")):
        for dn in dns:                                     # each written while the one before is in hand
            directory.request(dn, "modify", sstQuota=quota)
    for dn in dns:
        wait_until(lambda dn=dn: (e := directory.get(dn))["sstProvisioningMode"] == "modified"
                   and e["sstQuota"] == "8192" and e.get("sstProvisioningReturnValue") == "0",
                   "the newest request done", 60)
    wait_until(lambda: all([c[2] for c in host.quota_calls() if c[1] == uid][-1:] == ["8"] for uid in uids),
               "the newest quota set for every account", 30)
    assert not overlap.exists(), overlap.read_text()       # one entry's requests never at the same time
    assert daemon.stop() == 0


def test_a_crash_with_work_in_hand_redoes_nothing_that_finished(host, directory):
    host.set("Service", WORKERS=2)
    pause = _paused_chroot(host)
    daemon = DaemonProcess(host).start()
    slow = directory.add(SLOW)
    pause.wait_paused()
    others = _add_all(directory, [str(3723800 + i) for i in range(10)])   # done after the slow one began
    for dn in others:
        directory.wait_mode(dn, "added", timeout=30)
    wait_until(lambda: [c for c in host.quota_calls() if c[1] == SLOW], "setquota beside the slow script")
    daemon.kill()                                  # kill -9 with the slow request in hand
    pause.release()
    again = DaemonProcess(host, log_name="again.log").start()
    assert_done(directory.wait_mode(slow, "added", timeout=30), "added")
    assert again.stop() == 0
    quota = Counter(c[1] for c in host.quota_calls())
    # The slow request was in hand, so it is done again: its quota set beside the script, and by the resumed add.
    assert quota[SLOW] == 2 and all(quota[str(3723800 + i)] == 1 for i in range(10))   # nothing finished redone
    assert again.count(r": add done in") == 1
