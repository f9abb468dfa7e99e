"""An HA pair on two mirror-mode providers: the providers, the daemons, and what the tests count.

Both daemons serve one backup host: they share its BACKUP_ROOT, its stand-in
commands (so ``host.quota_calls()`` counts the work of both) and the folder of
their state files, each with files of its own (COOKIE_FILE, store, lock).
"""
from __future__ import annotations

import re
import time
from collections import Counter

import ldap
import ldap.modlist
import pytest

from provisioning.sandbox.slapd import ACCOUNTS_BASE, ProviderPair

from helpers import DaemonProcess, Host, account_attrs, wait_until

# Each request's claim and outcome, as the daemon logs them.
CLAIMED = re.compile(r"uid=(\d+),\S*: add request claimed \(")
DONE = re.compile(r"uid=(\d+),\S*: add done in ")
CONFIRMED = re.compile(r": claim confirmed in ([\d.]+) ms")


def dn(uid: str) -> str:
    return f"uid={uid},{ACCOUNTS_BASE}"


def exists(conn, entry: str) -> bool:
    try:
        conn.search_s(entry, ldap.SCOPE_BASE, attrlist=["1.1"])
        return True
    except ldap.NO_SUCH_OBJECT:
        return False


@pytest.fixture
def pair(tmp_path):
    """Two slapd in mirror mode, the base tree on both (import it into a test module to use it)."""
    providers = ProviderPair(str(tmp_path / "pair"))
    providers.start()
    wait_replicated(providers)
    yield providers
    providers.stop()


def wait_replicated(pair: ProviderPair) -> None:
    """Until the base tree, loaded on the first provider, is on the second."""
    conn = pair.second.connect()
    try:
        wait_until(lambda: exists(conn, ACCOUNTS_BASE), "the base tree to replicate")
    finally:
        conn.unbind_s()


def twin(host: Host, name: str, servers: str | None = None) -> Host:
    """A second daemon for ``host``: its own state files in the same folder, SERVER ``servers`` if given."""
    other = Host(host.layout.root.parent / name, host.slapd, host.subtree)
    other.service = {section: dict(keys) for section, keys in host.service.items()}
    other.global_ = {section: dict(keys) for section, keys in host.global_.items()}
    other.set("Database", COOKIE_FILE=host.layout.cookie.parent / f"{name}.cookie")
    if servers is not None:
        other.set("Database", SERVER=servers)
    return other


def states(server) -> Counter:
    """How many accounts stand at each (mode, return value) on ``server``; None when it does not answer."""
    try:
        conn = server.connect()
    except ldap.LDAPError:
        return Counter()
    try:
        found = conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_ONELEVEL, "(uid=*)",
                              ["sstProvisioningMode", "sstProvisioningReturnValue"])
    finally:
        conn.unbind_s()
    return Counter((a["sstProvisioningMode"][0].decode(), a.get("sstProvisioningReturnValue", [b"-"])[0].decode())
                   for _, a in found)


def answered(pair: ProviderPair, count: int) -> Counter | None:
    """The states of ``count`` requests once every one has an outcome (added, or a return value) and both
    providers agree; None before."""
    first, second = (states(server) for server in pair.servers)
    done = sum(n for (mode, value), n in first.items() if mode == "added" or value != "-")
    return first if first == second and done == count else None


class Portal:
    """Writes add requests the way the portal does, to the provider a test names."""

    def __init__(self, host: Host) -> None:
        self.backup_root = host.layout.backup_root

    def add(self, server, uid: str, timeout: float = 5, **attrs) -> None:
        """An add request for ``uid`` on ``server`` (``attrs`` replace attributes of account_attrs)."""
        conn = ldap.initialize(server.ldap_uri)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, timeout)
        conn.set_option(ldap.OPT_TIMEOUT, timeout)
        try:
            conn.simple_bind_s(server.root_dn, server.root_pw)
            conn.add_s(dn(uid), ldap.modlist.addModlist(account_attrs(uid, self.backup_root, **attrs)))
        finally:
            conn.unbind_s()


def worked(host: Host) -> Counter:
    """How often each uid's host work ran (setquota, which every add runs once), by either daemon."""
    return Counter(call[1] for call in host.quota_calls())


def in_hand(daemon: DaemonProcess) -> set[str]:
    """uids this daemon (one run of it, by its log) claimed and had not answered: its work in hand."""
    text = daemon.text()
    return set(CLAIMED.findall(text)) - set(DONE.findall(text))


def confirmations(*daemons: DaemonProcess) -> dict[str, float]:
    """p50 and p95 of the milliseconds the daemons' claims took to be confirmed (their debug log)."""
    ms = sorted(float(m) for daemon in daemons for m in CONFIRMED.findall(daemon.text()))
    if not ms:
        return {}
    return {"confirm_ms_p50": ms[len(ms) // 2], "confirm_ms_p95": ms[int(len(ms) * 0.95)]}


def settle(pair: ProviderPair, count: int, timeout: float,
           daemons: tuple[DaemonProcess, ...] = ()) -> tuple[Counter, float]:
    """Wait until every request has an outcome on both providers, alike; their states and the seconds it took.

    On a timeout the failure names the open requests, their claims on each
    provider and what ``daemons`` (every run of each, killed ones too) logged of them.
    """
    started = time.monotonic()
    try:
        found = wait_until(lambda: answered(pair, count), f"all {count} requests answered on both providers",
                           timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}: {[dict(states(server)) for server in pair.servers]}\n"
                             + open_requests(pair, daemons)) from None
    return found, time.monotonic() - started


def open_requests(pair: ProviderPair, daemons: tuple[DaemonProcess, ...], shown: int = 5) -> str:
    """The first ``shown`` requests without an outcome: each provider's copy and the daemons' log lines."""
    copies = [_open_copies(server) for server in pair.servers]
    lines = []
    for uid in sorted(set().union(*copies))[:shown]:
        lines.append(f"--- uid {uid}")
        lines += [f"provider {n + 1}: {found.get(uid, 'no open copy')}" for n, found in enumerate(copies)]
        for daemon in daemons:
            said = [line for line in daemon.text().splitlines() if f"uid={uid}," in line]
            lines += [f"{daemon.log_path.name}: {line}" for line in said[-12:]]
    return "\n".join(lines)


def _open_copies(server) -> dict[str, str]:
    """uid -> mode, entryCSN and claim of each account on ``server`` without an outcome."""
    try:
        conn = server.connect()
        found = conn.search_s(ACCOUNTS_BASE, ldap.SCOPE_ONELEVEL, "(&(uid=*)(!(sstProvisioningReturnValue=*)))",
                              ["uid", "sstProvisioningMode", "entryCSN", "sstProvisioningExecutionTime"])
        conn.unbind_s()
    except ldap.LDAPError as err:
        return {"?": f"not readable: {err}"}
    return {a["uid"][0].decode(): str({k: [v.decode() for v in vs] for k, vs in a.items() if k != "uid"})
            for _, a in found}
