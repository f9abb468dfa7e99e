"""CLISSH: a gateway that is away for a while is not the request's fault (issue 26).

The gateway is a real sshd of the test's own with Debian's default limits
(fixture ``gateway_sshd``), killed with every session and started again
while the daemon works; the directory is the session's real slapd.

Before: requests in hand failed with return values that blamed the account
(3 "SET_QUOTA_CMD is not installed", 5 the home, 1 a traceback) and stayed
``adding``; others waited a minute or two on a connection already gone; a
rejected candidate configuration was left behind.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

import ldap

from faults import PauseAt
from helpers import DaemonProcess, Host, assert_done, wait_until
from test_mail import free_port
from test_metrics import scrape, value

UID = "3723707"
# How long the gateway stays down each time.
OUTAGE = 2.0
# What a request cut by an outage may take beyond the outages it lived through and the
# slowest request no outage touched (the machine's own pace: seconds on this 2-core machine
# at a load of 10-15, with other test runs beside): noticing the outage, [Operation Mode]
# SLEEP (0.2 s here), a new connection and helpers (a Python start-up each on the gateway),
# reconnecting to LDAP and doing the work again. Before, requests waited 60-122 s on a
# connection already gone: the bound tells the two apart with room for a loaded machine
# (5 s was passed by 0.02 s on CI, the suite's second run beside its first's leftovers).
SLACK = 15.0


def _over_clissh(host: Host, gateway_sshd, workers: int = 4) -> Host:
    host.set("Service", TRANSPORTAPI="CLISSH", WORKERS=workers)
    host.set("Gateway", **gateway_sshd.gateway)
    return host


def _leftovers(host: Host) -> list[str]:
    """Candidate configurations (and half-written files) left in the rsnapshot folder."""
    return sorted(p.name for p in host.layout.rsnapshot_dir.iterdir() if p.name.startswith("."))


def test_a_request_cut_by_the_gateway_waits_for_it_and_is_resumed_when_it_answers(host, directory, gateway_sshd):
    _over_clissh(host, gateway_sshd)
    pause = PauseAt(host.layout.root / "bin", "create-home-paused", then=str(host.chroot_cmd))
    host.set("Backup", CREATE_CHROOT_CMD=pause.command)
    candidate = host.layout.rsnapshot_dir / f".rsnapshot.conf.{UID}.new"
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        pause.wait_paused()                         # the home's command runs on the gateway...
        wait_until(candidate.exists, "the candidate configuration, written beside it")
        gateway_sshd.kill()                         # ...when the gateway goes, with its sessions
        daemon.wait_for(r"the gateway root@127\.0\.0\.1 port \d+ stopped answering")
        daemon.wait_for(rf"uid={UID},.*: add stopped, the gateway .* is out of reach: .*; it stays adding "
                        r"without an outcome")
        daemon.wait_for(r"attempt 1 of 50 to reach the gateway root@127\.0\.0\.1 port \d+ failed: .*"
                        r"Connection refused; trying again every 0\.2 s")
        entry = directory.get(dn)
        assert entry["sstProvisioningMode"] == "adding" and "sstProvisioningReturnValue" not in entry
        assert candidate.exists()                   # cannot be removed while the gateway is away
        back = time.monotonic()
        gateway_sshd.start()
        assert_done(directory.wait_mode(dn, "added"), "added")
        took = time.monotonic() - back
        daemon.wait_for(r"the gateway root@127\.0\.0\.1 port \d+ answers again after \d+ attempts")
        daemon.wait_for(rf"removed {re.escape(str(candidate))}, left while the gateway was away")
        daemon.wait_for(rf"uid={UID},.*: resuming add: adding without an outcome, claimed by .* this daemon, "
                        r"which is not working on it")
    finally:
        assert daemon.stop() == 0
    assert took < SLACK, took
    assert daemon.count(r"failed with return value") == 0
    assert daemon.count(r"plugin raised") == 0
    assert _leftovers(host) == []
    assert (host.home(UID) / "incoming").is_dir() and host.rsnapshot_config(UID).is_file()


def test_status_and_metrics_show_the_gateway_away_and_back(host, directory, gateway_sshd):
    port = free_port()
    _over_clissh(host, gateway_sshd)
    host.set("Service", METRICS_PORT=port)
    pause = PauseAt(host.layout.root / "bin", "create-home-paused", then=str(host.chroot_cmd))
    host.set("Backup", CREATE_CHROOT_CMD=pause.command)
    daemon = DaemonProcess(host).start()
    try:
        dn = directory.add(UID)
        pause.wait_paused()
        samples = scrape(port)
        assert value(samples, "provisioning_gateway_up") == 1
        assert value(samples, "provisioning_gateway_seconds_since_answer") < 5
        gateway_sshd.kill()
        daemon.wait_for(r"attempt 1 of 50 to reach the gateway")
        samples = scrape(port)
        assert value(samples, "provisioning_gateway_up") == 0
        assert value(samples, "provisioning_gateway_outages_total") == 1
        # WARNING once the gateway has been silent for 0.5 s: requests wait for it.
        code, found = wait_until(lambda: (r := _status_json(host, "--warn-gateway", "0.5", "--crit-gateway",
                                                             "600"))[0] == 1 and r, "status WARNING")
        assert found["gateway"]["up"] is False and found["gateway"]["why"]
        assert re.fullmatch(r"the gateway root@127\.0\.0\.1 port \d+ out of reach, no answer for \d+ s",
                            found["summary"].split(": ", 1)[1].split("; ")[0]), found["summary"]
        text = _status_text(host)
        assert re.search(r"^gateway: root@127\.0\.0\.1 port \d+: out of reach since \d{4}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d UTC \(last answer \d+ s ago\): .*; requests wait for it$", text, re.M), text
        assert re.search(r" gateway_silence=\d+s;60;300;0$", text.splitlines()[0])
        gateway_sshd.start()
        assert_done(directory.wait_mode(dn, "added"), "added")
        assert value(scrape(port), "provisioning_gateway_up") == 1
        wait_until(lambda: re.search(r"^gateway: root@127\.0\.0\.1 port \d+: answers \(last answer \d+ s ago; "
                                     r"recorded by the daemon at ", _status_text(host), re.M),
                   "status to show the gateway back")
    finally:
        assert daemon.stop() == 0


def _status_json(host: Host, *args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "provisioning", "status", "-c", str(host.config),
                             "-g", str(host.global_config), "--json", *args], capture_output=True, text=True,
                            timeout=60)
    return result.returncode, json.loads(result.stdout)


def _status_text(host: Host) -> str:
    return subprocess.run([sys.executable, "-m", "provisioning", "status", "-c", str(host.config),
                           "-g", str(host.global_config)], capture_output=True, text=True, timeout=60).stdout


def test_a_gateway_away_longer_than_the_attempts_ends_the_daemon_and_the_next_start_resumes(
        host, directory, gateway_sshd):
    _over_clissh(host, gateway_sshd, workers=2)
    host.set_global("Operation Mode", SLEEP=0.2, ATTEMPTS=5)
    pause = PauseAt(host.layout.root / "bin", "create-home-paused", then=str(host.chroot_cmd))
    host.set("Backup", CREATE_CHROOT_CMD=pause.command)
    candidate = host.layout.rsnapshot_dir / f".rsnapshot.conf.{UID}.new"
    first = DaemonProcess(host).start()
    dns = [directory.add(UID)]
    pause.wait_paused()
    # Beside the home's command only for a request the plugin works alone (alongside.Company):
    # the second request comes once the first one's candidate is there.
    wait_until(candidate.exists, "the candidate configuration, written beside the home's command")
    dns.append(directory.add("3723708"))
    gateway_sshd.kill()
    assert first.proc.wait(60) == 7                 # GATEWAY_UNREACHABLE, as documented
    assert candidate.exists()                       # the gateway never came back to remove it
    first.wait_for(r"giving up: the gateway root@127\.0\.0\.1 port \d+ did not answer after 5 attempt\(s\)")
    for dn in dns:                                  # claimed without an outcome, or still open
        entry = directory.get(dn)
        assert entry["sstProvisioningMode"] in ("add", "adding"), entry
        assert "sstProvisioningReturnValue" not in entry
    assert directory.get(dns[0])["sstProvisioningMode"] == "adding"
    gateway_sshd.start()
    second = DaemonProcess(host, log_name="daemon2.log").start()
    try:
        for dn in dns:
            assert_done(directory.wait_mode(dn, "added"), "added")
        second.wait_for(rf"uid={UID},.*: resuming add: adding without an outcome, claimed by .* which no longer runs")
    finally:
        assert second.stop() == 0
    assert not candidate.exists()                   # the account's next request took care of it
    assert first.count(r"failed with return value") == second.count(r"failed with return value") == 0
    assert _leftovers(host) == []


def test_a_gateway_away_at_start_is_waited_for_and_then_served(host, directory, gateway_sshd):
    # Before: the plugin's start-up checks found every program "missing" and the daemon exited 3.
    _over_clissh(host, gateway_sshd)
    host.set_global("Global", SLEEP=0.2, ATTEMPTS=50)      # [Global]: the attempts at start
    gateway_sshd.kill()
    daemon = DaemonProcess(host).start(wait_ready=False)
    try:
        daemon.wait_for(r"the plugin's start-up checks cannot run: the gateway root@127\.0\.0\.1 port \d+ is out "
                        r"of reach")
        daemon.wait_for(r"attempt 1 of 50 to reach the gateway root@127\.0\.0\.1 port \d+ failed: .*Connection "
                        r"refused")
        gateway_sshd.start()
        daemon.wait_for(r"initial synchronisation of .* done")
        assert_done(directory.wait_mode(directory.add(UID), "added"), "added")
    finally:
        assert daemon.stop() == 0


def test_a_burst_rides_out_the_gateway_killed_and_restarted_several_times(host, directory, gateway_sshd, report):
    """200 adds; the gateway killed with its sessions at three random points of the burst, each
    time for OUTAGE seconds. Every request ends added with 0, once, none slower than the outages
    it lived through plus SLACK, no candidate left."""
    seed = int(os.environ.get("OUTAGE_SEED") or time.time())
    rng = random.Random(seed)
    _over_clissh(host, gateway_sshd)
    host.set_global("Operation Mode", SLEEP=0.2, ATTEMPTS=100)
    uids = [str(3800000 + i) for i in range(200)]
    warm = [str(3799990 + i) for i in range(8)]
    # Kill after this many setquota calls (one per account worked, a few more for resumed ones),
    # and a random moment more, so that the kills land between any two operations.
    points = [len(warm) + rng.randint(15, 45), len(warm) + rng.randint(80, 110), len(warm) + rng.randint(140, 170)]
    outages: list[tuple[float, float]] = []          # (killed, listening again), wall clock
    daemon = DaemonProcess(host).start()
    done_at: dict[str, float] = {}
    try:
        # The daemon's first helpers start with the burst's first requests: a start-up cost,
        # not the outages' (seconds each on a busy machine).
        for uid in warm:
            directory.add(uid)
        _watch_until_done(directory, warm, {})
        killer = threading.Thread(target=_kill_at, args=(host, gateway_sshd, points, rng, outages))
        killer.start()
        for uid in uids:
            directory.add(uid)
        _watch_until_done(directory, uids, done_at)
        killer.join(60)
        assert not killer.is_alive()
    finally:
        assert daemon.stop() == 0
    assert len(outages) == 3
    text = daemon.text()
    claims = _times(text, r" add request claimed \(")
    done = _times(text, r" add done in ")
    assert sorted(done) == sorted(directory.dn(uid).lower() for uid in uids + warm)
    for dn, stamps in done.items():
        assert len(stamps) == 1, (dn, stamps)                     # each account's outcome, once
    took = {dn: done[dn][0] - claims[dn][0] for dn in done}
    lived = {dn: _overlap(outages, claims[dn][0], done[dn][0]) for dn in done}
    pace = max(took[dn] for dn in done if not lived[dn])          # the slowest no outage touched
    for dn in done:
        assert took[dn] <= lived[dn] + pace + SLACK, (dn, took[dn], lived[dn], pace)
    slowest = max(took.values())
    for uid in uids:
        entry = directory.get(directory.dn(uid))
        assert entry["sstProvisioningReturnValue"] == "0", entry
    assert daemon.count(r"failed with return value") == 0
    assert daemon.count(r"plugin raised") == 0
    assert daemon.count(r"stopped answering") >= 1
    assert _leftovers(host) == []
    homes = sorted(uid for uid in uids if (host.home(uid) / "incoming").is_dir()
                   and host.rsnapshot_config(uid).is_file())
    assert homes == uids
    quota = [call[1] for call in host.quota_calls()]
    assert set(quota) == set(uids + warm)
    report("CLISSH burst of 200 adds, gateway killed 3 times", seed=seed,
           outages=" ".join(f"{back - killed:.1f}s" for killed, back in outages),
           added=sum(1 for uid in uids if directory.get(directory.dn(uid))["sstProvisioningMode"] == "added"),
           failed=daemon.count(r"failed with return value"), twice=sum(1 for s in done.values() if len(s) > 1),
           slowest_s=f"{slowest:.1f}", slowest_untouched_s=f"{pace:.1f}",
           slowest_beyond_outage_s=f"{max(took[dn] - lived[dn] for dn in done):.1f}",
           cut_and_resumed=daemon.count(r": resuming add:"),
           setquota_again=len(quota) - len(set(quota)),
           noticed=daemon.count(r"stopped answering"))


def _kill_at(host: Host, gateway_sshd, points: list[int], rng: random.Random,
             outages: list[tuple[float, float]]) -> None:
    for point in points:
        wait_until(lambda: len(host.quota_calls()) >= point, f"{point} accounts worked", 120)
        time.sleep(rng.uniform(0, 0.3))
        killed = time.time()
        gateway_sshd.kill()
        time.sleep(OUTAGE)
        gateway_sshd.start()
        outages.append((killed, time.time()))


def _watch_until_done(directory, uids: list[str], done_at: dict[str, float]) -> None:
    """Until every entry is added (or one failed): a search a few times a second."""
    wanted = {directory.dn(uid).lower() for uid in uids}

    def all_done() -> bool:
        found = directory.conn.search_s(directory.subtree, ldap.SCOPE_ONELEVEL, "(sstProvisioningMode=added)",
                                        ["sstProvisioningReturnValue"])
        for dn, _ in found:
            done_at.setdefault(dn.lower(), time.time())
        failed = directory.conn.search_s(directory.subtree, ldap.SCOPE_ONELEVEL,
                                         "(&(sstProvisioningReturnValue=*)(!(sstProvisioningReturnValue=0)))",
                                         ["sstProvisioningReturnValue"])
        assert not failed, failed
        return wanted <= set(done_at)
    wait_until(all_done, "every request of the burst to be added", 240)


def _times(text: str, pattern: str) -> dict[str, list[float]]:
    """For each DN, when the log lines matching ``pattern`` were written (Unix time)."""
    found: dict[str, list[float]] = {}
    line = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (uid=[^:]+):" + pattern, re.MULTILINE)
    for stamp, dn in line.findall(text):
        at = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.setdefault(dn.lower(), []).append(at)
    return found


def _overlap(outages: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(end, back) - max(start, killed)) for killed, back in outages)
