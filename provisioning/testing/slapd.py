"""The throwaway slapd of the tests and the sandbox, and a fresh subtree per test.

The server itself is provisioning.sandbox.slapd.StoneySlapd (python-ldap's
slapdtest with our schema, the syncprov overlay and the stoney base tree),
re-exported here so that tests depend on provisioning.testing only.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import ldap

from provisioning.sandbox.slapd import ACCOUNTS_BASE, BACKUP_BASE, SUFFIX, StoneySlapd

__all__ = ["ACCOUNTS_BASE", "BACKUP_BASE", "SERVICES_BASE", "SUFFIX", "Slapd", "make_subtree", "subtree_name"]

# The base tree every Slapd has: dc=stoney-cloud,dc=org > ou=services > ou=backup > ou=accounts.
SERVICES_BASE = f"ou=services,{SUFFIX}"
# slapdtest loads the configuration through a unix socket in the run folder:
# <rundir>/python-ldap-test-<port>/ldapi, and a socket path has at most 107 bytes.
SOCKET_PATH_MAX = 107
_SOCKET_SUFFIX = "/python-ldap-test-65535/ldapi"


class Slapd(StoneySlapd):
    """StoneySlapd in ``rundir``, or, when that is too deep for slapd's socket, in a short folder of its own.

    A test's tmp_path can be long (a long test name, a --basetemp of a nested
    pytest run); slapd then fails to start. The fallback is a new folder from
    ``tempfile.mkdtemp`` (in $TMPDIR, /tmp), removed again by stop() once
    slapd's own run folder is gone.
    """

    def __init__(self, rundir: str | None = None) -> None:
        self._short_rundir = None
        folder = os.path.abspath(rundir or tempfile.gettempdir())
        if len(os.fsencode(folder + _SOCKET_SUFFIX)) > SOCKET_PATH_MAX:
            folder = self._short_rundir = tempfile.mkdtemp(prefix="provisioning-slapd-")
        super().__init__(rundir=folder)

    def stop(self) -> None:
        super().stop()
        if self._short_rundir is not None:
            try:
                os.rmdir(self._short_rundir)        # empty by now; anything left is kept, not deleted
            except OSError:
                pass


def subtree_name(test_id: str) -> str:
    """A short name that is the same for the same test and differs between tests."""
    return "t" + hashlib.sha1(test_id.encode()).hexdigest()[:12]


def make_subtree(server: StoneySlapd, name: str, parent: str = SERVICES_BASE) -> str:
    """``ou=<name>,<parent>``, created if missing: a SERVICE_SUBTREE of a test's own.

    :return: its DN.
    """
    dn = f"ou={name},{parent}"
    conn = server.connect()
    try:
        conn.add_s(dn, [("objectClass", [b"organizationalUnit"]), ("ou", [name.encode()])])
    except ldap.ALREADY_EXISTS:
        pass
    finally:
        conn.unbind_s()
    return dn
