"""Benchmark: the daemon against the floor of this machine, measured in one run.

    bench/run                       # everything (about 10 minutes; --quick: about 2)
    bench/run --quick --json out.json

One slapd (syncprov, our schema) on loopback, the real daemon with the real
Backup/Rsnapshot plugin, a cheap chroot stand-in and the recording setquota
stand-in. Every figure is printed next to its floor, measured in the same run:

1. latency: sequential requests, add returned -> outcome visible (p50/p95/p99);
   floor: a bare syncrepl consumer's latency plus the two host commands' time;
2. bursts: adds, modifies, deletes at once, accounts/s until all are done;
   floor: the two host commands alone, WORKERS at a time;
3. catch-up over the provisioned accounts: restart with the cookie, and
   without cookie and store, time until idle and how many were provisioned
   again (must be 0); floor: a bare consumer's full refresh;
4. the daemon's peak RSS with the accounts in the subtree (and with 100,000);
5. the daemon's own CPU per account, without its commands' children;
6. TRANSPORTAPI = CLISSH against an sshd on loopback (as root, when sshd is
   installed): latency and a burst, against the two host commands run over
   ssh; one file operation against one ssh session and one ssh handshake;
7. the real builder (as root): the shipped prov-backup-create-chroot as the
   daemon runs it (CREATE_CHROOT_CMD left out: in its process, the programs
   linked from the jail image), next to the stand-in of sections 1-5:
   latency, a burst, the CPU per account of everything (daemon with the
   builder, setquota); and the builder alone, as it runs now and as the
   program it was (one Python start and 8.5 MB of copies per account):
   CPU and disk per jail, measured in this run.
8. only with --interpreters, alone (bench/interpreters.py): one daemon
   against two daemons on two subtrees taking the same burst in turns, the
   upper bound of what worker processes would bring to issue 20's burst.

Figures from a shared machine are noisy: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ldap
import ldap.modlist
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncreplConsumer

from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd
from provisioning.testing import make_subtree, wait_until
from provisioning.testing.sshd import SSHD, Sshd
from provisioning.transport import CLISSH
from provisioning_backup_rsnapshot.testing import BackupHost, account_attrs

CLK = os.sysconf("SC_CLK_TCK")
FIRST_UID = 3_900_000


# ------------------------------------------------------------ observing

class Watcher(SyncreplConsumer, SimpleLDAPObject):
    """A bare syncrepl consumer: notes when each entry is seen, and when it is seen done."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.refreshed_at: float | None = None

    def syncrepl_entry(self, dn, attrs, uuid):
        now = time.perf_counter()
        self.seen_at.setdefault(dn, now)
        state = attrs.get("sstProvisioningState", [b"0"])[0]
        if state != b"0" and attrs.get("sstProvisioningReturnValue") == [b"0"]:
            self.done_at[dn] = now

    def syncrepl_refreshdone(self):
        self.refreshed_at = time.perf_counter()

    def follow(self, base: str) -> "Watcher":
        self.msgid = self.syncrepl_search(base, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                          attrlist=["sstProvisioningState", "sstProvisioningReturnValue"])
        return self

    def read_until(self, done, timeout: float) -> None:
        """Read the stream as messages arrive (no sleeping) until ``done()``."""
        deadline = time.perf_counter() + timeout
        while not done():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("the stream did not show it in time")
            try:
                self.syncrepl_poll(msgid=self.msgid, all=0, timeout=min(left, 0.5))
            except ldap.TIMEOUT:
                pass


def read_until_done(w: Watcher, dns: list[str], timeout: float = 3600) -> None:
    """Read until every one of ``dns`` (none of them done before) is seen done.

    Counting first: checking every DN after every message cost the bench
    process O(n^2), 4.5 ms of CPU per account in a 10,000-add burst, taken
    from the cores the daemon runs on.
    """
    target = len(w.done_at) + len(set(dns) - w.done_at.keys())
    w.read_until(lambda: len(w.done_at) >= target and all(dn in w.done_at for dn in dns), timeout)


def watcher(server, base: str = ACCOUNTS_BASE) -> Watcher:
    w = Watcher(server.ldap_uri)
    w.simple_bind_s(server.root_dn, server.root_pw)
    w.follow(base)
    w.read_until(lambda: w.refreshed_at is not None, 120)
    return w


def _stat_times(pid: int) -> tuple[float, ...]:
    """utime, stime, cutime, cstime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return tuple(int(v) / CLK for v in fields[11:15])


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) of a process, in seconds."""
    utime, stime, cutime, cstime = _stat_times(pid)
    return utime + stime, cutime + cstime


def proc_times(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU of a process's own threads, in seconds."""
    utime, stime, _, _ = _stat_times(pid)
    return utime, stime


def machine_cpu() -> dict[str, float]:
    """Seconds of the whole machine since boot: all, idle (with iowait), stolen by the hypervisor."""
    fields = [int(v) / CLK for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"all": sum(fields[:8]), "idle": fields[3] + fields[4], "steal": fields[7] if len(fields) > 7 else 0.0}


class Budget:
    """Where the machine's CPU went while a burst ran, per account: who else shares the cores.

    The floor (the host commands alone) leaves out slapd and the bench's own
    process (the feeder's adds, the watcher's reads), which run on the same
    cores: with them, a daemon that cost nothing could reach only
    cores / (commands + slapd + bench) accounts per second.
    """

    def __init__(self, daemon_pids: list[int], slapd_pid: int) -> None:
        self.daemon_pids, self.slapd_pid = daemon_pids, slapd_pid
        self.before = self._now()

    def _now(self) -> dict[str, float]:
        daemons = [proc_cpu(pid) for pid in self.daemon_pids]
        return {"daemon": sum(own for own, _ in daemons), "commands": sum(children for _, children in daemons),
                "slapd": sum(proc_cpu(self.slapd_pid)), "bench": time.process_time(), **machine_cpu()}

    def per_account(self, accounts: int) -> dict[str, float]:
        after = self._now()
        spent = {key: (after[key] - self.before[key]) * 1000 / accounts for key in after}
        spent["other"] = spent.pop("all") - spent["idle"] - spent["steal"] - sum(
            spent[key] for key in ("daemon", "commands", "slapd", "bench"))
        return spent


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


# -------------------------------------------------------------- the host

CHROOT_STANDIN = '#!/bin/sh\n# JAIL HOME UID UIDNUMBER GIDNUMBER: the home only, as cheap as a command gets\nexec mkdir -p "$1$2"\n'


def make_host(root: Path, server, workers: int, base: str = ACCOUNTS_BASE) -> BackupHost:
    host = BackupHost(root, server, base)
    chroot = root / "bin/chroot-standin"
    chroot.write_text(CHROOT_STANDIN)
    chroot.chmod(0o755)
    host.set("Backup", CREATE_CHROOT_CMD=chroot)
    host.set("Global", LOG_DEBUG=0, LOG_INFO=1)      # as shipped: INFO on, DEBUG off
    host.set("Service", WORKERS=workers)
    host.chroot_standin = chroot
    return host


class Daemon:
    def __init__(self, host: BackupHost, log: Path) -> None:
        self.host = host
        self.log = log

    def start(self) -> "Daemon":
        self.out = open(self.log, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "provisioning", "-c", str(self.host.config),
                                      "-g", str(self.host.global_config)], stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=self.host.root)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.out.close()


def wait_idle(host: BackupHost, daemon: Daemon, watcher: Watcher, started: float, timeout: float = 600) -> float:
    """Seconds from ``started`` until the daemon's first refresh is over and it has nothing in hand.

    The daemon logs at WARNING and above only here; idle is read from its
    status: a status run would cost a second process, so the log of its
    refresh (LOG_INFO on for this) is read instead.
    """
    wait_until(lambda: "initial synchronisation" in daemon.log.read_text(), "the refresh", timeout)
    return time.perf_counter() - started


def add_account(conn, base: str, uid: str, backup_root: Path) -> str:
    """Add one account below ``base``; its DN."""
    dn = f"uid={uid},{base}"
    conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, backup_root)))
    return dn


def add_entries(server, uids: list[str], backup_root: Path, **overrides) -> list[str]:
    conn = server.connect()
    dns = []
    try:
        for uid in uids:
            dn = f"uid={uid},{ACCOUNTS_BASE}"
            conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, backup_root, **overrides)))
            dns.append(dn)
    finally:
        conn.unbind_s()
    return dns


def request_all(server, dns: list[str], mode: str, **changes) -> None:
    conn = server.connect()
    try:
        for dn in dns:
            mods = [(ldap.MOD_REPLACE, k, [str(v).encode()]) for k, v in
                    {"sstProvisioningMode": mode, "sstProvisioningState": "0",
                     "sstProvisioningExecutionDate": "0", **changes}.items()]
            conn.modify_s(dn, mods)
    finally:
        conn.unbind_s()


# ---------------------------------------------------------------- floors

def floor_commands(host: BackupHost, count: int, workers: int, scratch: Path) -> dict[str, float]:
    """The two host commands of an add, alone: accounts/s one at a time and ``workers`` at a time."""
    def one(i: int) -> None:
        uid = str(8_000_000 + i)
        subprocess.run([str(host.chroot_standin), str(scratch / uid), f"/home/{uid}", uid, uid, uid], check=True)
        subprocess.run([str(host.layout.setquota), "-u", uid, "1048576", "1048576", "0", "0", "/"], check=True)
    started = time.perf_counter()
    for i in range(count):
        one(i)
    serial = count / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count, 2 * count)))
    parallel = count / (time.perf_counter() - started)
    return {"commands_serial_per_s": serial, "commands_parallel_per_s": parallel,
            "commands_ms_per_account": 1000 / serial}


def floor_ldapadd(server, count: int, root: Path) -> float:
    """Entries/s that ldapadd itself writes."""
    ldif = root / "floor.ldif"
    with open(ldif, "w") as out:
        for i in range(count):
            uid = str(7_000_000 + i)
            out.write(f"dn: uid={uid},{ACCOUNTS_BASE}\n")
            for name, values in account_attrs(uid, root / "nowhere", sstProvisioningMode="added",
                                              sstProvisioningState="20260101T000000Z").items():
                for value in values:
                    out.write(f"{name}: {value.decode()}\n")
            out.write("\n")
    started = time.perf_counter()
    subprocess.run(["ldapadd", "-x", "-H", server.ldap_uri, "-D", server.root_dn, "-w", server.root_pw,
                    "-f", str(ldif)], check=True, stdout=subprocess.DEVNULL)
    return count / (time.perf_counter() - started)


def floor_consumer_latency(server, samples: int, root: Path, base: str = ACCOUNTS_BASE) -> float:
    """Median seconds from an add returning to a bare consumer seeing it."""
    w = watcher(server, base)
    conn = server.connect()
    latencies = []
    for i in range(samples):
        uid = str(7_500_000 + i)
        dn = f"uid={uid},{base}"
        conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, root / "nowhere", sstProvisioningMode="added",
                                                                  sstProvisioningState="20260101T000000Z")))
        sent = time.perf_counter()
        w.read_until(lambda dn=dn: dn in w.seen_at, 30)
        latencies.append(w.seen_at[dn] - sent)
    conn.unbind_s()
    w.unbind_s()
    return statistics.median(latencies)


def floor_modify(server, samples: int) -> float:
    """Median seconds of one modify of an account entry (the protocol makes two per request)."""
    conn = server.connect()
    dn = f"uid=7000000,{ACCOUNTS_BASE}"          # written by floor_ldapadd
    took = []
    for i in range(samples):
        started = time.perf_counter()
        conn.modify_s(dn, [(ldap.MOD_REPLACE, "sstProvisioningExecutionTime", [f"floor {i}".encode()])])
        took.append(time.perf_counter() - started)
    conn.unbind_s()
    return statistics.median(took)


def floor_refresh(server) -> float:
    """Seconds a bare consumer takes for a full refresh of the subtree."""
    started = time.perf_counter()
    w = watcher(server)
    took = w.refreshed_at - started
    w.unbind_s()
    return took


# -------------------------------------------------------------- the runs

def run(args) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="provisioning-bench-", dir=args.scratch or default_scratch()))
    print(f"bench: working in {scratch}", file=sys.stderr)
    try:
        return _run(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def default_scratch() -> str | None:
    """Where a run works: below folders that are root's alone, as BACKUP_ROOT is on a backup server.

    Below /tmp (writable by all) no folder on the way can be trusted, so the
    plugin's descriptor walks (transport/nofollow) open every level from /
    each time: about 1.5 ms of CPU more per account than below /var/backup.
    """
    if os.geteuid() == 0 and os.access("/var/lib", os.W_OK):
        return "/var/lib"
    return None


def _run(args, scratch: Path) -> dict:
    results: dict = {"workers": args.workers, "burst": args.burst, "big_burst": args.big_burst,
                     "real_burst": args.real_burst, "scratch": str(scratch)}
    server = StoneySlapd(rundir=str(scratch / "slapd"))
    server.start()
    try:
        if args.interpreters:
            from interpreters import run_interpreters     # it imports this module: not at the top
            results["interpreters"] = run_interpreters(args, server, scratch)
        elif not args.only_clissh:
            run_local(args, server, scratch, results)
        if args.real:
            results["real"] = run_real(args, server, scratch)
        if args.clissh:
            results["clissh"] = run_clissh(args, server, scratch)
    finally:
        server.stop()
    return results


def run_local(args, server, scratch: Path, results: dict) -> None:
    """Sections 1 to 5: TRANSPORTAPI = LocalCLI."""
    host = make_host(scratch / "host", server, args.workers)
    floors = floor_commands(host, args.commands, args.workers, scratch / "floor-homes")
    floors["consumer_latency_s"] = floor_consumer_latency(server, 50, scratch)
    floors["ldapadd_per_s"] = floor_ldapadd(server, args.burst, scratch)
    floors["modify_s"] = floor_modify(server, 50)
    results["floors"] = floors
    w = watcher(server)
    daemon = Daemon(host, scratch / "daemon.log").start()
    wait_until(lambda: "initial synchronisation" in daemon.log.read_text(), "the daemon", 60)

    # 1. latency, one request at a time
    latencies = []
    conn = server.connect()
    for i in range(args.latency):
        uid = str(FIRST_UID + i)
        dn = f"uid={uid},{ACCOUNTS_BASE}"
        conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, host.layout.backup_root)))
        sent = time.perf_counter()
        w.read_until(lambda dn=dn: dn in w.done_at, 60)
        latencies.append(w.done_at[dn] - sent)
    conn.unbind_s()
    results["latency_ms"] = {"p50": quantile(latencies, 50) * 1000, "p95": quantile(latencies, 95) * 1000,
                             "p99": quantile(latencies, 99) * 1000}

    # 2. bursts
    next_uid = FIRST_UID + args.latency
    cpu_before, times_before = proc_cpu(daemon.proc.pid), proc_times(daemon.proc.pid)
    bursts = {}
    for size in (args.burst, args.big_burst):
        uids = [str(next_uid + i) for i in range(size)]
        next_uid += size
        budget = Budget([daemon.proc.pid], server._proc.pid)
        started = time.perf_counter()
        dns = add_entries(server, uids, host.layout.backup_root)
        read_until_done(w, dns)
        bursts[f"add_{size}"] = size / (max(w.done_at[dn] for dn in dns) - started)
        results["budget_ms_per_account"] = budget.per_account(size)      # the bigger burst's is kept
    cpu_after, times_after = proc_cpu(daemon.proc.pid), proc_times(daemon.proc.pid)
    accounts = args.burst + args.big_burst
    # User time is the daemon's own code (Python, python-ldap); kernel time mostly the work
    # itself (folders, files, starting commands, sockets), which any daemon doing it would pay.
    results["cpu_ms_per_account"] = {"daemon": (cpu_after[0] - cpu_before[0]) * 1000 / accounts,
                                     "daemon_user": (times_after[0] - times_before[0]) * 1000 / accounts,
                                     "daemon_kernel": (times_after[1] - times_before[1]) * 1000 / accounts}
    burst_dns = [f"uid={FIRST_UID + args.latency + i},{ACCOUNTS_BASE}" for i in range(args.burst)]
    for mode, changes in (("modify", {"sstQuota": "2097152"}), ("delete", {"sstIsActive": "FALSE"})):
        for dn in burst_dns:
            w.done_at.pop(dn, None)
        started = time.perf_counter()
        request_all(server, burst_dns, mode, **changes)
        read_until_done(w, burst_dns)
        bursts[f"{mode}_{args.burst}"] = args.burst / (max(w.done_at[dn] for dn in burst_dns) - started)
    results["bursts_per_s"] = bursts
    results["rss_mib_after_bursts"] = peak_rss_mib(daemon.proc.pid)
    daemon.stop()

    # 3. catch-up over what is provisioned now
    provisioned = len(host.quota_calls())
    results["floors"]["refresh_s"] = floor_refresh(server)
    catch_up = {}
    for name, forget in (("with_cookie", False), ("without_cookie", True)):
        if forget:
            for path in host.layout.cookie.parent.glob(host.layout.cookie.name + "*"):
                if not path.name.endswith(".lock"):
                    path.unlink()
        daemon = Daemon(host, scratch / f"catch-up-{name}.log")
        started = time.perf_counter()
        daemon.start()
        catch_up[f"{name}_s"] = wait_idle(host, daemon, w, started)
        daemon.stop()
    catch_up["provisioned_again"] = len(host.quota_calls()) - provisioned
    results["catch_up"] = catch_up

    # 4. peak RSS with many accounts in the subtree (done ones: only the refresh works)
    rss = {}
    for total in args.rss_accounts:
        have = len(w.seen_at)
        if total > have:
            done = {"sstProvisioningMode": "added", "sstProvisioningState": "20260101T000000Z",
                    "sstProvisioningReturnValue": "0"}
            add_entries(server, [str(5_000_000 + i) for i in range(have, total)], host.layout.backup_root, **done)
        daemon = Daemon(host, scratch / f"rss-{total}.log")
        started = time.perf_counter()
        daemon.start()
        wait_idle(host, daemon, w, started, timeout=3600)
        rss[str(total)] = peak_rss_mib(daemon.proc.pid)
        daemon.stop()
    results["peak_rss_mib"] = rss
    w.unbind_s()


# --------------------------------------------------------- the real builder

def builder_alone(root: Path, linked: int, copied: int) -> dict[str, float]:
    """CPU and disk per jail of the shipped builder: as the daemon runs it, and as the program it was.

    As the daemon runs it: jailcalls.build in this process, the programs
    hard links to the jail image (the first jail, which makes the image,
    is left out). As it was: the console script started once per account,
    copying the programs (CREATE_CHROOT_CMD naming a script of one's own
    still gets that, until the jail job links the copies).
    """
    from provisioning_backup_rsnapshot import jailcalls

    backup = root / "backup"
    backup.mkdir(parents=True)
    images = {"backup_root": str(backup), "programs": ["sh", "rsync"], "limit": 64000}

    def argv(n: int) -> list[str]:
        uid = str(4_000_000 + n)
        return [str(backup / uid[-1] / uid[-3:] / uid[1:4] / uid / "chroot"), f"/home/{uid}", uid, uid, uid]
    jailcalls.build("chroot", argv(0), images)
    started = time.process_time()
    for n in range(1, linked + 1):
        jailcalls.build("chroot", argv(n), images)
    in_process = (time.process_time() - started) * 1000 / linked
    linked_disk = disk_per_jail(backup, range(1, linked + 1))
    script = shutil.which("prov-backup-create-chroot", path=str(Path(sys.executable).parent))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for n in range(linked + 1, linked + 1 + copied):
        subprocess.run([script, *argv(n)], check=True, env={"PATH": os.defpath})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    as_program = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000 / copied
    copied_disk = disk_per_jail(backup, range(linked + 1, linked + 1 + copied))
    return {"linked_cpu_ms": in_process, "program_cpu_ms": as_program, "linked_disk_kib": linked_disk,
            "copied_disk_kib": copied_disk, "linked_jails": linked, "copied_jails": copied}


def disk_per_jail(backup: Path, numbers) -> float:
    """KiB of disk per account directory: its own blocks (folders, files), not the image's it links to."""
    store = backup / ".jail-images"
    shared = {(i.st_dev, i.st_ino) for i in (f.lstat() for f in store.rglob("*"))} if store.exists() else set()
    seen, used, count = set(), 0, 0
    for n in numbers:
        uid = str(4_000_000 + n)
        account = backup / uid[-1] / uid[-3:] / uid[1:4] / uid
        count += 1
        for path in [account, *account.rglob("*")]:
            info = path.lstat()
            key = (info.st_dev, info.st_ino)
            if key not in seen and key not in shared:
                seen.add(key)
                used += info.st_blocks * 512
    return used / 1024 / count


def run_real(args, server, scratch: Path) -> dict:
    """Section 7: the daemon with the shipped builder, as sections 1 and 2 ran it with the stand-in."""
    figures = builder_alone(scratch / "builder-alone", args.builder_jails, args.builder_copies)
    base = make_subtree(server, "real")
    host = make_host(scratch / "host-real", server, args.workers, base)
    host.set("Backup", CREATE_CHROOT_CMD="")             # the shipped builder, in the daemon
    w = watcher(server, base)
    daemon = Daemon(host, scratch / "daemon-real.log").start()
    wait_until(lambda: "initial synchronisation" in daemon.log.read_text(), "the daemon with the real builder", 60)
    conn = server.connect()
    latencies = []
    for i in range(args.real_latency):
        dn = add_account(conn, base, str(6_500_000 + i), host.layout.backup_root)
        sent = time.perf_counter()
        w.read_until(lambda dn=dn: dn in w.done_at, 60)
        latencies.append(w.done_at[dn] - sent)
    conn.unbind_s()
    budget = Budget([daemon.proc.pid], server._proc.pid)
    started = time.perf_counter()
    conn = server.connect()
    dns = [add_account(conn, base, str(6_600_000 + i), host.layout.backup_root) for i in range(args.real_burst)]
    conn.unbind_s()
    read_until_done(w, dns)
    figures["burst_per_s"] = len(dns) / (max(w.done_at[dn] for dn in dns) - started)
    figures["budget_ms_per_account"] = budget.per_account(len(dns))
    figures["latency_ms"] = {"p50": quantile(latencies, 50) * 1000, "p95": quantile(latencies, 95) * 1000}
    figures["linked"] = sum(1 for _ in host.layout.backup_root.glob("*/*/*/*/chroot/usr/bin/rsync"))
    daemon.stop()
    w.unbind_s()
    return figures


def real_rows(r: dict, real: dict) -> list[tuple[str, str, str, str]]:
    """Section 7 next to the stand-in's figures of the same run."""
    standin_p50 = r["latency_ms"]["p50"] if "latency_ms" in r else float("nan")
    standin_burst = r["bursts_per_s"].get(f"add_{r['burst']}", float("nan")) if "bursts_per_s" in r else float("nan")
    b = real["budget_ms_per_account"]
    all_in = b["daemon"] + b["commands"]
    rows = [
        ("real builder: latency p50 / p95", f"{real['latency_ms']['p50']:.1f} / {real['latency_ms']['p95']:.1f} ms",
         f"{standin_p50:.1f} ms", f"{real['latency_ms']['p50'] / standin_p50:.2f}x the stand-in's p50"),
        (f"real builder: burst of {r['real_burst']} adds", f"{real['burst_per_s']:.1f}/s", f"{standin_burst:.1f}/s",
         f"{real['burst_per_s'] / standin_burst:.2f} of the stand-in's burst of {r['burst']}"),
        ("real builder: all-in CPU per account", f"{all_in:.2f} ms", "10 ms",
         f"{all_in / 10:.2f} (daemon with the builder {b['daemon']:.2f} + setquota {b['commands']:.2f}; "
         f"slapd {b['slapd']:.2f}, bench {b['bench']:.2f}, idle {b['idle']:.2f})"),
        ("builder alone: CPU per account", f"{real['linked_cpu_ms']:.2f} ms", f"{real['program_cpu_ms']:.1f} ms",
         f"{real['linked_cpu_ms'] / real['program_cpu_ms']:.3f} (in the daemon, linked / as a program, copying)"),
        ("builder alone: disk per jail", f"{real['linked_disk_kib']:.0f} KiB", f"{real['copied_disk_kib']:.0f} KiB",
         f"{real['linked_disk_kib'] / real['copied_disk_kib']:.4f} (linked, {real['linked_jails']} jails / copied, "
         f"{real['copied_jails']} jails)"),
    ]
    return rows


def clissh_problem() -> str:
    """Why the CLISSH part cannot run here ('' if it can)."""
    if os.geteuid() != 0:
        return "not root (the loopback gateway logs in as root)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed"
    return ""


def run_clissh(args, server, scratch: Path) -> dict:
    """Section 6: the daemon over ssh to a gateway on loopback, and ssh's own floors."""
    sshd = Sshd(scratch / "sshd").start()
    try:
        gateway = sshd.gateway
        base = make_subtree(server, "clissh")
        host = make_host(scratch / "host-clissh", server, args.workers, base)
        host.set("Service", TRANSPORTAPI="CLISSH")
        host.set("Gateway", **gateway)
        remote = CLISSH(host=gateway["HOST"], user=gateway["USER"], key_file=gateway["DSA_FILE"],
                        port=gateway["PORT"], known_hosts=gateway["KNOWN_HOSTS"], timeout=60)
        try:
            figures = clissh_floors(remote, host, args, scratch / "ssh-floor-homes")
        finally:
            remote.close()
        w = watcher(server, base)
        daemon = Daemon(host, scratch / "daemon-clissh.log").start()
        wait_until(lambda: "initial synchronisation" in daemon.log.read_text(), "the daemon over CLISSH", 120)
        conn = server.connect()
        latencies = []
        for i in range(args.clissh_latency):
            dn = add_account(conn, base, str(6_000_000 + i), host.layout.backup_root)
            sent = time.perf_counter()
            w.read_until(lambda dn=dn: dn in w.done_at, 120)
            latencies.append(w.done_at[dn] - sent)
        started = time.perf_counter()
        dns = [add_account(conn, base, str(6_100_000 + i), host.layout.backup_root)
               for i in range(args.clissh_burst)]
        read_until_done(w, dns, 1800)
        figures["burst_per_s"] = len(dns) / (max(w.done_at[dn] for dn in dns) - started)
        figures["latency_ms"] = {"p50": quantile(latencies, 50) * 1000, "p95": quantile(latencies, 95) * 1000}
        figures["consumer_latency_s"] = floor_consumer_latency(server, 20, scratch, base)
        conn.unbind_s()
        daemon.stop()
        w.unbind_s()
        return figures
    finally:
        sshd.stop()


def clissh_floors(remote: CLISSH, host: BackupHost, args, homes: Path) -> dict[str, float]:
    """ssh's own costs (a handshake, a session on the shared connection) and the transport's alone.

    The floor of the daemon's figures is the two host commands run through
    the transport (its helpers on the gateway) without the daemon.
    """
    def seconds(action, times: int) -> float:
        took = []
        for _ in range(times):
            started = time.perf_counter()
            action()
            took.append(time.perf_counter() - started)
        return statistics.median(took)
    handshake = seconds(lambda: subprocess.run([*remote.ssh, "true"], check=True), 10)
    remote.multiplexer.connect(time.monotonic() + 30)     # opens the shared connection
    shared = [*remote.ssh[:-2], *remote.multiplexer.client_options(), *remote.ssh[-2:], "true"]
    session = seconds(lambda: subprocess.run(shared, check=True), 20)
    remote.run(["true"])                                  # starts a helper
    command = seconds(lambda: remote.run(["true"]), 50)
    file_operation = seconds(lambda: remote.exists("/"), 50)

    def commands(i: int) -> None:
        uid = str(8_500_000 + i)
        for argv in ([str(host.chroot_standin), str(homes / uid), f"/home/{uid}", uid, uid, uid],
                     [str(host.layout.setquota), "-u", uid, "1048576", "1048576", "0", "0", "/"]):
            result = remote.run(argv)
            if not result.ok:
                raise RuntimeError(result.describe())
    count = args.clissh_burst
    started = time.perf_counter()
    for i in range(count):
        commands(i)
    serial = count / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(commands, range(count, 2 * count)))
    parallel = count / (time.perf_counter() - started)
    return {"handshake_s": handshake, "session_s": session, "file_operation_s": file_operation,
            "command_s": command,
            "commands_serial_per_s": serial, "commands_parallel_per_s": parallel,
            "commands_ms_per_account": 1000 / serial}


def report(r: dict) -> list[tuple[str, str, str, str]]:
    rows = report_local(r) if "floors" in r else []
    rows += real_rows(r, r["real"]) if "real" in r else []
    return rows + (clissh_rows(r["clissh"], r["workers"]) if "clissh" in r else [])


def clissh_rows(c: dict, workers: int) -> list[tuple[str, str, str, str]]:
    """Section 6: the floors are the two host commands run through CLISSH alone, and ssh itself."""
    one_account = c["consumer_latency_s"] * 1000 + c["commands_ms_per_account"]
    return [
        ("CLISSH latency p50", f"{c['latency_ms']['p50']:.1f} ms", f"{one_account:.1f} ms",
         f"{c['latency_ms']['p50'] / one_account:.2f}x (consumer + the two commands through CLISSH)"),
        ("CLISSH latency p95", f"{c['latency_ms']['p95']:.1f} ms", f"{one_account:.1f} ms",
         f"{c['latency_ms']['p95'] / one_account:.2f}x"),
        ("CLISSH burst of adds", f"{c['burst_per_s']:.1f}/s", f"{c['commands_parallel_per_s']:.1f}/s",
         f"{c['burst_per_s'] / c['commands_parallel_per_s']:.2f} (the two commands, {workers} at a time)"),
        ("CLISSH one command / file operation", f"{c['command_s'] * 1000:.2f} ms",
         f"{c['file_operation_s'] * 1000:.2f} ms", "through a helper on the gateway"),
        ("floor: ssh session, shared / own handshake", f"{c['session_s'] * 1000:.1f} ms",
         f"{c['handshake_s'] * 1000:.1f} ms", f"what each operation cost before: up to {c['handshake_s'] * 1000:.0f} ms"),
    ]


def report_local(r: dict) -> list[tuple[str, str, str, str]]:
    f = r["floors"]
    one_account = f["consumer_latency_s"] * 1000 + f["commands_ms_per_account"]
    rows = [("latency p50", f"{r['latency_ms']['p50']:.1f} ms", f"{one_account:.1f} ms",
             f"{r['latency_ms']['p50'] / one_account:.2f}x (goal <= 1.5x)"),
            ("latency p95", f"{r['latency_ms']['p95']:.1f} ms", f"{one_account:.1f} ms",
             f"{r['latency_ms']['p95'] / one_account:.2f}x"),
            ("latency p99", f"{r['latency_ms']['p99']:.1f} ms", f"{one_account:.1f} ms",
             f"{r['latency_ms']['p99'] / one_account:.2f}x (goal <= 3x)")]
    if "modify_s" in f:
        # What the contract adds to that floor: the claim and the outcome, each a modify.
        with_writes = one_account + 2 * f["modify_s"] * 1000
        rows.append(("latency p50, floor with 2 modifies", f"{r['latency_ms']['p50']:.1f} ms",
                     f"{with_writes:.1f} ms", f"{r['latency_ms']['p50'] / with_writes:.2f}x"))
    for name, rate in r["bursts_per_s"].items():
        floor = f["commands_parallel_per_s"]
        goal = " (goal >= 0.5)" if name == f"add_{r['big_burst']}" else ""
        rows.append((f"burst {name.replace('_', ' ')}", f"{rate:.1f}/s", f"{floor:.1f}/s", f"{rate / floor:.2f}{goal}"))
    rows.append(("catch-up with cookie", f"{r['catch_up']['with_cookie_s']:.2f} s", f"{f['refresh_s']:.2f} s",
                 f"{r['catch_up']['with_cookie_s'] / f['refresh_s']:.2f}x (goal <= 2x)"))
    rows.append(("catch-up without cookie", f"{r['catch_up']['without_cookie_s']:.2f} s", f"{f['refresh_s']:.2f} s",
                 f"{r['catch_up']['without_cookie_s'] / f['refresh_s']:.2f}x; provisioned again: "
                 f"{r['catch_up']['provisioned_again']} (goal 0)"))
    for total, mib in r["peak_rss_mib"].items():
        rows.append((f"peak RSS, {total} accounts", f"{mib:.1f} MiB", "80 MiB", f"{mib / 80:.2f} (goal <= 1)"))
    rows.append(("RSS after the bursts", f"{r['rss_mib_after_bursts']:.1f} MiB", "-", "-"))
    cpu = r["cpu_ms_per_account"]
    rows.append(("daemon CPU per account", f"{cpu['daemon']:.2f} ms", "4 ms",
                 f"{cpu['daemon'] / 4:.2f} (goal <= 1, issue 20)"))
    if "daemon_kernel" in cpu:
        rows.append(("  of which user / kernel", f"{cpu['daemon_user']:.2f} / {cpu['daemon_kernel']:.2f} ms", "-",
                     "kernel: the system calls of the work (folders, files, commands, sockets)"))
    if "budget_ms_per_account" in r:
        rows += budget_rows(r["budget_ms_per_account"], f["commands_parallel_per_s"], r["big_burst"])
    rows.append(("floor: ldapadd", f"{f.get('ldapadd_per_s', 0):.0f}/s", "-", "-"))
    if "modify_s" in f:
        rows.append(("floor: one modify", f"{f['modify_s'] * 1000:.2f} ms", "-", "-"))
    rows.append(("floor: commands one / N at a time", f"{f['commands_serial_per_s']:.0f}/s",
                 f"{f['commands_parallel_per_s']:.0f}/s", f"WORKERS {r['workers']}"))
    return rows


def budget_rows(b: dict[str, float], floor_per_s: float, size: int) -> list[tuple[str, str, str, str]]:
    """The machine's CPU per account in the last burst, and the rate a daemon costing nothing could reach."""
    shown = ", ".join(f"{key} {b[key]:.2f}" for key in ("daemon", "commands", "slapd", "bench", "other",
                                                          "idle", "steal"))
    ceiling = honest_floor(b)
    return [(f"burst {size}: ms per account", shown, "-", "-"),
            ("burst ceiling, a daemon costing nothing", f"{ceiling:.0f}/s", f"{floor_per_s:.0f}/s",
             f"{ceiling / floor_per_s:.2f} ({os.cpu_count() or 1} cores / commands + slapd + bench)")]


def honest_floor(b: dict[str, float]) -> float:
    """Issue 20's floor for a burst: accounts/s of a daemon costing nothing, cores / (commands + slapd + bench)."""
    others = b["commands"] + b["slapd"] + b["bench"]
    return (os.cpu_count() or 1) * 1000 / others if others > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a couple of minutes")
    parser.add_argument("--workers", type=int, default=2, help="[Service] WORKERS (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--scratch", metavar="DIR",
                        help="make the run's folder (slapd, host tree, logs) in DIR (default: /var/lib as root, "
                             "else the temporary folder; see default_scratch)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (removed by default)")
    parser.add_argument("--no-clissh", dest="clissh", action="store_false",
                        help="leave out section 6, TRANSPORTAPI = CLISSH on a loopback sshd")
    parser.add_argument("--only-clissh", action="store_true", help="run section 6 alone")
    parser.add_argument("--no-real", dest="real", action="store_false",
                        help="leave out section 7, the real builder")
    parser.add_argument("--interpreters", action="store_true",
                        help="run section 8 alone: one daemon against two (what worker processes would bring)")
    args = parser.parse_args()
    problem = clissh_problem()
    if args.clissh and problem:
        print(f"bench: section 6 (CLISSH) left out: {problem}", file=sys.stderr)
        args.clissh = False
    if args.real and os.geteuid() != 0:
        print("bench: section 7 (the real builder) left out: not root (it builds chroots)", file=sys.stderr)
        args.real = False
    if args.only_clissh or args.interpreters:
        args.real = False
    if args.interpreters:
        args.clissh = False
    if args.quick:
        args.latency, args.burst, args.big_burst, args.commands, args.rss_accounts = 50, 200, 1000, 200, [2000]
        args.clissh_latency, args.clissh_burst = 10, 50
        args.real_latency, args.real_burst, args.builder_jails, args.builder_copies = 50, 200, 1000, 20
        args.interpreter_burst, args.rounds = 300, 2
    else:
        args.latency, args.burst, args.big_burst, args.commands = 200, 1000, 10_000, 1000
        args.rss_accounts = [10_000, 100_000]
        args.clissh_latency, args.clissh_burst = 50, 200
        args.real_latency, args.real_burst, args.builder_jails, args.builder_copies = 200, 1000, 1000, 100
        args.interpreter_burst, args.rounds = 1500, 4
    results = run(args)
    if "interpreters" in results:
        from interpreters import interpreter_rows
        rows = interpreter_rows(results["interpreters"])
    else:
        rows = [("figure", "daemon", "floor", "ratio")] + report(results)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LDAPNOINIT", "1")
    sys.exit(main())
