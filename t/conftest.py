"""Fixtures: one real slapd (syncprov, our schema) per session; a subtree and a host per test.

The slapd is the pytest plugin's (provisioning.testing.plugin, the one plugin
authors use): ``slapd`` is ``provisioning_slapd`` under its old name, so the
session starts one server, not two.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pytest

from provisioning.testing import BACKUP_BASE, make_subtree, subtree_name

from helpers import DaemonProcess, Directory, Host
from gateway import gateway_sshd, sshd  # noqa: F401 - the CLISSH gateways, fixtures

# Loaded by its pytest11 entry point when provisioning is installed; named here
# too, so that the suite runs from a checkout that is not (a no-op otherwise).
pytest_plugins = ("provisioning.testing.plugin",)

# The tests must not read ~/.ldaprc or /etc/ldap/ldap.conf.
os.environ.setdefault("LDAPNOINIT", "1")


# Tests marked with_workers run twice: one request at a time, and four at a time
# (every guarantee must hold with workers; the default is the number of CPUs).
WORKER_COUNTS = [1, 4]


# Fixtures that start a server (slapd, sshd) or need one: a test that uses none of
# them, and is not marked slow, is in the fast tier (bin/test --quick: -m quick).
SERVER_FIXTURES = {"slapd", "subtree", "host", "directory", "daemon", "sshd", "gateway_sshd",
                   "provisioning_slapd", "provisioning_subtree", "provisioning_entries", "provisioning_service",
                   "provisioning_daemon"}


def pytest_configure(config):
    config.addinivalue_line("markers", "with_workers: run with [Service] WORKERS = 1 and = 4")
    config.addinivalue_line("markers", "slow: starts a server or a daemon of its own (not in the fast tier)")
    config.addinivalue_line("markers", "quick: the fast tier: no server, no daemon (set by conftest)")
    if not hasattr(config, "workerinput"):          # the controller (or a run without xdist)
        # Here, not at session start: xdist starts its workers at session start,
        # and they must inherit where to write their fault figures.
        handle, path = tempfile.mkstemp(prefix="provisioning-fault-reports-", suffix=".jsonl")
        os.close(handle)
        os.environ[REPORTS_VARIABLE] = path


# Modules whose tests start servers, daemon pairs or builds of their own, without the fixtures above.
SLOW_MODULES = {"test_acl", "test_alerts", "test_checkout_sandbox", "test_log_wording", "test_metrics",
                "test_secrets", "test_deb", "test_failover", "test_gateway_outage", "test_ha",
                "test_ha_mirror", "test_ha_soak", "test_installed", "test_jail_builder", "test_jail_images",
                "test_container_systemd", "test_container_debian13",
                "test_jail_job", "test_outcomes", "test_plugin_guide", "test_reliability", "test_removals",
                "test_sandbox", "test_scaffold", "test_systemd", "test_testing_plugin"}


def pytest_collection_modifyitems(items):
    for item in items:
        slow = item.get_closest_marker("slow") is not None or item.module.__name__ in SLOW_MODULES
        if not slow and not SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.quick)


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
def slapd(provisioning_slapd):
    return provisioning_slapd


@pytest.fixture
def subtree(slapd, request) -> str:
    """A fresh SERVICE_SUBTREE for this test, so tests never see each other's entries."""
    return make_subtree(slapd, subtree_name(request.node.nodeid), BACKUP_BASE)


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
# recover), printed at the end of the run for the closing notes. Tests may run
# in several pytest-xdist workers: each appends to one file the run names.
REPORTS_VARIABLE = "PROVISIONING_FAULT_REPORTS"


@pytest.fixture
def restore_logging():
    """The root logger's handlers and level as they were before the test (for tests of log.setup)."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in saved:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.fixture
def report():
    def add(name: str, **figures) -> None:
        path = os.environ.get(REPORTS_VARIABLE)
        if path:
            with open(path, "a") as out:
                out.write(json.dumps({"name": name, **figures}) + "\n")
    return add


def pytest_terminal_summary(terminalreporter):
    if hasattr(terminalreporter.config, "workerinput"):
        return              # an xdist worker must not take the controller's file away
    path = os.environ.get(REPORTS_VARIABLE)
    if not path or not os.path.exists(path):
        return
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    os.unlink(path)
    if lines:
        terminalreporter.section("fault reports")
        for figures in lines:
            name = figures.pop("name")
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
