"""The CLISSH gateway of the tests: provisioning.testing.sshd.Sshd as fixtures.

t/conftest.py makes them available to every test module:

- ``sshd``: the session's gateway, as a [Gateway] section (HOST, USER,
  DSA_FILE, PORT, KNOWN_HOSTS);
- ``gateway_sshd``: a gateway of the test's own, the Sshd itself, for tests
  that kill it and start it again (``kill()``, ``start()``).
"""
from __future__ import annotations

import os

import pytest

from provisioning.testing.sshd import Sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """The running sshd as a [Gateway] section: HOST, USER, DSA_FILE, PORT, KNOWN_HOSTS."""
    if os.geteuid() != 0:
        pytest.skip("the gateway logs in over ssh as root (CI runs as root)")
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server.gateway
    server.stop()


@pytest.fixture
def gateway_sshd(tmp_path_factory):
    """An sshd of this test's own (Debian's default limits), which it may kill and start again."""
    if os.geteuid() != 0:
        pytest.skip("the gateway logs in over ssh as root (CI runs as root)")
    server = Sshd(tmp_path_factory.mktemp("gateway")).start()
    yield server
    if server.running:
        server.kill()
