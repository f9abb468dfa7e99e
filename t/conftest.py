"""Fixtures: one real slapd (syncprov, our schema) per session; a subtree and a host per test."""
from __future__ import annotations

import hashlib
import os

import ldap
import pytest

from provisioning.sandbox.slapd import BACKUP_BASE, StoneySlapd

from helpers import DaemonProcess, Directory, Host
from gateway import sshd  # noqa: F401 - the session's CLISSH gateway, a fixture

# The tests must not read ~/.ldaprc or /etc/ldap/ldap.conf.
os.environ.setdefault("LDAPNOINIT", "1")


# Tests marked with_workers run twice: one request at a time, and four at a time
# (every guarantee must hold with workers; the default is the number of CPUs).
WORKER_COUNTS = [1, 4]


def pytest_configure(config):
    config.addinivalue_line("markers", "with_workers: run with [Service] WORKERS = 1 and = 4")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("with_workers") and "workers" in metafunc.fixturenames:
        metafunc.parametrize("workers", WORKER_COUNTS, indirect=True, ids=lambda n: f"workers{n}")


@pytest.fixture(autouse=True)
def workers(request):
    """[Service] WORKERS of every Host this test makes (None: the configuration's default)."""
    count = getattr(request, "param", None)
    Host.default_workers = count
    yield count
    Host.default_workers = None


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    server = StoneySlapd(rundir=str(tmp_path_factory.mktemp("slapd")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def subtree(slapd, request) -> str:
    """A fresh SERVICE_SUBTREE for this test, so tests never see each other's entries."""
    name = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    dn = f"ou={name},{BACKUP_BASE}"
    conn = slapd.connect()
    try:
        conn.add_s(dn, [("objectClass", [b"organizationalUnit"]), ("ou", [name.encode()])])
    except ldap.ALREADY_EXISTS:
        pass
    finally:
        conn.unbind_s()
    return dn


@pytest.fixture
def host(tmp_path, slapd, subtree) -> Host:
    return Host(tmp_path / "host", slapd, subtree)


@pytest.fixture
def directory(slapd, subtree, host) -> Directory:
    return Directory(slapd, subtree, host.layout.backup_root)


@pytest.fixture
def daemon(host):
    """A started daemon for the test's host, stopped (and checked) afterwards."""
    process = DaemonProcess(host).start()
    yield process
    if process.proc.poll() is None:
        assert process.stop() == 0, process.text()[-2000:]


# Figures the fault tests measure (requests in flight, lost, done twice, time to
# recover), printed at the end of the run for the closing notes.
_REPORTS: list[tuple[str, dict]] = []


@pytest.fixture
def report():
    def add(name: str, **figures) -> None:
        _REPORTS.append((name, figures))
    return add


def pytest_terminal_summary(terminalreporter):
    if not _REPORTS:
        return
    terminalreporter.section("fault reports")
    for name, figures in _REPORTS:
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
