"""The seed's way, for benchmark A: one hourly window after another, one association each,
sequentially, with plain pynetdicom; the same six CSV columns.

Deliberately without anything pacs-discovery adds (no TCP_NODELAY, no association reuse, no
parallelism, no retries, no day sweep, no split of truncated windows): this is what we are
compared against. Only the StudyTime range is the same as pacs-discovery's windows
(``HH-HH5959.999999``) so that both find the same studies and the comparison is about speed.

``python -m bench.baseline --host H --port P --aet AET --start 2024-01-01 --days 7 --output F``
"""

from __future__ import annotations

import argparse
import csv
from datetime import date, timedelta
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as FIND,
)

COLUMNS = ["Accession Number", "Study Date", "Study Time", "Patient ID", "Study UID",
           "Study Description"]
KEYS = ["AccessionNumber", "StudyDate", "StudyTime", "PatientID", "StudyInstanceUID",
        "StudyDescription"]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def query_hour(ae: AE, host: str, port: int, aet: str, day: date, hour: int) -> list[list[str]]:
    """One association, one C-FIND for one hour of one day, release."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate = day.strftime("%Y%m%d")
    ds.StudyTime = f"{hour:02d}-{hour:02d}5959.999999"
    for keyword in KEYS:
        if keyword not in ("StudyDate", "StudyTime"):
            setattr(ds, keyword, "")
    rows: list[list[str]] = []
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"association to {aet}@{host}:{port} failed")
    try:
        for status, ident in assoc.send_c_find(ds, FIND):
            code = getattr(status, "Status", None)
            if code in (0xFF00, 0xFF01) and ident is not None:
                rows.append([_text(ident, k) for k in KEYS])
            elif code != 0x0000:
                raise RuntimeError(f"C-FIND {ds.StudyDate} {ds.StudyTime}: status {code}")
    finally:
        assoc.release()
    return rows


def run(host: str, port: int, aet: str, start: date, days: int, output: Path) -> int:
    """Query every hour of ``days`` days from ``start``; write the CSV; return its row count."""
    ae = AE(ae_title="SEED")
    ae.add_requested_context(FIND)
    rows: list[list[str]] = []
    for d in range(days):
        for hour in range(24):
            rows += query_hour(ae, host, port, aet, start + timedelta(days=d), hour)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        out.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", required=True)
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    count = run(args.host, args.port, args.aet, args.start, args.days, args.output)
    print(f"{count} studies -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
