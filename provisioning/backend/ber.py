"""The read-entry controls (RFC 4527) without pyasn1: a few lines of BER instead of milliseconds.

python-ldap decodes a post-read answer with pyasn1, which costs about 4 ms
of CPU for one backup account entry; the daemon reads an entry back with
every claim. The value is a SearchResultEntry, simple enough to take apart
by hand:

    SearchResultEntry ::= [APPLICATION 4] SEQUENCE {
        objectName  OCTET STRING,
        attributes  SEQUENCE OF SEQUENCE { type OCTET STRING, vals SET OF OCTET STRING } }

and the request names the attributes to read back:

    AttributeSelection ::= SEQUENCE OF OCTET STRING
"""
from __future__ import annotations

from typing import Sequence

from ldap.controls import RequestControl, ResponseControl

POST_READ_OID = "1.3.6.1.1.13.2"
_SEQUENCE, _OCTET_STRING = 0x30, 0x04


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
