"""Section 8 of the benchmark: one interpreter against two, in the same burst.

    bench/run --interpreters        # about 2 minutes; --quick: well under one

Issue 20's burst goal is missed with cores left idle. This section measures
what worker processes (each with an interpreter and a GIL of its own) would
bring, without building them: the same burst of adds is taken by one daemon
with 2 x WORKERS workers, and by two daemons with WORKERS workers each, each
following a subtree of its own and taking half the burst (the same number of
requests in hand either way). The two take turns, round after round, against
one slapd, so the machine's drift falls on both. Each round's floor is
measured as section 2 does (cores / CPU per account of the commands, slapd
and the bench); the figures are the medians of the rounds.

Two daemons are an upper bound for worker processes: they split the main
loop too, and pay nothing to hand a request from one process to another.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from provisioning.sandbox.slapd import ACCOUNTS_BASE
from provisioning.testing import make_subtree, wait_until
from provisioning.testing.slapd import SERVICES_BASE

import bench

SHAPES = ("one interpreter", "two interpreters")


def run_interpreters(args, server, scratch: Path) -> dict:
    """The two shapes in turn, ``args.rounds`` rounds of ``args.interpreter_burst`` adds: each round and the medians."""
    bases = [ACCOUNTS_BASE, make_subtree(server, "second-interpreter")]
    w = bench.watcher(server, SERVICES_BASE)
    rounds: dict[str, list[dict[str, float]]] = {shape: [] for shape in SHAPES}
    first_uid = 6_800_000
    try:
        for number in range(args.rounds):
            order = SHAPES if number % 2 == 0 else SHAPES[::-1]
            for shape in order:
                uids = [str(first_uid + i) for i in range(args.interpreter_burst)]
                first_uid += args.interpreter_burst
                folder = scratch / f"interpreters-{number}-{shape.split()[0]}"
                figures = _round(args, server, w, folder, bases if shape == SHAPES[1] else bases[:1], uids)
                rounds[shape].append(figures)
                print(f"bench: round {number + 1}, {shape}: {figures['per_s']:.1f} adds/s, "
                      f"{figures['ratio']:.3f} of the floor", flush=True)
                # The rounds' folders stay until the run's folder goes: on ext4, removing
                # thousands of inodes slows the next ones' creation for minutes.
    finally:
        w.unbind_s()
    medians = {shape: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for shape, rs in rounds.items()}
    return {"rounds": rounds, "medians": medians, "workers": args.workers, "burst": args.interpreter_burst}


def _round(args, server, w, folder: Path, bases: list[str], uids: list[str]) -> dict[str, float]:
    """One burst taken by one daemon per base (2 x WORKERS for one base, WORKERS each for two)."""
    workers = args.workers * 2 // len(bases)
    daemons = []
    try:
        for i, base in enumerate(bases):
            host = bench.make_host(folder / f"host{i}", server, workers, base)
            daemons.append(bench.Daemon(host, folder / f"daemon{i}.log").start())
        for daemon in daemons:
            wait_until(lambda: "initial synchronisation" in daemon.log.read_text(), "a daemon", 120)
        budget = bench.Budget([d.proc.pid for d in daemons], server._proc.pid)
        started = time.perf_counter()
        conn = server.connect()
        try:
            # Every other add to the other subtree: both daemons get work from the start.
            dns = [bench.add_account(conn, bases[i % len(bases)], uid,
                                     daemons[i % len(daemons)].host.layout.backup_root) for i, uid in enumerate(uids)]
        finally:
            conn.unbind_s()
        bench.read_until_done(w, dns)
        per_s = len(dns) / (max(w.done_at[dn] for dn in dns) - started)
        spent = budget.per_account(len(dns))
    finally:
        for daemon in daemons:
            daemon.stop()
    floor = bench.honest_floor(spent)
    return {"per_s": per_s, "floor_per_s": floor, "ratio": per_s / floor, "daemon_ms": spent["daemon"],
            "idle_ms": spent["idle"], "others_ms": spent["commands"] + spent["slapd"] + spent["bench"]}


def interpreter_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """Section 8's medians, the two shapes side by side."""
    one, two = (r["medians"][shape] for shape in SHAPES)
    w = r["workers"]
    rows = [(f"{r['burst']} adds: 1 daemon, WORKERS {2 * w} / 2 daemons, WORKERS {w}",
             f"{one['per_s']:.1f}/s", f"{two['per_s']:.1f}/s", f"{two['per_s'] / one['per_s']:.2f}x "
             f"(medians of {len(r['rounds'][SHAPES[0]])} rounds each)"),
            ("  against the honest floor (goal >= 0.5)", f"{one['ratio']:.3f}", f"{two['ratio']:.3f}",
             f"floors {one['floor_per_s']:.0f}/s, {two['floor_per_s']:.0f}/s"),
            ("  daemon CPU per account", f"{one['daemon_ms']:.2f} ms", f"{two['daemon_ms']:.2f} ms",
             f"{two['daemon_ms'] / one['daemon_ms']:.2f}x"),
            ("  cores idle per account", f"{one['idle_ms']:.2f} ms", f"{two['idle_ms']:.2f} ms",
             f"others (commands + slapd + bench) {one['others_ms']:.2f} / {two['others_ms']:.2f} ms")]
    return [("figure", "one interpreter", "two interpreters", "ratio")] + rows
