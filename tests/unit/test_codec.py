"""discovery.codec against pynetdicom: the C-FIND-RQ command set we send is byte for byte what
pynetdicom sends; what we read of a response's command set is what pynetdicom wrote; hostile
bytes raise CodecError and nothing else."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_FIND_RQ, C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]

from discovery import codec


def pynetdicom_command(primitive: C_FIND, message: type) -> bytes:
    msg = message()
    msg.primitive_to_message(primitive)
    raw = encode(msg.command_set, True, True)
    assert raw is not None
    return raw


@pytest.mark.parametrize("message_id", [1, 2, 65535])
def test_find_request_is_what_pynetdicom_sends(message_id: int) -> None:
    req = C_FIND()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = message_id, FIND, 2
    req.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    assert codec.find_request(message_id, FIND) == pynetdicom_command(req, C_FIND_RQ)


#: Pendings with an identifier, finals without; every status class.
RESPONSES = [(0xFF00, True), (0xFF01, True), (0x0000, False), (0xFE00, False), (0xA700, False),
             (0xC001, False)]


def find_rsp(message_id: int, status: int, with_data: bool, comment: str | None = None) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = message_id, FIND, status
    if with_data:
        rsp.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    if comment is not None:
        rsp.ErrorComment = comment
    return rsp


@pytest.mark.parametrize(("status", "with_data"), RESPONSES)
def test_read_command_of_a_response(status: int, with_data: bool) -> None:
    rsp = find_rsp(7, status, with_data,
                   "an error comment of odd length" if status == 0xC001 else None)
    fields = codec.read_command(pynetdicom_command(rsp, C_FIND_RSP))
    assert fields[codec.COMMAND_FIELD] == codec.C_FIND_RSP
    assert fields[codec.STATUS] == status
    assert fields[codec.MESSAGE_ID_RESPONDED] == 7
    assert (fields[codec.DATA_SET_TYPE] != codec.NO_DATA_SET) is with_data


@pytest.mark.parametrize(("status", "with_data"), RESPONSES)
def test_find_response_is_what_pynetdicom_sends(status: int, with_data: bool) -> None:
    assert (codec.find_response(65535, FIND, status, with_data)
            == pynetdicom_command(find_rsp(65535, status, with_data), C_FIND_RSP))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        codec.read_command(data)
    except codec.CodecError:
        pass
