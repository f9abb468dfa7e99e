"""Benchmark: provisioning-daemon audit over 10,000 and 100,000 accounts (time and memory).

    .venv/bin/python bench/audit.py                       # 10,000 then 100,000 accounts (about 10 minutes)
    .venv/bin/python bench/audit.py --accounts 2000 --json out.json

One slapd (syncprov, our schema) on loopback with N done account entries, and
a backup host with the N accounts as the daemon leaves them: account
directory, owner marker, jail, home, incoming/ (the account's), snapshots/,
the rsnapshot configuration the template renders. QUOTA_REPORT_CMD is a
stand-in that prints a repquota report of N users (the kernel here has no
quotas), so the audit compares every quota too. Then the real command,
``provisioning-daemon audit --json``, in a process of its own: its wall time,
CPU (user + system) and peak RSS, read from wait4(); and, with a few
configurations deleted, the same with --repair of those.

The audit reads the directory once (one search, streamed) and the host
once (one pass per bucket of BACKUP_ROOT, one read of the configurations'
folder, one quota report): nothing per account goes to LDAP.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ldap
import ldap.modlist

from provisioning.base.entry import Entry
from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd
from provisioning_backup_rsnapshot import account as accounts
from provisioning_backup_rsnapshot.quota import blocks
from provisioning_backup_rsnapshot.rsnapshot import Template, values_for
from provisioning_backup_rsnapshot.settings import find_template
from provisioning_backup_rsnapshot.testing import BackupHost, account_attrs

FIRST_UID = 4_100_000
DONE = {"sstProvisioningMode": "added", "sstProvisioningState": "20260101T000000Z",
        "sstProvisioningReturnValue": "0"}
# Adds in flight at once (pipelined: slapd, not the round trips, sets the pace).
WINDOW = 64
DRIFTED = 20


def add_entries(server, uids: list[str], backup_root: Path) -> None:
    conn = server.connect()
    try:
        pending = []
        for uid in uids:
            modlist = ldap.modlist.addModlist(account_attrs(uid, backup_root, **DONE))
            pending.append(conn.add_ext(f"uid={uid},{ACCOUNTS_BASE}", modlist))
            if len(pending) >= WINDOW:
                conn.result3(pending.pop(0))
        for msgid in pending:
            conn.result3(msgid)
    finally:
        conn.unbind_s()


def entries(server) -> list[Entry]:
    conn = server.connect()
    try:
        found = conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_ONELEVEL, "(uid=*)", ["*", "entryUUID"])
    finally:
        conn.unbind_s()
    return [Entry.from_ldap(dn, attrs) for dn, attrs in found]


def lay_out(host: BackupHost, found: list[Entry], template: Template, report: Path) -> None:
    """Each account as the daemon leaves it, and the quota report of them all."""
    root = str(host.layout.backup_root)
    lines = ["*** Report for user quotas on device /dev/stand-in",
             "User            used    soft    hard  grace    used  soft  hard  grace", "-" * 70]
    for entry in found:
        account = accounts.parse(entry, 1000)
        place = accounts.layout(account, root)
        incoming = Path(place.incoming)
        incoming.mkdir(parents=True, mode=0o755)
        os.chown(incoming, account.uid_number, account.gid_number)
        incoming.chmod(0o700)
        Path(place.snapshot_root).mkdir(mode=0o700)
        marker = Path(place.marker)
        marker.write_text(f"{entry.uuid}\n")
        marker.chmod(0o600)
        host.rsnapshot_config(account.uid).write_text(template.render(values_for(account, place)))
        limit = blocks(account.quota_bytes)
        lines.append(f"#{account.uid_number:<8} --       4 {limit:7} {limit:7}      0      1     0     0      0")
    report.write_text("\n".join(lines) + "\n")


# The command runs under a small Python that reports its child's rusage: a child forked straight
# from this process (which holds every entry) would inherit this process's peak RSS (Linux keeps
# the high-water mark across fork and exec), and the figure would be the benchmark's, not the audit's.
MEASURE = ("import json, resource, subprocess, sys; code = subprocess.call(sys.argv[2:], stderr=subprocess.DEVNULL); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "open(sys.argv[1], 'w').write(json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss])); sys.exit(code)")


def audit(host: BackupHost, *args: str) -> dict:
    """One run of the command: wall time, CPU, peak RSS, and what it said."""
    figures = host.root / "rusage.json"
    argv = [sys.executable, "-m", "provisioning", "audit", "--json", *args, "-c", str(host.config),
            "-g", str(host.global_config)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(figures), *argv], stdout=subprocess.PIPE)
    seconds = time.perf_counter() - started
    cpu, maxrss = json.loads(figures.read_text())
    answer = json.loads(proc.stdout)
    return {"seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "peak_rss_mib": round(maxrss / 1024, 1),
            "exit_code": proc.returncode, "compared": answer["entries"]["compared"],
            "findings": len(answer["findings"]), "repairs": len(answer.get("repairs", []))}


def run(args) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="provisioning-bench-audit-", dir=args.scratch))
    print(f"bench/audit: working in {scratch}", file=sys.stderr)
    server = StoneySlapd(rundir=str(scratch / "slapd"))
    server.start()
    results: dict = {}
    try:
        host = BackupHost(scratch / "host", server, ACCOUNTS_BASE)
        report = scratch / "repquota.txt"
        stand_in = scratch / "host/bin/repquota"
        stand_in.write_text(f"#!/bin/sh\nexec cat {report}\n")
        stand_in.chmod(0o755)
        host.set("Backup", QUOTA_REPORT_CMD=stand_in)
        host.set("Global", LOG_DEBUG=0, LOG_INFO=0)
        template = Template.load(find_template("rsnapshot.account.template", host.config.parent))
        made = 0
        for total in sorted(args.accounts):
            started = time.perf_counter()
            add_entries(server, [str(FIRST_UID + n) for n in range(made, total)], host.layout.backup_root)
            loaded = time.perf_counter() - started
            found = entries(server)
            shutil.rmtree(host.layout.backup_root)
            host.layout.backup_root.mkdir()
            for path in host.layout.rsnapshot_dir.iterdir():
                path.unlink()
            lay_out(host, found, template, report)
            made = total
            print(f"bench/audit: {total} accounts in the directory ({loaded:.0f} s to add) and on the host",
                  file=sys.stderr)
            clean = audit(host)
            for entry in found[:DRIFTED]:
                host.rsnapshot_config(entry.get("uid")).unlink()
            repaired = audit(host, "--repair")
            results[str(total)] = {"clean": clean, "repair": repaired}
            print(f"bench/audit: {total}: {json.dumps(results[str(total)])}", file=sys.stderr)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def table(results: dict) -> list[str]:
    lines = ["| accounts | audit: wall | CPU | peak RSS | --repair of 20 configurations: wall | peak RSS |",
             "|---:|---:|---:|---:|---:|---:|"]
    for total, r in sorted(results.items(), key=lambda item: int(item[0])):
        c, p = r["clean"], r["repair"]
        lines.append(f"| {int(total):,} | {c['seconds']} s | {c['cpu_s']} s | {c['peak_rss_mib']} MiB | "
                     f"{p['seconds']} s | {p['peak_rss_mib']} MiB |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--scratch", default="/var/lib" if os.geteuid() == 0 else None,
                        help="where the run works (default: /var/lib as root, a folder only root controls, "
                             "as BACKUP_ROOT is)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch folder")
    parser.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = parser.parse_args()
    results = run(args)
    for total, r in results.items():
        assert r["clean"]["exit_code"] == 0 and r["clean"]["compared"] == int(total), r
        assert r["repair"]["exit_code"] == 0 and r["repair"]["repairs"] == DRIFTED, r
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
