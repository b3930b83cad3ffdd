"""Ground truth for the integration tests: the CSV rows the generated studies must give."""

from __future__ import annotations

import csv
from pathlib import Path

from discovery.report import HEADER


def lacks_description(study: dict) -> bool:
    return not (study.get("description") or "").strip()


def expected_rows(studies: list[dict], all_studies: bool = False) -> list[list[str]]:
    """One row per StudyInstanceUID, sorted like the CSV (date, time, UID)."""
    rows = {}
    for s in studies:
        if not all_studies and not lacks_description(s):
            continue
        rows[s["study_uid"]] = [
            s["accession"], s["study_date"], s["study_time"] or "", s["patient_id"],
            s["study_uid"], (s.get("description") or "").strip(),
        ]
    return sorted(rows.values(), key=lambda r: (r[1], r[2], r[4]))


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER
    return rows[1:]
