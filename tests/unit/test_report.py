"""discovery.report: the CSV bytes, the spreadsheet twin, atomic writes, paths and verdicts."""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path

import pytest

from discovery import report

HEADER_LINE = b"Accession Number,Study Date,Study Time,Patient ID,Study UID,Study Description\r\n"
ROWS = [
    ("A1", "20240101", "103000", "P1", "1.2.3", ""),
    ("A,2", "20240101", "103001", 'P"2', "1.2.4", "line one\nline two"),
    ("-12345", "20240101", "", "=HYPERLINK(\"x\")", "1.2.5", "+1\r\n@SUM(A1)"),
    ("\tTAB", "20240102", "0800", "\rCR", "1.2.6", "Schädel 头部"),
]


def test_csv_bytes_rfc4180(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    assert report.write_csv(path, iter(ROWS)) == 4
    data = path.read_bytes()
    assert data == HEADER_LINE + (
        b"A1,20240101,103000,P1,1.2.3,\r\n"
        b'"A,2",20240101,103001,"P""2",1.2.4,"line one\nline two"\r\n'
        b'-12345,20240101,,"=HYPERLINK(""x"")",1.2.5,"+1\r\n@SUM(A1)"\r\n'
        b'\tTAB,20240102,0800,"\rCR",1.2.6,' + "Schädel 头部".encode() + b"\r\n"
    )
    with path.open(newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [report.HEADER] + [list(r) for r in ROWS]


def test_header_exact() -> None:
    assert report.HEADER == ["Accession Number", "Study Date", "Study Time", "Patient ID",
                             "Study UID", "Study Description"]


def test_empty_csv_has_header(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "out.csv"
    assert report.write_csv(path, iter([])) == 0
    assert path.read_bytes() == HEADER_LINE


def test_excel_twin(tmp_path: Path) -> None:
    path = tmp_path / "out.excel.csv"
    assert report.write_excel_csv(path, iter(ROWS)) == 4
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf" + HEADER_LINE)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[1:] == [
        ["A1", "20240101", "103000", "P1", "1.2.3", ""],
        ["A,2", "20240101", "103001", 'P"2', "1.2.4", "line one\nline two"],
        ["'-12345", "20240101", "", "'=HYPERLINK(\"x\")", "1.2.5", "'+1\r\n@SUM(A1)"],
        ["'\tTAB", "20240102", "0800", "'\rCR", "1.2.6", "Schädel 头部"],
    ]


@pytest.mark.parametrize(("value", "expected"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@x", "'@x"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("", ""), ("CT = x", "CT = x"), ("'=x", "'=x"), ("1-2", "1-2"),
])
def test_excel_cell(value: str, expected: str) -> None:
    assert report.excel_cell(value) == expected


def test_mode_and_atomic(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "out.csv"
        report.write_csv(path, iter(ROWS))
        report.write_json(tmp_path / "out.coverage.json", {"b": 1, "a": [1]})
    finally:
        os.umask(old)
    for p in (path, tmp_path / "out.coverage.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.coverage.json", "out.csv"]
    assert (tmp_path / "out.coverage.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    report.write_csv(path, iter(ROWS[:1]))
    before = path.read_bytes()

    def rows():  # type: ignore[no-untyped-def]
        yield ROWS[1]
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError):
        report.write_csv(path, rows())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_output_paths() -> None:
    out = Path("/data/dicom_query_results.csv")
    assert report.output_paths(out, report.COMPLETE) == {
        "csv": out,
        "excel": Path("/data/dicom_query_results.excel.csv"),
        "report": Path("/data/dicom_query_results.coverage.json"),
    }
    expected_incomplete = {
        "csv": Path("/data/dicom_query_results.incomplete.csv"),
        "excel": Path("/data/dicom_query_results.incomplete.excel.csv"),
        "report": Path("/data/dicom_query_results.coverage.json"),
    }
    assert report.output_paths(out, report.INCOMPLETE) == expected_incomplete
    assert report.output_paths(out, report.NO_DESCRIPTION) == expected_incomplete
    bare = report.output_paths(Path("/data/results"), report.INCOMPLETE)
    assert bare == {"csv": Path("/data/results.incomplete.csv"),
                    "excel": Path("/data/results.incomplete.excel.csv"),
                    "report": Path("/data/results.coverage.json")}
    dotted = report.output_paths(Path("/d/q.2024.csv"), report.COMPLETE)
    assert (dotted["excel"], dotted["report"]) == (Path("/d/q.2024.excel.csv"),
                                                   Path("/d/q.2024.coverage.json"))


def progress(**counts: int) -> dict:
    base = {"windows_failed": 0, "windows_incomplete": 0, "windows_open": 0, "studies": 3,
            "description_returned": 2}
    return {**base, **counts}


def test_verdict_complete() -> None:
    assert report.verdict(progress(), day_sweep=True) == (report.COMPLETE, [])
    assert report.verdict(progress(studies=0, description_returned=0), True) == (
        report.COMPLETE, [])
    verdict, notes = report.verdict(progress(), day_sweep=False)
    assert verdict == report.COMPLETE and notes == [
        "day sweep off (DISCOVERY_DAY_SWEEP=false): studies without a readable StudyTime "
        "were not searched for"]


def test_verdict_incomplete_reasons() -> None:
    verdict, reasons = report.verdict(
        progress(windows_failed=2, windows_incomplete=1, windows_open=4), True)
    assert verdict == report.INCOMPLETE
    assert reasons == [
        "2 window(s) failed after every attempt (the PACS did not answer); once it does: "
        "python -m producer --retry-failed RUN_ID --wait",
        "1 window(s) still truncated or refused at one second: their exact ranges are "
        "listed as uncovered in the coverage report",
        "4 window(s) never reported",
    ]


def test_verdict_names_days_not_reconciled() -> None:
    """A truncated or failed day sweep is its own reason, with what to do about it."""
    verdict, reasons = report.verdict(
        progress(windows_failed=1, windows_incomplete=2, sweeps_failed=1,
                 sweeps_incomplete=1), True)
    assert verdict == report.INCOMPLETE
    # a failed sweep is the PACS not answering: retry it; a truncated one needs a bigger limit
    assert reasons[0].startswith("1 day sweep(s) failed after every attempt")
    assert "--retry-failed" in reasons[0]
    assert reasons[1].startswith("1 window(s) still truncated")
    assert reasons[2].startswith("1 day(s) not reconciled")
    assert "DISCOVERY_DAY_SWEEP=false" in reasons[2]
    assert report.verdict(progress(windows_open=1, description_returned=0), True)[0] == (
        report.INCOMPLETE)


def test_verdict_no_description() -> None:
    verdict, reasons = report.verdict(progress(description_returned=0), True)
    assert verdict == report.NO_DESCRIPTION
    assert len(reasons) == 1 and "--all-studies" in reasons[0]


def test_check_writable_makes_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "x.csv"
    report.check_writable(out)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []


@pytest.mark.parametrize("make", ["output_is_a_folder", "folder_is_a_file"])
def test_check_writable_says_why_not(tmp_path: Path, make: str) -> None:
    out = tmp_path / "f" / "x.csv"
    if make == "output_is_a_folder":
        out.mkdir(parents=True)
    else:
        out.parent.write_text("a file")
    with pytest.raises(OSError):
        report.check_writable(out)
