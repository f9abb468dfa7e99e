"""Writing entries the way a portal (or an operator with ldapmodify) does, and waiting for outcomes."""
from __future__ import annotations

import re
from typing import Any

import ldap
import ldap.dn
import ldap.modlist

from provisioning.testing.wait import DEADLINE, wait_until

STAMP = re.compile(r"^\d{8}T\d{6}Z$")
# The selfcare protocol's attributes (and their object class): request_attrs(selfcare=False) leaves them out.
SELFCARE = ("sstProvisioningMode", "sstProvisioningState", "sstProvisioningExecutionDate")


def encode(attrs: dict[str, Any]) -> dict[str, list[bytes]]:
    """``{name: value or [values]}`` as python-ldap wants it; None drops a name."""
    out = {}
    for name, value in attrs.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        out[name] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    return out


def request_attrs(uid: str, *, selfcare: bool = True, **overrides: Any) -> dict[str, Any]:
    """The smallest entry that asks for work: an ``account`` with an add request (mode add, state 0, date 0).

    ``selfcare=False`` gives an entry without the sstProvisioning attributes
    (for MODUS LDAP). ``overrides`` replace attributes; None drops one.
    """
    attrs: dict[str, Any] = {
        "objectClass": ["account", "sstProvisioning", "sstRelationship"],
        "uid": uid, "sstIsActive": "TRUE",
        "sstProvisioningMode": "add", "sstProvisioningState": "0", "sstProvisioningExecutionDate": "0",
    }
    if not selfcare:
        attrs["objectClass"] = ["account", "sstRelationship"]
        for name in SELFCARE:
            del attrs[name]
    attrs.update(overrides)
    return attrs


class Entries:
    """Root's connection to the test slapd, writing below one subtree."""

    def __init__(self, server, subtree: str) -> None:
        self.conn = server.connect()
        self.subtree = subtree

    def close(self) -> None:
        self.conn.unbind_s()

    def dn(self, uid: str) -> str:
        """``uid=<uid>,<subtree>``, the uid escaped as a DN value."""
        return f"uid={ldap.dn.escape_dn_chars(uid)},{self.subtree}"

    def attributes(self, uid: str, **overrides: Any) -> dict[str, list[bytes]]:
        """What add() writes for ``uid`` (subclasses give other defaults)."""
        return encode(request_attrs(uid, **overrides))

    def add(self, uid: str, **overrides: Any) -> str:
        """Add ``uid=<uid>,<subtree>`` (an add request unless overridden); its DN."""
        dn = self.dn(uid)
        self.conn.add_s(dn, ldap.modlist.addModlist(self.attributes(uid, **overrides)))
        return dn

    def modify(self, dn: str, **changes: Any) -> None:
        """Replace attributes (a list for several values); None removes one."""
        mods = [(ldap.MOD_REPLACE, name, None if value is None else encode({name: value})[name])
                for name, value in changes.items()]
        self.conn.modify_s(dn, mods)

    def request(self, dn: str, mode: str, **changes: Any) -> None:
        """Write a request the way the portal does: mode, state 0, date 0 (``date=`` another), plus changes."""
        self.modify(dn, sstProvisioningMode=mode, sstProvisioningState="0",
                    sstProvisioningExecutionDate=changes.pop("date", "0"), **changes)

    def remove(self, dn: str) -> None:
        """Delete the entry from the directory (what MODUS LDAP answers with the delete hook)."""
        self.conn.delete_s(dn)

    def get(self, dn: str) -> dict[str, str] | None:
        """The entry's first values (entryCSN included), or None when it does not exist."""
        try:
            found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"])
        except ldap.NO_SUCH_OBJECT:
            return None
        return {k: v[0].decode() for k, v in found[0][1].items()}

    def get_all(self, dn: str) -> dict[str, list[str]]:
        """Every value of every attribute (multi-valued ones too); {} if the entry is gone."""
        try:
            found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["*", "entryCSN"])
        except ldap.NO_SUCH_OBJECT:
            return {}
        return {k: [v.decode() for v in vs] for k, vs in found[0][1].items()}

    def entry_uuid(self, dn: str) -> str:
        """The entry's entryUUID (an operational attribute: get() leaves it out)."""
        found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["entryUUID"])
        return found[0][1]["entryUUID"][0].decode()

    def wait_mode(self, dn: str, mode: str, timeout: float = DEADLINE) -> dict[str, str]:
        """Wait until sstProvisioningMode is ``mode``; the entry then."""
        return wait_until(lambda: (e := self.get(dn)) and e.get("sstProvisioningMode") == mode and e,
                          f"{dn} to reach sstProvisioningMode {mode}", timeout)

    def wait_return_value(self, dn: str, value: int, timeout: float = DEADLINE) -> dict[str, str]:
        """Wait until sstProvisioningReturnValue is ``value``; the entry then."""
        return wait_until(lambda: (e := self.get(dn)) and e.get("sstProvisioningReturnValue") == str(value) and e,
                          f"{dn} to get sstProvisioningReturnValue {value}", timeout)


def assert_done(entry: dict[str, str], mode: str) -> None:
    """The entry shows a finished request: mode, UTC stamp in state, return value 0."""
    assert entry["sstProvisioningMode"] == mode
    assert STAMP.match(entry["sstProvisioningState"]), entry["sstProvisioningState"]
    assert entry["sstProvisioningReturnValue"] == "0"
