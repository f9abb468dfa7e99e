"""The read-entry controls (RFC 4527) and the sync state control (RFC 4533) without pyasn1.

A few lines of BER instead of milliseconds.

python-ldap decodes a post-read answer with pyasn1, which costs about 4 ms
of CPU for one backup account entry; the daemon reads an entry back with
every claim. The value is a SearchResultEntry, simple enough to take apart
by hand:

    SearchResultEntry ::= [APPLICATION 4] SEQUENCE {
        objectName  OCTET STRING,
        attributes  SEQUENCE OF SEQUENCE { type OCTET STRING, vals SET OF OCTET STRING } }

and the request names the attributes to read back:

    AttributeSelection ::= SEQUENCE OF OCTET STRING

Every entry of the sync stream carries a sync state control, which
python-ldap's pyasn1 decoder takes about half a millisecond for:

    syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID OCTET STRING (SIZE(16)),
                                  cookie OCTET STRING OPTIONAL }
"""
from __future__ import annotations

import uuid
from typing import Sequence

import ldap.syncrepl  # noqa: F401 - registers the sync done control, which the stream needs as well
from ldap.controls import KNOWN_RESPONSE_CONTROLS, RequestControl, ResponseControl

POST_READ_OID = "1.3.6.1.1.13.2"
SYNC_STATE_OID = "1.3.6.1.4.1.4203.1.9.1.2"
_SEQUENCE, _OCTET_STRING, _ENUMERATED = 0x30, 0x04, 0x0A


class BerError(ValueError):
    """The bytes are not the BER this module reads."""


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position after the length octets)."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if not 0 < count <= 4 or pos + 1 + count > len(data):
        raise BerError("unsupported or truncated length")
    return int.from_bytes(data[pos + 1:pos + 1 + count], "big"), pos + 1 + count


def _element(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at ``pos``."""
    if pos + 2 > end:
        raise BerError("truncated element")
    length, start = _length(data, pos + 1)
    if start + length > end:
        raise BerError("element runs past its container")
    return data[pos], start, start + length


def _children(data: bytes, start: int, end: int):
    pos = start
    while pos < end:
        tag, body, after = _element(data, pos, end)
        yield tag, body, after
        pos = after


def decode_entry(data: bytes) -> tuple[bytes, dict[str, list[bytes]]]:
    """(DN, {attribute: [values]}) of a BER SearchResultEntry."""
    tag, start, end = _element(data, 0, len(data))
    if tag != 0x64:
        raise BerError(f"not a SearchResultEntry (tag {tag:#x})")
    parts = list(_children(data, start, end))
    if len(parts) != 2 or parts[0][0] != _OCTET_STRING or parts[1][0] != _SEQUENCE:
        raise BerError("a SearchResultEntry has a DN and a list of attributes")
    dn = data[parts[0][1]:parts[0][2]]
    attrs: dict[str, list[bytes]] = {}
    for _, a_start, a_end in _children(data, parts[1][1], parts[1][2]):
        pair = list(_children(data, a_start, a_end))
        if len(pair) != 2:
            raise BerError("an attribute has a type and a set of values")
        name = data[pair[0][1]:pair[0][2]].decode("utf-8")
        attrs[name] = [data[v_start:v_end] for _, v_start, v_end in _children(data, pair[1][1], pair[1][2])]
    return dn, attrs


def _encode(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


class PostRead(RequestControl):
    """Read these attributes back in the answer to the write (RFC 4527 post-read)."""

    controlType = POST_READ_OID

    def __init__(self, attrs: Sequence[str], criticality: bool = True) -> None:
        super().__init__(self.controlType, criticality)
        self.attrs = list(attrs)

    def encodeControlValue(self) -> bytes:
        return _encode(_SEQUENCE, b"".join(_encode(_OCTET_STRING, a.encode()) for a in self.attrs))


class PostReadAnswer(ResponseControl):
    """The entry as the write left it; ``dn`` (bytes) and ``entry`` ({name: [bytes]})."""

    controlType = POST_READ_OID

    def decodeControlValue(self, encodedControlValue: bytes) -> None:  # noqa: N802,N803 - python-ldap's names
        self.dn, self.entry = decode_entry(encodedControlValue)


# What to decode answers with: python-ldap's result3(resp_ctrl_classes=...).
ANSWER_CLASSES = {POST_READ_OID: PostReadAnswer}


class SyncStateControl(ResponseControl):
    """The state of one entry of the sync stream; python-ldap's name, which its syncrepl_poll looks for."""

    controlType = SYNC_STATE_OID
    opnames = ("present", "add", "modify", "delete")

    def decodeControlValue(self, encodedControlValue: bytes) -> None:  # noqa: N802,N803 - python-ldap's names
        self.state, self.entryUUID, self.cookie = decode_sync_state(encodedControlValue)


def decode_sync_state(data: bytes) -> tuple[str, str, str | None]:
    """(state, entryUUID, cookie or None) of a BER syncStateValue."""
    tag, start, end = _element(data, 0, len(data))
    parts = list(_children(data, start, end)) if tag == _SEQUENCE else []
    if not 2 <= len(parts) <= 3 or parts[0][0] != _ENUMERATED or parts[1][0] != _OCTET_STRING \
            or parts[1][2] - parts[1][1] != 16 or (len(parts) == 3 and parts[2][0] != _OCTET_STRING):
        raise BerError("a syncStateValue has a state, a 16-byte entryUUID and maybe a cookie")
    state = int.from_bytes(data[parts[0][1]:parts[0][2]], "big")
    if state >= len(SyncStateControl.opnames):
        raise BerError(f"unknown sync state {state}")
    entry_uuid = str(uuid.UUID(bytes=data[parts[1][1]:parts[1][2]]))
    cookie = data[parts[2][1]:parts[2][2]].decode("utf-8") if len(parts) == 3 else None
    return SyncStateControl.opnames[state], entry_uuid, cookie


# What to decode the sync stream's controls with: python-ldap's, but the sync state by hand.
SYNC_CONTROL_CLASSES = {**KNOWN_RESPONSE_CONTROLS, SYNC_STATE_OID: SyncStateControl}
