"""Pure: the command sets of a C-FIND on the wire, for :mod:`discovery.dimse`'s hot path.

pynetdicom builds a pydicom Dataset for every command set it sends or receives, checks every
value it sets on it, encodes each twice (once to learn its group length) and wraps each
response in a primitive and a status Dataset: per window that cost more CPU than the query's
identifiers (docs/benchmarks.md, "What changed"). A C-FIND needs little of it: one command
set out (PS3.7 9.3.2.1) and, of each response (PS3.7 9.3.2.2), four values. This module
writes and reads exactly those; the identifiers stay pydicom's (encoded and decoded as
pynetdicom does, in the negotiated transfer syntax). The simulated PACS writes its responses'
command sets here too.

Command sets are always Implicit VR Little Endian (PS3.7 6.3.1). Reading is for hostile
input: any length that runs past the end raises :class:`CodecError` and nothing else.
"""

from __future__ import annotations

import struct

#: Command Field (0000,0100) values (PS3.7 E.1-1).
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
#: Command Data Set Type (0000,0800): "no data set" (PS3.7 E.1-1); any other value: one follows.
NO_DATA_SET = 0x0101

COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_RESPONDED = 0x00000120
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900

_HEAD = struct.Struct("<HHI")  # implicit VR: group, element, 4-byte length
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


class CodecError(ValueError):
    """Bytes that are not a well-formed command set."""


def _element(tag: int, value: bytes) -> bytes:
    return _HEAD.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _command(sop_class: str, *elements: tuple[int, int]) -> bytes:
    """A command set: group length, Affected SOP Class UID, then US ``(tag, value)`` elements
    in the order given (ascending tags)."""
    uid = sop_class.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"  # UI values are padded with NUL to an even length (PS3.5 6.2)
    body = _element(0x00000002, uid) + b"".join(_element(tag, _U16.pack(value))
                                                 for tag, value in elements)
    return _element(0x00000000, _U32.pack(len(body))) + body


def find_request(message_id: int, sop_class: str, priority: int = 2) -> bytes:
    """The command set of a C-FIND-RQ with an identifier (PS3.7 9.3.2.1): byte for byte what
    pynetdicom sends (tests/unit/test_codec.py)."""
    return _command(sop_class, (COMMAND_FIELD, C_FIND_RQ), (MESSAGE_ID, message_id),
                    (0x00000700, priority), (DATA_SET_TYPE, 0x0001))


def find_response(message_id: int, sop_class: str, status: int, with_data: bool) -> bytes:
    """The command set of a C-FIND-RSP without error comment or offending element
    (PS3.7 9.3.2.2), as pynetdicom writes it; for the simulated PACS (demo/simscp.py)."""
    return _command(sop_class, (COMMAND_FIELD, C_FIND_RSP), (MESSAGE_ID_RESPONDED, message_id),
                    (DATA_SET_TYPE, 0x0001 if with_data else NO_DATA_SET), (STATUS, status))


def read_command(data: bytes) -> dict[int, int]:
    """The US elements of a command set by tag (and its group length, UL, under 0); other
    elements (UIDs, an error comment) are skipped."""
    out: dict[int, int] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise CodecError("the command set ends inside an element header")
        group, elem, length = _HEAD.unpack_from(data, pos)
        pos += 8
        if pos + length > end:
            raise CodecError("a command element runs past the end of the command set")
        if length == 2:
            out[group << 16 | elem] = _U16.unpack_from(data, pos)[0]
        elif length == 4 and group == 0 and elem == 0:
            out[0] = _U32.unpack_from(data, pos)[0]
        pos += length
    return out
