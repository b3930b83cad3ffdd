"""The C-FIND messages on the wire (discovery.dimse's send_message and _Responses), against
pynetdicom's own encoder: what we send is what pynetdicom sends, fragment for fragment; what
we read of any fragmentation pynetdicom produces is the message it encoded; every malformed
message becomes one error and stops the reading."""

from __future__ import annotations

import io
import queue
from datetime import date
from types import SimpleNamespace

import pytest
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RQ, C_FIND_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]

from discovery import codec
from discovery.dimse import _Response, _Responses, send_message, study_query
from discovery.windows import Window

IDENT = encode(study_query(Window(date(2024, 1, 1), 36000, 39600)), True, True)
SMALL = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "


class Dul:
    def __init__(self) -> None:
        self.sent: list[P_DATA] = []

    def send_pdu(self, pdata: P_DATA) -> None:
        self.sent.append(pdata)


def pdvs(primitives: list[P_DATA]) -> list[tuple[int, bytes]]:
    return [(cx, bytes(data)) for p in primitives for cx, data in p.presentation_data_value_list]


@pytest.mark.parametrize("max_pdu", [0, 16382, 200, 64, 7])
def test_send_fragments_as_pynetdicom_does(max_pdu: int) -> None:
    dul = Dul()
    assoc = SimpleNamespace(dimse=SimpleNamespace(maximum_pdu_size=max_pdu), dul=dul)
    send_message(assoc, 5, codec.find_request(9, FIND), IDENT)  # type: ignore[arg-type]
    req = C_FIND()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = 9, FIND, 2
    req.Identifier = io.BytesIO(IDENT)
    msg = C_FIND_RQ()
    msg.primitive_to_message(req)
    assert pdvs(dul.sent) == pdvs(list(msg.encode_msg(5, max_pdu)))


@pytest.mark.parametrize("max_pdu", [0, 16382, 64, 7])
@pytest.mark.parametrize(("status", "identifier"), [(0xFF00, IDENT), (0x0000, None)])
def test_send_of_a_response_is_what_pynetdicom_sends(max_pdu: int, status: int,
                                                     identifier: bytes | None) -> None:
    """The simulated PACS's responses (demo/simscp.py): codec.find_response + send_message."""
    dul = Dul()
    assoc = SimpleNamespace(dimse=SimpleNamespace(maximum_pdu_size=max_pdu), dul=dul)
    command = codec.find_response(9, FIND, status, identifier is not None)
    send_message(assoc, 5, command, identifier)  # type: ignore[arg-type]
    assert pdvs(dul.sent) == pdvs(list(response(status, identifier).encode_msg(5, max_pdu)))


def response(status: int, identifier: bytes | None, msg_id: int = 9) -> C_FIND_RSP:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = msg_id, FIND, status
    if identifier is not None:
        rsp.Identifier = io.BytesIO(identifier)
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return msg


def read(primitives: list[P_DATA]) -> list[_Response]:
    out: queue.Queue = queue.Queue()
    receiver = _Responses(out)
    for p in primitives:
        receiver(p)
    return [out.get_nowait()[1] for _ in range(out.qsize())]


@pytest.mark.parametrize("max_pdu", [0, 16382, 100, 20, 7])
def test_reads_every_fragmentation_of_pending_and_final(max_pdu: int) -> None:
    primitives = [*response(0xFF00, IDENT).encode_msg(3, max_pdu),
                  *response(0xFF01, SMALL).encode_msg(3, max_pdu),
                  *response(0x0000, None).encode_msg(3, max_pdu)]
    got = read(primitives)
    assert [(r.status, r.message_id, r.error) for r in got] == [
        (0xFF00, 9, None), (0xFF01, 9, None), (0x0000, 9, None)]
    assert got[0].data == IDENT and got[1].data == SMALL and got[2].data is None


def test_reads_several_messages_in_one_p_data() -> None:
    """A P-DATA-TF may carry several PDVs: pynetdicom reads only up to the first message's
    end; every message in it is read here."""
    one = P_DATA()
    for msg in (response(0xFF00, IDENT), response(0xFF00, IDENT), response(0x0000, None)):
        for p in msg.encode_msg(1, 0):
            for pdv in p.presentation_data_value_list:
                one.presentation_data_value_list.append(pdv)
    assert [r.status for r in read([one])] == [0xFF00, 0xFF00, 0x0000]


def pdata(*values: bytes, cx: int = 1) -> P_DATA:
    p = P_DATA()
    p.presentation_data_value_list = [[cx, v] for v in values]
    return p


def commands(msg) -> bytes:  # type: ignore[no-untyped-def]
    return pdvs(list(msg.encode_msg(1, 0)))[0][1]


ECHO = C_ECHO()
ECHO.MessageIDBeingRespondedTo, ECHO.AffectedSOPClassUID, ECHO.Status = 9, "1.2.840.10008.1.1", 0
ECHO_MSG = C_ECHO_RSP()
ECHO_MSG.primitive_to_message(ECHO)


@pytest.mark.parametrize(("values", "why"), [
    ((b"",), "an empty presentation data value"),
    ((b"\x02" + IDENT,), "a data set fragment without its command"),
    ((b"\x03" + b"\x00\x00\x00\x01\x10\x00",), "a malformed command set"),
    ((commands(ECHO_MSG),), "a message other than a C-FIND response (command 0x8030)"),
    ((b"\x03\x00\x00\x00\x09\x02\x00\x00\x00\xff\x00",), "(no command field)"),
    ((b"\x03\x00\x00\x00\x01\x02\x00\x00\x00\x20\x80",), "without its status, message"),
    ((commands(response(0xFF00, IDENT)), commands(response(0x0000, None))),
     "a command inside a data set"),
    # pynetdicom's own SCP sends no data PDV for an empty identifier, though its command
    # says one follows: not a study we can name, so not read as one
    ((*(v for _, v in pdvs(list(response(0xFF00, b"").encode_msg(1, 0)))),),
     "a command inside a data set"),
], ids=["empty", "data-first", "garbled", "echo", "no-command", "no-status", "command-in-data",
        "empty-identifier"])
def test_a_malformed_message_is_one_error_and_the_end(values: tuple[bytes, ...], why: str) -> None:
    got = read([pdata(*values), *response(0x0000, None).encode_msg(1, 0)])
    assert len(got) == 1 and got[0].error is not None and why in got[0].error
