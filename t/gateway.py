"""The CLISSH gateway of the tests: provisioning.testing.sshd.Sshd as a session fixture.

t/conftest.py makes ``sshd`` a session fixture; it yields the [Gateway] section.
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
