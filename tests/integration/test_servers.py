"""The demo servers start, accept studies and answer a date-only Study Root C-FIND exactly.

Each server gets the StudyTime edge cases of 2024-01-05 plus generated studies of 2024-01-04
to 2024-01-06 (some with two instances); a STUDY level C-FIND with StudyDate=20240105 must
return exactly the StudyInstanceUIDs stored for that day, whatever their StudyTime.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT_FIND

from demo.servers import DcmqrscpServer, OrthancServer, QrscpServer, ServerError
from demo.studies import Study, edge_time_studies, generate_studies

DAY = "20240105"
PENDING = (0xFF00, 0xFF01)


def c_find_study_uids(host: str, port: int, aet: str, study_date: str) -> tuple[list[str], int]:
    """Return (StudyInstanceUID of every Pending answer, final status) of a STUDY C-FIND."""
    ae = AE(ae_title="PYTEST")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate(host, port, ae_title=aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyDate = study_date
    query.StudyInstanceUID = ""
    query.StudyTime = ""
    query.StudyDescription = ""
    query.AccessionNumber = ""
    query.PatientID = ""
    uids: list[str] = []
    final = -1
    try:
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            assert status, "no C-FIND response (timeout or abort)"
            if status.Status in PENDING:
                uids.append(str(identifier.StudyInstanceUID))
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return uids, final


@pytest.fixture(scope="module")
def studies() -> list[Study]:
    return edge_time_studies(DAY) + generate_studies(date(2024, 1, 4), days=3, per_day=6)


def expected(studies: list[Study]) -> set[str]:
    return {s["study_uid"] for s in studies if s["study_date"] == DAY}


@pytest.fixture(params=["orthanc", "dcmqrscp", "qrscp"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[OrthancServer | DcmqrscpServer | QrscpServer]:
    kinds = {"orthanc": OrthancServer, "dcmqrscp": DcmqrscpServer, "qrscp": QrscpServer}
    srv = kinds[request.param](tmp_path)
    with srv:
        yield srv
    assert srv.proc is None


def test_date_only_find_returns_every_study_of_the_day(server, studies) -> None:
    stored = server.store(studies)
    assert stored == sum(s["instances"] for s in studies)

    uids, final = c_find_study_uids(server.host, server.port, server.aet, DAY)

    assert final == 0x0000
    # qrscp answers a STUDY level query once per matching instance: compare distinct UIDs.
    assert set(uids) == expected(studies)
    if not isinstance(server, QrscpServer):
        assert len(uids) == len(set(uids))


def test_orthanc_limit_find_results_truncates_with_cancel_status(tmp_path, studies) -> None:
    with OrthancServer(tmp_path, limit_find_results=5) as orthanc:
        orthanc.store(s for s in studies if s["study_date"] == DAY)
        uids, final = c_find_study_uids(orthanc.host, orthanc.port, orthanc.aet, DAY)

    assert len(expected(studies)) > 5
    assert len(uids) == 5
    assert set(uids) <= expected(studies)
    # Orthanc 1.10 ends a truncated answer with 0xFE00 (Cancel), not Success.
    assert final == 0xFE00


def test_dcmqrscp_refuses_more_studies_than_its_quota(tmp_path) -> None:
    many = generate_studies(date(2024, 1, 1), days=1, per_day=501)
    with DcmqrscpServer(tmp_path, aets=("A1", "A2")) as dcmqrscp:
        with pytest.raises(ServerError, match="quota"):
            dcmqrscp.store(many, aet="A2")
        with pytest.raises(ValueError, match="unknown AE title"):
            dcmqrscp.store(many[:1], aet="NOPE")
        assert dcmqrscp.store(many[:1], aet="A2") == many[0]["instances"]
        uids, final = c_find_study_uids(dcmqrscp.host, dcmqrscp.port, "A2", "20240101")
        assert (set(uids), final) == ({many[0]["study_uid"]}, 0x0000)
        uids, _ = c_find_study_uids(dcmqrscp.host, dcmqrscp.port, "A1", "20240101")
        assert uids == []
