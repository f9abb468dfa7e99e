"""Prometheus metrics: scraped over HTTP from a running daemon; off by default; loopback only."""
from __future__ import annotations

import math
import os
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from provisioning.observe.metrics import lag_seconds
from provisioning.sandbox.slapd import ACCOUNTS_BASE, StoneySlapd

from helpers import DaemonProcess, Directory, Host, wait_until
from test_mail import free_port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


def test_counters_and_histogram_after_a_few_requests(host, directory):
    port = free_port()
    host.set("Service", METRICS_PORT=port)
    started = time.time()
    daemon = DaemonProcess(host).start()
    directory.wait_mode(directory.add("3723701"), "added")
    directory.wait_mode(directory.add("3723702"), "added")
    refused = directory.add("3723703", sstProvisioningMode="delete")            # still active: refused
    directory.wait_return_value(refused, 101)
    host.fail_quota(6)
    directory.wait_return_value(directory.add("3723704"), 6)

    # The last outcome is in the directory a moment before the main loop counts the request.
    samples = wait_until(lambda: (s := scrape(port)) and value(
        s, "provisioning_requests_total", verb="add", outcome="failed") == 1 and s, "the last request counted")
    assert value(samples, "provisioning_requests_total", verb="add", outcome="done") == 2
    assert value(samples, "provisioning_requests_total", verb="add", outcome="failed") == 1
    assert value(samples, "provisioning_requests_total", verb="delete", outcome="refused") == 1
    assert value(samples, "provisioning_requests_total", verb="modify", outcome="done") == 0
    assert value(samples, "provisioning_request_duration_seconds_count", verb="add") == 3
    assert value(samples, "provisioning_request_duration_seconds_count", verb="delete") == 1
    assert value(samples, "provisioning_request_duration_seconds_sum", verb="add") > 0
    # Every observation falls in some bucket: +Inf holds them all.
    assert value(samples, "provisioning_request_duration_seconds_bucket", verb="add", le="+Inf") == 3
    assert started <= value(samples, "provisioning_last_request_done_timestamp_seconds") <= time.time()
    assert value(samples, "provisioning_reconnects_total") == 0
    assert value(samples, "provisioning_directory_writable") == 1
    assert value(samples, "provisioning_store_writable") == 1
    assert value(samples, "provisioning_synchronising") == 0
    assert value(samples, "provisioning_info", service="Backup/Rsnapshot", version="0.1.0") == 1
    assert value(samples, "provisioning_entries_seen_total") >= 4
    # Once the echoes of its writes are handled, nothing waits and the cookie covers what was seen.
    wait_until(lambda: (s := scrape(port)) and value(s, "provisioning_requests_waiting") == 0
               and value(s, "provisioning_lag_seconds") == 0, "nothing waiting and no lag")
    # Loopback only.
    assert _listening_ports(daemon.proc.pid) == {("0100007F", port)}
    assert daemon.stop() == 0


def test_metrics_are_off_by_default(host, directory):
    daemon = DaemonProcess(host).start()
    directory.wait_mode(directory.add("3723701"), "added")
    assert _listening_ports(daemon.proc.pid) == set()
    assert "metrics for Prometheus" not in daemon.text()
    assert daemon.stop() == 0


def test_a_port_in_use_is_logged_and_the_daemon_works_on(host, directory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host.set("Service", METRICS_PORT=taken.getsockname()[1])
        daemon = DaemonProcess(host).start()
        assert "[Service] METRICS_PORT: cannot serve metrics on 127.0.0.1 port" in daemon.text()
        assert "going on without metrics" in daemon.text()
        directory.wait_mode(directory.add("3723701"), "added")
        assert daemon.stop() == 0


def test_an_address_that_is_no_ip_address_is_a_configuration_error(host):
    host.set("Service", METRICS_PORT=free_port(), METRICS_ADDRESS="localhost")
    daemon = DaemonProcess(host).start(wait_ready=False)
    assert daemon.wait_exit() == 3
    assert "[Service] METRICS_ADDRESS: 'localhost' is not an IP address" in daemon.text()


def test_reconnects_and_directory_writable_follow_an_outage(tmp_path):
    slapd = StoneySlapd(rundir=str(tmp_path / "slapd"))
    slapd.start()
    try:
        host = Host(tmp_path / "host", slapd, ACCOUNTS_BASE)
        host.set_global("Operation Mode", ATTEMPTS=0, SLEEP=0.2)
        port = free_port()
        host.set("Service", METRICS_PORT=port)
        daemon = DaemonProcess(host).start()
        slapd.terminate()
        slapd.wait()
        daemon.wait_for(r"attempt 1 to reach LDAP failed")
        samples = scrape(port)                                # served while LDAP is away
        assert value(samples, "provisioning_directory_writable") == 0
        assert value(samples, "provisioning_reconnects_total") == 0
        slapd.resume()
        daemon.wait_for(r"LDAP answers again")
        directory = Directory(slapd, ACCOUNTS_BASE, host.layout.backup_root)
        directory.wait_mode(directory.add("3723701"), "added")
        # The outcome is in the directory a moment before the main loop counts the request.
        samples = wait_until(lambda: (s := scrape(port)) and value(
            s, "provisioning_requests_total", verb="add", outcome="done") == 1 and s, "the request counted")
        assert value(samples, "provisioning_reconnects_total") == 1
        assert value(samples, "provisioning_directory_writable") == 1
        assert value(samples, "provisioning_requests_total", verb="add", outcome="done") == 1
        assert daemon.stop() == 0
    finally:
        slapd.stop()


def test_lag_compares_the_newest_change_seen_with_the_cookie_of_its_server():
    cookie = "rid=001,csn=20261127120000.000000Z#000000#001#000000"
    assert lag_seconds(None, cookie) == 0
    assert lag_seconds("20261127115959.000000Z#000000#001#000000", cookie) == 0        # covered
    assert lag_seconds("20261127120130.500000Z#000000#001#000000", cookie) == 90.5
    assert math.isnan(lag_seconds("20261127120130.000000Z#000000#002#000000", cookie))  # no CSN of sid 2
    assert math.isnan(lag_seconds("20261127120130.000000Z#000000#001#000000", None))
