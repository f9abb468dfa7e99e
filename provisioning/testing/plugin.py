"""The pytest plugin for plugin authors: fixtures prefixed ``provisioning_``, inert until asked for.

Loaded by pytest through the ``pytest11`` entry point of the provisioning
distribution (or ``pytest_plugins = ["provisioning.testing.plugin"]`` in a
conftest.py, when provisioning runs from a checkout). Importing it costs
nothing and changes nothing: python-ldap, slapd and the daemon are only
touched by a fixture a test asks for (one autouse fixture kills, after each test,
any daemon a failed test left running; it does nothing when none was started).

- ``provisioning_slapd`` (session): a throwaway slapd on 127.0.0.1 with our
  schema, syncprov and the stoney base tree; its ``ldap_uri``, ``root_dn``,
  ``root_pw`` and ``connect()``.
- ``provisioning_subtree``: a fresh ``ou=...,ou=services,dc=stoney-cloud,dc=org``
  per test, so tests never see each other's entries.
- ``provisioning_entries``: :class:`provisioning.testing.Entries` below that
  subtree: ``add(uid, **attributes)``, ``request(dn, mode)``, ``modify``,
  ``remove``, ``get``, ``wait_mode(dn, mode)``, ``wait_return_value``.
- ``provisioning_service``: a factory ``(plugin, sections=None, *, modus="selfcare")``
  writing a service configuration (and Global.conf) for ``plugin``
  ("SERVICE/TYPE") that serves the test's subtree:
  :class:`provisioning.testing.ServiceFiles`.
- ``provisioning_daemon``: a factory ``(plugin_or_files, sections=None, *, modus="selfcare",
  args=(), wait_ready=True, python=None)`` that starts the daemon in a
  subprocess and returns :class:`provisioning.testing.DaemonProcess`. At the
  end of the test every daemon whose exit code the test did not take
  (``stop()``, ``wait_exit()``) is stopped, and one that does not exit 0 (or
  ended on its own with another code) fails the test.
"""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True)
def _provisioning_reap_daemons():
    """After every test: no daemon a failed test started keeps running (see reap_leftovers)."""
    yield
    module = sys.modules.get("provisioning.testing.daemon")   # not imported: nothing was started
    if module is not None:
        module.reap_leftovers()


@pytest.fixture(scope="session")
def provisioning_slapd(tmp_path_factory):
    """A throwaway slapd with our schema and syncprov, for the whole session."""
    # Not the machine's ~/.ldaprc or /etc/ldap/ldap.conf: set before libldap first reads its options.
    os.environ.setdefault("LDAPNOINIT", "1")
    from provisioning.testing.slapd import Slapd

    server = Slapd(rundir=str(tmp_path_factory.mktemp("provisioning-slapd")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def provisioning_subtree(provisioning_slapd, request) -> str:
    """A SERVICE_SUBTREE of this test's own (``ou=t<hash>,ou=services,...``)."""
    from provisioning.testing.slapd import make_subtree, subtree_name

    return make_subtree(provisioning_slapd, subtree_name(request.node.nodeid))


@pytest.fixture
def provisioning_entries(provisioning_slapd, provisioning_subtree):
    """Writes entries below the test's subtree and waits for their outcome."""
    from provisioning.testing.entries import Entries

    entries = Entries(provisioning_slapd, provisioning_subtree)
    yield entries
    entries.close()


@pytest.fixture
def provisioning_service(provisioning_slapd, provisioning_subtree, tmp_path):
    """Factory: the configuration files of a daemon for ``plugin`` ("SERVICE/TYPE") on the test's subtree."""
    from provisioning.testing.configs import ServiceFiles

    made: list[ServiceFiles] = []

    def make(plugin: str, sections: dict | None = None, *, modus: str = "selfcare") -> ServiceFiles:
        root = tmp_path / f"provisioning-{len(made)}"
        files = ServiceFiles(root, provisioning_slapd, provisioning_subtree, plugin, sections, modus=modus)
        made.append(files)
        return files
    return make


@pytest.fixture
def provisioning_daemon(provisioning_service):
    """Factory: a started daemon for a plugin ("SERVICE/TYPE", or ServiceFiles); stopped after the test."""
    from provisioning.testing.configs import ServiceFiles
    from provisioning.testing.daemon import DaemonProcess

    started: list[DaemonProcess] = []

    def start(plugin, sections: dict | None = None, *, modus: str = "selfcare", args=(),
              wait_ready: bool = True, python=None) -> DaemonProcess:
        files = plugin if isinstance(plugin, ServiceFiles) else provisioning_service(plugin, sections, modus=modus)
        daemon = DaemonProcess(files.config, files.global_config, files.root, *args,
                               log_name=f"daemon-{len(started)}.log", python=python)
        daemon.files = files
        started.append(daemon)
        return daemon.start(wait_ready=wait_ready)
    yield start
    failed = []
    for daemon in started:
        if not daemon.collected:
            code = daemon.stop()
            if code != 0:
                failed.append(f"the daemon of {daemon.config} exited {code} ({daemon.log_path}):\n"
                              f"{daemon.text()[-2000:]}")
    assert not failed, "\n".join(failed)
