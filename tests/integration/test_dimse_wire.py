"""discovery.dimse's own C-FIND exchange against real servers whose answers come in many
fragments: we announce a maximum PDU length of 128 bytes, so a server that honours it splits
every response into several P-DATA (PS3.8 9.3.1). Every study must come back exactly as
stored, on DCMTK's dcmqrscp and on pynetdicom's qrscp (which answers once per instance)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from pynetdicom import AE

from demo.servers import DcmqrscpServer, QrscpServer
from demo.studies import generate_studies
from discovery import dimse
from discovery.dimse import PacsConnection, study_query
from discovery.settings import Settings
from discovery.studies import parse_rows
from discovery.windows import Window

DAY = date(2024, 1, 1)
STUDIES = generate_studies(DAY, days=1, per_day=24, seed=5)
SMALL_PDU = 128


class SmallPduAE(AE):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.maximum_pdu_size = SMALL_PDU


@pytest.fixture(params=["dcmqrscp", "qrscp"])
def pacs(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmqrscpServer | QrscpServer]:
    cls = DcmqrscpServer if request.param == "dcmqrscp" else QrscpServer
    with cls(tmp_path_factory.mktemp(request.param)) as server:
        server.store(STUDIES)
        yield server


def test_fragmented_answers_are_read_whole(pacs: DcmqrscpServer | QrscpServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dimse, "AE", SmallPduAE)
    pdvs: list[int] = []
    stock_call = dimse._Responses.__call__

    def counting(self: dimse._Responses, primitive: object) -> None:
        pdvs.append(len(primitive.presentation_data_value_list))  # type: ignore[attr-defined]
        stock_call(self, primitive)

    monkeypatch.setattr(dimse._Responses, "__call__", counting)
    conn = PacsConnection(Settings(pacs_host=pacs.host, pacs_port=pacs.port,
                                   called_aet=pacs.aet, dimse_timeout=30))
    with conn:
        result = conn.find(study_query(Window(DAY, 0, 86400)))
        hourly = [conn.find(study_query(Window(DAY, h * 3600, h * 3600 + 3600)))
                  for h in range(24)]
    assert result.status == 0x0000 and result.error is None and result.undecodable == 0
    answers = len(STUDIES) if isinstance(pacs, DcmqrscpServer) else sum(
        s["instances"] for s in STUDIES)
    assert len(result.rows) == answers
    # more P-DATA than messages: the answers did come in fragments
    assert len(pdvs) > 2 * (answers + 1)
    records, _ = parse_rows(result.rows, None)
    got = {r["uid"]: (r["accession"], r["patient_id"], r["date"]) for r in records}
    assert got == {s["study_uid"]: (s["accession"], s["patient_id"], s["study_date"])
                   for s in STUDIES}
    assert all(h.status == 0x0000 for h in hourly)
    hourly_uids = [r["uid"] for h in hourly for r in parse_rows(h.rows, None)[0]]
    assert sorted(hourly_uids) == sorted(s["study_uid"] for s in STUDIES)
