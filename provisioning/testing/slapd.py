"""The throwaway slapd of the tests and the sandbox, and a fresh subtree per test.

The server itself is provisioning.sandbox.slapd.StoneySlapd (python-ldap's
slapdtest with our schema, the syncprov overlay and the stoney base tree),
re-exported here so that tests depend on provisioning.testing only.
"""
from __future__ import annotations

import hashlib

import ldap

from provisioning.sandbox.slapd import ACCOUNTS_BASE, BACKUP_BASE, SUFFIX, StoneySlapd

__all__ = ["ACCOUNTS_BASE", "BACKUP_BASE", "SERVICES_BASE", "SUFFIX", "Slapd", "make_subtree", "subtree_name"]

# The base tree every Slapd has: dc=stoney-cloud,dc=org > ou=services > ou=backup > ou=accounts.
SERVICES_BASE = f"ou=services,{SUFFIX}"
# StoneySlapd in ``rundir``; when that is too deep for slapd's ldapi socket
# (a long test name, a nested pytest's --basetemp), in a short folder of its own.
Slapd = StoneySlapd


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
