"""run_window: an answer pynetdicom could not decode makes the window failed, not complete."""

from __future__ import annotations

from datetime import date

from pydicom import Dataset

from discovery.dimse import FindResult
from discovery.query import run_window
from discovery.settings import load_settings
from discovery.windows import Window


class _Conn:
    def __init__(self, result: FindResult) -> None:
        self.result = result

    def find(self, identifier: Dataset, max_rows: int = 0) -> FindResult:
        return self.result


def _row(uid: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = uid, "20240101", "100000"
    return ds


def test_undecodable_answer_fails_the_window() -> None:
    window = Window(date(2024, 1, 1), 36000, 39600)
    result = FindResult(rows=[_row("1.2.3")], undecodable=1, status=0x0000)
    outcome = run_window(_Conn(result), window, load_settings())  # type: ignore[arg-type]
    assert outcome["state"] == "failed"
    assert outcome["anomalies"]["undecodable"] == 1
    assert [s["uid"] for s in outcome["studies"]] == ["1.2.3"]  # what was read is kept


def test_clean_answers_complete_the_window() -> None:
    window = Window(date(2024, 1, 1), 36000, 39600)
    outcome = run_window(_Conn(FindResult(rows=[_row("1.2.3")], status=0x0000)), window,
                         load_settings())  # type: ignore[arg-type]
    assert outcome["state"] == "complete" and outcome["error"] is None
