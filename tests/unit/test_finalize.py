"""finish_run: what it writes, and what it leaves alone."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

from discovery import report
from discovery.finalize import finish_run
from discovery.ledger import Ledger
from discovery.windows import Window


def _run(ledger: Ledger, run_id: str, day: date, output: Path, state: str,
         excel_safe: bool = False) -> None:
    window = Window(day, 0, 3600)
    params = {"start": f"{day}T00:00:00", "end": f"{day}T01:00:00", "window_minutes": 60,
              "day_sweep": False, "all_studies": True, "output": str(output),
              "excel_safe": excel_safe}
    ledger.create_run(run_id, params, [window])
    study = {"uid": f"1.2.{run_id}", "date": day.strftime("%Y%m%d"), "time": "001000",
             "accession": "A", "patient_id": "P", "description": "", "desc": "blank"}
    ledger.record(run_id, window.key, {"state": state, "status": 0 if state == "complete"
                                       else None, "rows": 1, "studies": [study],
                                       "anomalies": {}}, final=True)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_a_complete_run_replaces_another_runs_incomplete_files(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    out = tmp_path / "out" / "dicom_query_results.csv"
    _run(ledger, "B", date(2024, 2, 1), out, "failed", excel_safe=True)
    assert finish_run(ledger, "B")["verdict"] == report.INCOMPLETE
    assert _names(out.parent) == {"dicom_query_results.incomplete.csv",
                                  "dicom_query_results.incomplete.excel.csv",
                                  "dicom_query_results.coverage.json"}
    _run(ledger, "A", date(2024, 2, 2), out, "complete")
    assert finish_run(ledger, "A")["verdict"] == report.COMPLETE
    assert _names(out.parent) == {"dicom_query_results.csv", "dicom_query_results.coverage.json"}
    assert "1.2.A" in out.read_text()


def test_an_incomplete_run_leaves_no_complete_csv_of_another_run(tmp_path: Path) -> None:
    """Found by a new user: run A complete, then run B (same --output) incomplete left A's CSV
    under the complete name beside B's report."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    out = tmp_path / "out" / "dicom_query_results.csv"
    _run(ledger, "A", date(2024, 2, 2), out, "complete", excel_safe=True)
    assert finish_run(ledger, "A")["verdict"] == report.COMPLETE
    _run(ledger, "B", date(2024, 2, 1), out, "failed")
    assert finish_run(ledger, "B")["verdict"] == report.INCOMPLETE
    assert _names(out.parent) == {"dicom_query_results.incomplete.csv",
                                  "dicom_query_results.coverage.json"}
    assert '"run_id": "B"' in (out.parent / "dicom_query_results.coverage.json").read_text()


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    old = tmp_path / ".x.csv.abc123.tmp"
    fresh = tmp_path / ".x.csv.def456.tmp"
    for f in (old, fresh):
        f.write_text("patient data")
    past = time.time() - report.STALE_TMP_SECONDS - 10
    os.utime(old, (past, past))
    report.write_csv(out, [("A", "20240101", "000000", "P", "1.2", "")])
    assert not old.exists() and fresh.exists()
