"""The hand-written post-read and sync state controls against python-ldap's own (pyasn1) and against slapd."""
from __future__ import annotations

import ldap
import ldap.modlist
import pytest
from ldap.controls.readentry import PostReadControl

from ldap.syncrepl import SyncStateControl as PyasnSyncState

from provisioning.backend.ber import (
    ANSWER_CLASSES, BerError, PostRead, SyncStateControl, _encode, decode_entry, decode_sync_state,
)


def _entry(dn: bytes, attrs: dict[str, list[bytes]]) -> bytes:
    body = _encode(0x04, dn) + _encode(0x30, b"".join(
        _encode(0x30, _encode(0x04, name.encode()) + _encode(0x31, b"".join(_encode(0x04, v) for v in values)))
        for name, values in attrs.items()))
    return _encode(0x64, body)


def test_decode_reads_short_and_long_lengths():
    attrs = {"cn": [b"x"], "description": [b"a" * 200, b"b" * 70000], "empty": []}
    assert decode_entry(_entry(b"uid=1,dc=x", attrs)) == (b"uid=1,dc=x", attrs)


@pytest.mark.parametrize("data", [b"", b"\x64", b"\x30\x00", b"\x64\x05\x04\x01a", b"\x64\x84\xff\xff\xff\xff",
                                  _entry(b"dn", {"cn": [b"x"]})[:-1]])
def test_malformed_answers_are_refused(data):
    with pytest.raises((BerError, IndexError)):
        decode_entry(data)


def test_the_request_encodes_as_python_ldaps_own():
    attrs = ["*", "entryCSN", "entryUUID", "modifyTimestamp"]
    assert PostRead(attrs).encodeControlValue() == PostReadControl(True, attrs).encodeControlValue()


def test_an_answer_from_slapd_decodes_as_python_ldap_decodes_it(slapd, subtree):
    conn = slapd.connect()
    dn = f"ou=ber-test,{subtree}"
    conn.add_s(dn, ldap.modlist.addModlist({"objectClass": [b"organizationalUnit"], "ou": [b"ber-test"],
                                            "description": ["Zürich ✓".encode(), b"x" * 300]}))
    try:
        change = [(ldap.MOD_REPLACE, "postalCode", [b"8000"])]
        msgid = conn.modify_ext(dn, change, serverctrls=[PostRead(["*", "entryCSN"])])
        ours = conn.result3(msgid, resp_ctrl_classes=ANSWER_CLASSES)[3][0]
        msgid = conn.modify_ext(dn, change, serverctrls=[PostReadControl(True, ["*", "entryCSN"])])
        theirs = conn.result3(msgid)[3][0]
        assert ours.dn.decode() == theirs.dn
        expected = {k: v for k, v in theirs.entry.items() if k != "entryCSN"}
        assert {k: v for k, v in ours.entry.items() if k != "entryCSN"} == expected
        assert ours.entry["entryCSN"][0] < theirs.entry["entryCSN"][0]
    finally:
        conn.delete_s(dn)
        conn.unbind_s()


UUID_BYTES = bytes(range(0xA0, 0xB0))


def _sync_state(state: int, cookie: bytes | None) -> bytes:
    body = _encode(0x0A, bytes([state])) + _encode(0x04, UUID_BYTES)
    return _encode(0x30, body + (b"" if cookie is None else _encode(0x04, cookie)))


@pytest.mark.parametrize("state", range(4))
@pytest.mark.parametrize("cookie", [None, b"rid=001,csn=20261128012947.558459Z#000000#000#000000", b"c" * 300])
def test_a_sync_state_decodes_as_python_ldap_decodes_it(state, cookie):
    data = _sync_state(state, cookie)
    theirs, ours = PyasnSyncState(), SyncStateControl()
    theirs.decodeControlValue(data)
    ours.decodeControlValue(data)
    assert (ours.state, ours.entryUUID, ours.cookie) == (theirs.state, theirs.entryUUID, theirs.cookie)
    assert type(ours).__name__ == "SyncStateControl"     # python-ldap's syncrepl_poll looks for this name


@pytest.mark.parametrize("data", [b"", b"\x30\x00", _sync_state(4, None), _sync_state(1, None)[:-1],
                                  _encode(0x30, _encode(0x0A, b"\x01") + _encode(0x04, b"short")),
                                  _encode(0x30, _encode(0x04, UUID_BYTES) + _encode(0x0A, b"\x01")),
                                  _encode(0x31, _encode(0x0A, b"\x01") + _encode(0x04, UUID_BYTES))])
def test_malformed_sync_states_are_refused(data):
    with pytest.raises((BerError, IndexError)):
        decode_sync_state(data)
