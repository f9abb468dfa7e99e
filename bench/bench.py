"""Benchmarks: numbers to compare with the Perl original, measured in one run.

    bench/run                 # everything, default sizes
    bench/run --accounts 1000 --latency-samples 200

1. rsnapshot configuration: cost per account of writing and proving a
   configuration with CONFIGTEST = always (rsnapshot configtest for each
   file) and = cached (once per shape), and their ratio.
2. The daemon against a real slapd: a burst of add requests (throughput),
   then one request at a time (latency from the add to sstProvisioningMode:
   added, seen through a syncrepl consumer of our own), and the daemon's
   resident memory before and after (growth per account).

The Perl original, measured on this kind of machine: ~49 adds/s, p50 ~22 ms,
memory growing ~65 KB per account (DESIGN.md section 6).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ldap
import ldap.modlist
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncreplConsumer

from provisioning.entry import Entry
from provisioning.testing import ACCOUNTS_BASE, Slapd as StoneySlapd, wait_until
from provisioning.transport import LocalCLI
from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot.rsnapshot import RsnapshotConfigs, Template
from provisioning_backup_rsnapshot.testing import BackupHost as Host, account_attrs

REPO = Path(__file__).resolve().parents[1]

TEMPLATE = REPO / "etc/Provisioning/Backup/rsnapshot.account.template"


# ------------------------------------------------------------ configtest

def bench_configtest(count: int, root: Path) -> dict[str, float]:
    """Seconds per account to install a configuration, always vs cached."""
    results = {}
    for mode in ("always", "cached"):
        folder = root / mode
        (folder / "etc").mkdir(parents=True)
        configs = RsnapshotConfigs(Template.load(TEMPLATE), str(folder / "etc/rsnapshot.conf.%uid%"),
                                   "/usr/bin/rsnapshot", LocalCLI(), always_test=mode == "always")
        prepared = [_prepared_account(folder, 3800000 + i) for i in range(count)]
        started = time.perf_counter()
        for account, place in prepared:
            configs.install(account, place)
        results[mode] = (time.perf_counter() - started) / count
        results[f"{mode}_configtests"] = configs.configtests
    return results


def _prepared_account(folder: Path, number: int):
    uid = str(number)
    entry = Entry.from_ldap(f"uid={uid}", account_attrs(uid, folder / "backup"))
    account = accounts.parse(entry, 1000)
    place = accounts.layout(account, str(folder / "backup"))
    Path(place.incoming).mkdir(parents=True)
    Path(place.snapshot_root).mkdir(parents=True)
    return account, place


# ---------------------------------------------------------------- daemon

class Watcher(SyncreplConsumer, SimpleLDAPObject):
    """Notes the moment each entry is first seen with sstProvisioningMode: added."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.added_at: dict[str, float] = {}

    def syncrepl_entry(self, dn, attrs, uuid):
        if attrs.get("sstProvisioningMode") == [b"added"] and dn not in self.added_at:
            self.added_at[dn] = time.perf_counter()

    def wait_added(self, dns: list[str], timeout: float) -> None:
        """Read the stream as messages arrive (no sleeping) until every DN is added."""
        deadline = time.perf_counter() + timeout
        while not all(dn in self.added_at for dn in dns):
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"{sum(dn not in self.added_at for dn in dns)} account(s) never added")
            try:
                self.syncrepl_poll(all=0, timeout=min(left, 1.0))
            except ldap.TIMEOUT:
                pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_daemon(burst: int, samples: int, root: Path) -> dict[str, float]:
    server = StoneySlapd(rundir=str(root))
    server.start()
    try:
        host = Host(root / "host", server, ACCOUNTS_BASE)
        host.set("Global", LOG_DEBUG=0)
        log = open(root / "daemon.log", "w")
        daemon = subprocess.Popen([sys.executable, "-m", "provisioning", "-c", str(host.config),
                                   "-g", str(host.global_config)], stdout=log, stderr=subprocess.STDOUT)
        conn = server.connect()
        watcher = Watcher(server.ldap_uri)
        watcher.simple_bind_s(server.root_dn, server.root_pw)
        watcher.syncrepl_search(ACCOUNTS_BASE, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                filterstr="(objectClass=sstProvisioning)", attrlist=["sstProvisioningMode"])
        wait_until(lambda: "initial synchronisation" in (root / "daemon.log").read_text(), "the daemon")
        rss_before = rss_kib(daemon.pid)

        def add(number: int) -> str:
            uid = str(number)
            dn = f"uid={uid},{ACCOUNTS_BASE}"
            conn.add_s(dn, ldap.modlist.addModlist(account_attrs(uid, host.layout.backup_root)))
            return dn

        # Throughput: all requests at once, time until the last is added.
        started = time.perf_counter()
        dns = [add(3900000 + i) for i in range(burst)]
        watcher.wait_added(dns, timeout=600)
        took = max(watcher.added_at[dn] for dn in dns) - started
        # Latency: one request at a time.
        latencies = []
        for i in range(samples):
            sent = time.perf_counter()
            dn = add(3950000 + i)
            watcher.wait_added([dn], timeout=60)
            latencies.append(watcher.added_at[dn] - sent)
        rss_after = rss_kib(daemon.pid)
        daemon.terminate()
        daemon.wait(30)
        quantiles = statistics.quantiles(latencies, n=100)
        return {"burst": burst, "throughput": burst / took, "p50": quantiles[49] * 1000,
                "p95": quantiles[94] * 1000, "max": max(latencies) * 1000,
                "rss_before": rss_before, "rss_after": rss_after,
                "kib_per_account": (rss_after - rss_before) / (burst + samples)}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=500, help="burst size for throughput (default 500)")
    parser.add_argument("--latency-samples", type=int, default=100, help="sequential requests (default 100)")
    parser.add_argument("--configs", type=int, default=200, help="configurations per configtest mode (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="provisioning-bench-") as scratch:
        root = Path(scratch)
        ct = bench_configtest(args.configs, root / "configtest")
        print(f"rsnapshot configuration, {args.configs} accounts of one shape:")
        print(f"  CONFIGTEST = always: {ct['always'] * 1000:7.2f} ms/account ({ct['always_configtests']:.0f} configtests)")
        print(f"  CONFIGTEST = cached: {ct['cached'] * 1000:7.2f} ms/account ({ct['cached_configtests']:.0f} configtest)")
        print(f"  cached is {ct['always'] / ct['cached']:.1f}x faster")
        d = bench_daemon(args.accounts, args.latency_samples, root / "daemon")
        print(f"daemon against slapd on loopback (Perl original: ~49 adds/s, p50 ~22 ms, ~65 KB/account):")
        print(f"  throughput: {d['throughput']:7.1f} adds/s ({d['burst']} requests at once)")
        print(f"  latency:    p50 {d['p50']:.1f} ms, p95 {d['p95']:.1f} ms, max {d['max']:.1f} ms "
              f"({args.latency_samples} requests one at a time)")
        print(f"  memory:     {d['rss_before']} KiB -> {d['rss_after']} KiB resident, "
              f"{d['kib_per_account']:.2f} KiB per account")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LDAPNOINIT", "1")
    sys.exit(main())
