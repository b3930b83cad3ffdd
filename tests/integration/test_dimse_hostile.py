"""discovery.dimse's C-FIND against a PACS that writes its answers' P-DATA itself (a pynetdicom
SCP whose C-FIND handler sends crafted presentation data values over the real association):
answers no well-behaved PACS sends, each of which must make the window fail, never complete
with a study missing or misnamed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import date

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from discovery import codec
from discovery.dimse import PacsConnection
from discovery.errors import PermanentError
from discovery.query import run_window
from discovery.settings import Settings, load_settings
from discovery.windows import Window

pytestmark = pytest.mark.timeout(60)

WINDOW = Window(date(2024, 1, 1), 36000, 39600)
# script(query number, context ID, message ID) -> P-DATA to send (a number: sleep that long)
Script = Callable[[int, int, int], list]


def identifier(uid: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate, ds.StudyTime = "20240101", "100000"
    ds.AccessionNumber, ds.PatientID, ds.StudyDescription = "A1", "P1", "CT"
    ds.StudyInstanceUID = uid  # the highest tag: the last element
    raw = encode(ds, True, True)
    assert raw is not None
    return raw


def message(msg_id: int, status: int, data: bytes | None = None) -> list[bytes]:
    """One C-FIND-RSP as presentation data values (command, then its data set if any)."""
    pdvs = [b"\x03" + codec.find_response(msg_id, FIND, status, data is not None)]
    return pdvs if data is None else [*pdvs, b"\x02" + data]


def pdata(cx: int, *pdvs: bytes) -> P_DATA:
    p = P_DATA()
    p.presentation_data_value_list = [[cx, v] for v in pdvs]  # type: ignore[misc]
    return p


class CraftingPacs:
    """Answers each C-FIND with what ``script`` returns, sent as it is; pynetdicom's own final
    response (its handler yields nothing) goes nowhere."""

    host, aet = "127.0.0.1", "CRAFTED"

    def __init__(self, script: Script, contexts: tuple[str, ...] = (FIND,)) -> None:
        self.script, self.queries = script, 0
        ae = AE(ae_title=self.aet)
        for uid in contexts:
            ae.add_supported_context(uid)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        server = ae.start_server((self.host, 0), block=False,
                                 evt_handlers=[(evt.EVT_C_FIND, self._on_find)])
        assert server is not None
        self.server = server
        self.port = self.server.server_address[1]

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.queries += 1
        assoc = event.assoc
        assoc.dimse.__dict__.pop("send_msg", None)
        msg_id = event.request.MessageID
        assert msg_id is not None
        for item in self.script(self.queries, event.context.context_id, msg_id):
            if isinstance(item, int | float):
                time.sleep(item)
            else:
                assoc.dul.send_pdu(item)
        # pynetdicom's own final Success (the handler yields nothing) goes nowhere
        assoc.dimse.send_msg = lambda *args, **kwargs: None  # type: ignore[method-assign]
        yield from ()

    def settings(self) -> Settings:
        return load_settings(pacs_host=self.host, pacs_port=self.port, called_aet=self.aet,
                             dimse_timeout=3)


@pytest.fixture
def crafting() -> Iterator[Callable[..., CraftingPacs]]:
    servers: list[CraftingPacs] = []

    def start(script: Script, contexts: tuple[str, ...] = (FIND,)) -> CraftingPacs:
        servers.append(CraftingPacs(script, contexts))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()


def test_an_identifier_cut_short_is_not_a_study(crafting: Callable[..., CraftingPacs]) -> None:
    """The Study Instance UID's header says 8 bytes, 7 follow (a PACS that forgot to pad an
    odd-length UID). pydicom reads the 7 without a word: the study was recorded as 1.2.3.4,
    a UID the PACS never sent, and the window completed."""
    cut = identifier("1.2.3.45")[:-1]
    pacs = crafting(lambda n, cx, msg: [pdata(cx, *message(msg, 0xFF00, cut)),
                                        pdata(cx, *message(msg, 0x0000))])
    s = pacs.settings()
    conn = PacsConnection(s)
    with conn:
        outcome = run_window(conn, WINDOW, s)
    assert [st["uid"] for st in outcome["studies"]] != ["1.2.3.4"]
    assert outcome["state"] == "failed"


def test_a_pending_after_the_final_response_fails_the_window(
        crafting: Callable[..., CraftingPacs]) -> None:
    """Pending, Success, Pending in one P-DATA: the window completed one study short; the
    study after the final response made only the next query on the association fail, which the
    worker's session asks again on a fresh association, so nothing showed it."""
    def script(n: int, cx: int, msg: int) -> list:
        if n == 1:
            return [pdata(cx, *message(msg, 0xFF00, identifier("1.2.3.1")), *message(msg, 0),
                          *message(msg, 0xFF00, identifier("1.2.3.2")))]
        return [pdata(cx, *message(msg, 0))]

    pacs = crafting(script)
    s = pacs.settings()
    conn = PacsConnection(s)
    with conn:
        first = run_window(conn, WINDOW, s)
    assert first["state"] == "failed", first


def test_a_pacs_that_accepts_verification_but_not_find(
        crafting: Callable[..., CraftingPacs]) -> None:
    """The producer's preflight asks for C-ECHO too: the association is established (C-ECHO
    accepted) without the C-FIND context, and find() raised StopIteration (a traceback from
    the producer) instead of the one-line PermanentError open() gives for it."""
    from producer.run import preflight

    pacs = crafting(lambda n, cx, msg: [], contexts=(Verification,))
    with pytest.raises(PermanentError, match="not Study Root C-FIND"):
        preflight(pacs.settings(), Window(date(2024, 1, 1), 0, 1))


def test_a_pending_on_another_presentation_context(
        crafting: Callable[..., CraftingPacs]) -> None:
    """A response's PDVs on a context the C-FIND was not sent on (PS3.8 9.3.5: a message goes
    on its request's context) were read as ours, its identifier in our context's syntax."""
    pacs = crafting(lambda n, cx, msg: [pdata(cx + 2, *message(msg, 0xFF00, identifier("1.2.3.1"))),
                                        pdata(cx, *message(msg, 0x0000))])
    s = pacs.settings()
    conn = PacsConnection(s)
    with conn:
        outcome = run_window(conn, WINDOW, s)
    assert outcome["state"] == "failed" and "context" in (outcome["error"] or ""), outcome


def test_an_element_of_unknown_vr_is_undecodable(crafting: Callable[..., CraftingPacs],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit VR with a VR pydicom does not know on an empty element: decode() is lazy and
    succeeded, and reading the row raised NotImplementedError outside find() (the worker's
    'unexpected NotImplementedError'), not the window's 'undecodable'."""
    from pydicom.uid import ExplicitVRLittleEndian

    from discovery import dimse

    class ExplicitAE(AE):  # propose Explicit VR Little Endian only
        def add_requested_context(self, uid, transfer_syntax=None):  # type: ignore[no-untyped-def]
            super().add_requested_context(uid, [ExplicitVRLittleEndian])

    monkeypatch.setattr(dimse, "AE", ExplicitAE)
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyDate, ds.StudyTime = "STUDY", "20240101", "100000"
    ds.AccessionNumber, ds.StudyInstanceUID = "", "1.2.3.1"  # empty: pydicom converts it
    raw = bytearray(encode(ds, False, True) or b"")
    at = raw.index(b"\x08\x00\x50\x00")  # Accession Number: SH -> "SE"
    raw[at + 4:at + 6] = b"SE"
    pacs = crafting(lambda n, cx, msg: [pdata(cx, *message(msg, 0xFF00, bytes(raw))),
                                        pdata(cx, *message(msg, 0x0000))])
    s = pacs.settings()
    conn = PacsConnection(s)
    with conn:
        assert conn.assoc is not None
        assert conn.assoc.accepted_contexts[0].transfer_syntax[0] == ExplicitVRLittleEndian
        outcome = run_window(conn, WINDOW, s)
    assert outcome["state"] == "failed", outcome
    assert outcome["anomalies"].get("undecodable") == 1, outcome
