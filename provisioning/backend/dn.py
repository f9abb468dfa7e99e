"""Distinguished names compared as the directory compares them, not as strings."""
from __future__ import annotations

import ldap
import ldap.dn

RDN = tuple[tuple[str, str], ...]


def rdns(dn: str) -> list[RDN] | None:
    """``dn`` as its RDNs, each in one spelling (names and values without case, AVAs sorted);
    None when it does not parse."""
    try:
        parts = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return None
    return [tuple(sorted((attr.lower(), value.lower()) for attr, value, _ in rdn)) for rdn in parts]


def normal_dn(dn: str) -> str:
    """``dn`` in one spelling (see rdns); a DN that does not parse is only stripped and lowered."""
    parts = rdns(dn)
    if parts is None:
        return dn.strip().lower()
    return ldap.dn.dn2str([[(attr, value, ldap.AVA_STRING) for attr, value in rdn] for rdn in parts])


def below(dn: str, base: str, *, strictly: bool = False) -> bool:
    """Whether ``dn`` lies below ``base`` (or is it, unless ``strictly``); False if either does not parse."""
    parts, base_parts = rdns(dn), rdns(base)
    if parts is None or base_parts is None or len(parts) < len(base_parts):
        return False
    if strictly and len(parts) == len(base_parts):
        return False
    return parts[len(parts) - len(base_parts):] == base_parts
