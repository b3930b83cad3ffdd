"""The simulated PACS (demo.simscp), run as a subprocess and queried with a pynetdicom SCU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from demo.simscp import date_bounds, parse_tm, time_bounds

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)

STUDIES = [
    {
        "study_uid": "1.2.9.1",
        "study_date": "20240102",
        "study_time": "100000",
        "patient_id": "P1",
        "accession": "A1",
        "description": "CT Thorax",
    },
    {
        "study_uid": "1.2.9.2",
        "study_date": "20240102",
        "study_time": "105959.5",
        "patient_id": "P2",
        "accession": "A2",
        "description": "Müller Knie",
        "charset": "ISO_IR 100",
    },
    {
        "study_uid": "1.2.9.3",
        "study_date": "20240102",
        "study_time": "110000",
        "patient_id": "P3",
        "accession": "A3",
        "description": None,
    },
    {
        "study_uid": "1.2.9.4",
        "study_date": "20240102",
        "study_time": "",
        "patient_id": "P4",
        "accession": "A4",
        "description": "no time",
    },
    {
        "study_uid": "1.2.9.5",
        "study_date": "20240102",
        "study_time": "10",
        "patient_id": "P5",
        "accession": "A5",
        "description": "山田",
        "charset": "ISO 2022 IR 6\\ISO 2022 IR 87",
    },
    {
        "study_uid": "1.2.9.6",
        "study_date": "20240103",
        "study_time": "1030",
        "patient_id": "P6",
        "accession": "A6",
        "description": "next day",
    },
    {
        "study_uid": "1.2.9.7",
        "study_date": "20240104",
        "study_time": None,
        "patient_id": "P7",
        "accession": "A7",
        "description": "absent time",
    },
]
GENERATED = {"generate": {"start": "20240101", "days": 1, "per_hour": 5, "seed": 1}}


@pytest.fixture(autouse=True)
def raw_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep response values as received: pynetdicom would otherwise decode them to log them."""
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", False)


class Scp:
    def __init__(self, proc: subprocess.Popen[bytes], stats_path: Path, port: int) -> None:
        self.proc, self.stats_path, self.port = proc, stats_path, port

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not predicate(stats := self.stats()):
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
        return stats


@pytest.fixture
def simscp(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Scp]]:
    """Start ``python -m demo.simscp --port 0``; stop it with SIGTERM and expect exit 0."""
    started: list[Scp] = []

    def start(config: dict[str, Any]) -> Scp:
        n = len(started)
        cfg, stats, log = (tmp_path / f"{name}{n}" for name in ("cfg", "stats", "log"))
        cfg.write_text(json.dumps(config))
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "demo.simscp",
                    "--port",
                    "0",
                    "--config",
                    str(cfg),
                    "--stats",
                    str(stats),
                ],
                cwd=ROOT,
                stderr=err,
            )
        deadline = time.monotonic() + 20
        while not stats.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "simscp did not start"
            time.sleep(0.05)
        scp = Scp(proc, stats, json.loads(stats.read_text())["port"])
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.proc.send_signal(signal.SIGTERM)
        assert scp.proc.wait(timeout=15) == 0
        assert scp.stats()["current_associations"] == 0


def associate(port: int, dimse_timeout: float = 10) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.network_timeout = 10
    ae.dimse_timeout = dimse_timeout
    return ae.associate("127.0.0.1", port, ae_title="SIMPACS")


def identifier(date: str, tm: str = "", **extra: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate, ds.StudyTime, ds.StudyInstanceUID = date, tm, ""
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def collect(
    assoc: Association, ds: Dataset, cancel_after: int | None = None
) -> tuple[list[Dataset], list[int], int | None]:
    """(pending identifiers, pending statuses, final status or None on timeout/abort)."""
    rows, statuses = [], []
    for status, ident in assoc.send_c_find(ds, FIND):
        if "Status" not in status:
            return rows, statuses, None
        if status.Status in (0xFF00, 0xFF01):
            rows.append(ident)
            statuses.append(status.Status)
            if len(rows) == cancel_after:
                assoc.send_c_cancel(1, query_model=FIND)
        else:
            return rows, statuses, status.Status
    return rows, statuses, None


def find(port: int, ds: Dataset) -> tuple[list[Dataset], int | None]:
    assoc = associate(port)
    assert assoc.is_established
    try:
        rows, _, final = collect(assoc, ds)
    finally:
        assoc.release()
    return rows, final


def uids(rows: list[Dataset]) -> set[str]:
    return {r.StudyInstanceUID for r in rows}


def test_pure_range_parsing() -> None:
    assert parse_tm("105959", end=True) == parse_tm("105959.999999")
    assert parse_tm("10", end=True) == parse_tm("105959.999999")
    assert parse_tm("10:30:00") == parse_tm("1030")
    assert time_bounds("") is None and date_bounds("*") is None
    assert date_bounds("-20240102") == ("00000000", "20240102")
    with pytest.raises(ValueError):
        parse_tm("2500")


def test_matches_date_and_time_range_numerically(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES})
    rows, final = find(scp.port, identifier("20240102", "100000-105959"))
    assert final == 0x0000
    assert uids(rows) == {"1.2.9.1", "1.2.9.2", "1.2.9.5"}  # "10" and 10:59:59.5 included

    rows, _ = find(scp.port, identifier("20240102", ""))
    assert uids(rows) == {f"1.2.9.{n}" for n in range(1, 6)}  # empty StudyTime only here

    rows, _ = find(scp.port, identifier("20240102-20240104", "-103000"))
    assert uids(rows) == {"1.2.9.1", "1.2.9.5", "1.2.9.6"}

    rows, _ = find(scp.port, identifier("20240104", "000000-235959"))
    assert rows == []
    assert scp.stats()["study_time_queries"] == ["100000-105959", "", "-103000", "000000-235959"]


def test_returns_requested_keys_in_the_study_charset(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES})
    rows, _ = find(scp.port, identifier("20240102", "", StudyDescription="", PatientID=""))
    raw = {r.get_item("StudyInstanceUID").value: r.get_item("StudyDescription") for r in rows}
    assert raw[b"1.2.9.2\x00"].value == "Müller Knie ".encode("latin-1")
    assert raw[b"1.2.9.5\x00"].value == b"\x1b$B;3ED\x1b(B"  # JIS X 0208 with escapes
    by_uid = {r.StudyInstanceUID: r for r in rows}
    assert set(rows[0].keys()) <= {
        0x00080005,
        0x00080020,
        0x00080030,
        0x00080052,
        0x00081030,
        0x00100020,
        0x0020000D,
    }
    latin = by_uid["1.2.9.2"]
    assert latin.SpecificCharacterSet == "ISO_IR 100"
    assert latin.StudyDescription == "Müller Knie"
    assert "StudyDescription" not in by_uid["1.2.9.3"]  # description null = absent
    assert by_uid["1.2.9.4"].StudyTime == ""
    assert by_uid["1.2.9.5"].StudyDescription == "山田"
    assert "AccessionNumber" not in by_uid["1.2.9.1"]


@pytest.mark.parametrize(
    ("cap", "count", "final"),
    [
        ({"mode": "truncate_fe00", "limit": 3}, 3, 0xFE00),
        ({"mode": "silent", "limit": 3}, 3, 0x0000),
        ({"mode": "refuse", "limit": 3, "status": 0xA700}, 0, 0xA700),
        ({"mode": "refuse", "limit": 3, "status": 0xC001}, 0, 0xC001),
        ({"mode": "truncate_fe00", "limit": 5}, 5, 0x0000),  # not more than the limit
    ],
)
def test_cap_modes(simscp: Callable[..., Scp], cap: dict[str, Any], count: int, final: int) -> None:
    scp = simscp({**GENERATED, "cap": cap})
    rows, status = find(scp.port, identifier("20240101", "100000-105959"))
    assert (len(rows), status) == (count, final)
    assert all(r.StudyTime.startswith("10") for r in rows)


def test_max_associations_rejects_beyond_the_limit(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"max_associations": 2})
    results: list[Association] = []
    barrier = threading.Barrier(4)

    def client() -> None:
        assoc = associate(scp.port)
        results.append(assoc)
        barrier.wait(timeout=20)  # hold every accepted association until all have tried
        if assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(a.is_established or a.is_released for a in results) == 2
    rejected = [a for a in results if a.is_rejected]
    assert len(rejected) == 2
    rsp = rejected[0].acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (2, 3, 2)
    stats = scp.wait_stats(lambda s: s["current_associations"] == 0)
    assert stats["max_concurrent_associations"] == 2
    assert (stats["total_associations"], stats["rejected_associations"]) == (2, 2)


@pytest.mark.parametrize("reject", [(1, 1, 7), (2, 3, 2), (1, 2, 2)])
def test_reject_returns_the_configured_reject(
    simscp: Callable[..., Scp], reject: tuple[int, int, int]
) -> None:
    result, source, reason = reject
    scp = simscp({"reject": {"result": result, "source": source, "reason": reason}})
    assoc = associate(scp.port)
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == reject


def test_malformed_rows(simscp: Callable[..., Scp]) -> None:
    malformed = ["missing_uid", "wrong_date", "bad_charset", "duplicate", "pending_ff01"]
    scp = simscp({"studies": STUDIES, "malformed": malformed})
    assoc = associate(scp.port)
    ds = identifier("20240102", "100000-105959", PatientID="")
    rows, statuses, final = collect(assoc, ds)
    assoc.release()
    assert final == 0x0000 and set(statuses) == {0xFF01}
    assert len(rows) == 3 + 1 + 2  # matches, the duplicate, missing_uid and wrong_date rows
    assert sum("StudyInstanceUID" not in r for r in rows) == 1
    assert {r.StudyDate for r in rows} == {"20240102", "20240103"}
    with_uid = [r.get_item("StudyInstanceUID").value for r in rows if "StudyInstanceUID" in r]
    assert len(with_uid) == len(set(with_uid)) + 1  # exactly one UID twice
    bad = rows[0]
    assert bad.get_item("SpecificCharacterSet").value.rstrip() == b"ISO_IR 192"
    assert b"\xff" in bad.get_item("PatientID").value


def test_delay_before_answer(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES, "delay_ms": 300})
    started = time.monotonic()
    rows, final = find(scp.port, identifier("20240103"))
    assert time.monotonic() - started >= 0.3  # a lower bound only
    assert (uids(rows), final) == ({"1.2.9.6"}, 0x0000)


def test_cancel_stops_pendings(simscp: Callable[..., Scp]) -> None:
    scp = simscp({**GENERATED, "row_delay_ms": 50})
    assoc = associate(scp.port)
    rows, _, final = collect(assoc, identifier("20240101"), cancel_after=1)
    assoc.release()
    assert final == 0xFE00 and 1 <= len(rows) < 120
    assert scp.stats()["cancelled_queries"] == 1


def test_abort_after_rows_on_every_second_association(simscp: Callable[..., Scp]) -> None:
    scp = simscp({**GENERATED, "abort_after_rows": 2, "abort_every": 2})
    rows, final = find(scp.port, identifier("20240101", "10-11"))
    assert (len(rows), final) == (10, 0x0000)
    assoc = associate(scp.port)
    rows, _, final = collect(assoc, identifier("20240101", "10-11"))
    assert (len(rows), final) == (2, None)
    assoc.join(timeout=5)  # the requestor's thread ends once it has handled the A-ABORT
    assert assoc.is_aborted
    assert scp.wait_stats(lambda s: s["current_associations"] == 0)["aborted_associations"] == 1


def test_hang_until_client_timeout(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES, "hang": True})
    assoc = associate(scp.port, dimse_timeout=0.5)
    rows, _, final = collect(assoc, identifier("20240102"))
    assert (rows, final) == ([], None)
    assert assoc.is_aborted
    scp.wait_stats(lambda s: s["current_associations"] == 0)


def test_sigterm_aborts_a_hung_query_and_exits(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES, "hang": True})
    assoc = associate(scp.port, dimse_timeout=30)
    outcome: list[Any] = []
    client = threading.Thread(target=lambda: outcome.append(collect(assoc, identifier(""))))
    client.start()
    scp.wait_stats(lambda s: s["total_queries"] == 1)
    scp.proc.send_signal(signal.SIGTERM)
    assert scp.proc.wait(timeout=10) == 0
    client.join(timeout=10)
    assert outcome == [([], [], None)]
    assert scp.stats()["current_associations"] == 0


def test_no_find_context(simscp: Callable[..., Scp]) -> None:
    scp = simscp({"studies": STUDIES, "no_find": True})
    assoc = associate(scp.port)  # accepted, with no context: pynetdicom then aborts it
    assert not assoc.is_established and assoc.accepted_contexts == []
    assert scp.wait_stats(lambda s: s["current_associations"] == 0)["total_associations"] == 1


def test_prepared_and_reused_answers_are_the_answers(simscp: Callable[..., Scp]) -> None:
    """Answers kept for reuse (prepare_keys, or built at a first query) are byte for byte the
    ones built for each query, also for a query with other keys and for a repeated one."""
    from pynetdicom.dsutils import encode

    keys = ["QueryRetrieveLevel", "StudyDate", "StudyTime", "StudyInstanceUID",
            "StudyDescription", "PatientID"]
    fresh = simscp({"studies": STUDIES, "malformed": ["pending_ff01"]})  # builds every answer
    kept = simscp({"studies": STUDIES, "prepare_keys": keys})
    for ds in (identifier("20240102", "", StudyDescription="", PatientID=""),
               identifier("20240102", "", AccessionNumber=""),
               identifier("20240102", "", StudyDescription="", PatientID="")):
        want, want_final = find(fresh.port, ds)
        got, final = find(kept.port, ds)
        assert want_final == final == 0x0000 and len(got) == 5
        assert [encode(r, True, True) for r in got] == [encode(r, True, True) for r in want]
