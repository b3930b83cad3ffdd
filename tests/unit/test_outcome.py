"""discovery.outcome: how a C-FIND's final status decides a window's fate (PS3.4 C.4.1.1.4)."""

from __future__ import annotations

import pytest

from discovery.outcome import COMPLETE, FAILED, REFUSED, TRUNCATED, classify, status_text


@pytest.mark.parametrize(("status", "rows", "cap", "cancelled", "expected"), [
    (0x0000, 0, 0, False, COMPLETE),
    (0x0000, 5000, 0, False, COMPLETE),  # no declared cap: Success is the end
    (0x0000, 99, 100, False, COMPLETE),
    (0x0000, 100, 100, False, TRUNCATED),  # as many rows as the silent cap
    (0x0000, 101, 100, False, TRUNCATED),
    (0x0000, 3, 0, True, TRUNCATED),  # our own C-CANCEL, even if the PACS then says Success
    (0xFE00, 10, 0, False, TRUNCATED),  # Orthanc's LimitFindResults: Cancel we did not ask for
    (0xFE00, 10, 0, True, TRUNCATED),
    (0xFE00, 0, 100, False, TRUNCATED),
    (0xA700, 0, 0, False, REFUSED),
    (0xA700, 12, 100, True, REFUSED),
    (0xC000, 0, 0, False, REFUSED),
    (0xC001, 0, 0, False, REFUSED),
    (0xCFFF, 0, 0, False, REFUSED),
    (0xA900, 0, 0, False, FAILED),  # identifier does not match SOP class
    (0xA701, 0, 0, False, FAILED),
    (0xBFFF, 0, 0, False, FAILED),
    (0xD000, 0, 0, False, FAILED),
    (0x0122, 0, 0, False, FAILED),  # SOP class not supported
    (None, 0, 0, False, FAILED),  # no final response: timeout or abort
    (None, 40, 100, True, FAILED),
])
def test_classify(status: int | None, rows: int, cap: int, cancelled: bool,
                  expected: str) -> None:
    assert classify(status, rows, cap, cancelled) == expected


def test_status_text() -> None:
    assert [status_text(s) for s in (None, 0, 0xFE00, 0xC00A)] == [
        "none", "0x0000", "0xFE00", "0xC00A"]
